"""Import stubs for torchvision and timm, so that ``import easyeditor`` works on a CPU-only machine.

``import easyeditor`` imports every method, trainer and multimodal processor it has, and the
multimodal code imports torchvision and timm at module level. Neither can be installed usefully
here: the only torchvision wheel for torch 2.13.0 is a CUDA build whose import fails without a
GPU, and timm needs torchvision. The text editors this project tests never call them.

`install()` puts small placeholder modules for exactly the submodules EasyEdit names into
``sys.modules``. Every attribute of a stub is a placeholder class: importing it works,
subclassing it works, and using it (calling it, reading its attributes) raises an ImportError
that says what happened. Before installing, `install()` asks transformers whether torchvision and
timm are available, while they are still absent, so that its cached answer stays False;
transformers decides by ``importlib.util.find_spec`` and would otherwise take the stubs for the
real packages and route image processing through them.

In ``.venv-easyedit`` a ``.pth`` file (written by ``install_into_env.py``) calls
`install_on_easyeditor_import`, so any script there gets the stubs when it imports easyeditor.
By hand (tests/easyedit/conftest.py does this before anything imports easyeditor)::

    from stubs import install
    install()
    import easyeditor
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

STUBBED_MODULES = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.datasets",
    "torchvision.datasets.utils",
    "timm",
    "timm.layers",
    "timm.models",
    "timm.models.hub",
)
"""The modules EasyEdit 14cea82 imports from torchvision and timm (multimodal code only)."""

STUB_MARK = "__betaedit_test_stub__"

_MESSAGE = (
    "{name} is an import stub of the EasyEdit test environment (tests/easyedit/easyedit_stubs.py): "
    "torchvision/timm are not installed because their only wheels for torch 2.13.0 are CUDA builds. "
    "Only EasyEdit's multimodal code uses them; install torchvision/timm to use that code."
)


class _PlaceholderMeta(type):
    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(_MESSAGE.format(name=f"{cls.__module__}.{cls.__name__}.{attr}"))


def _placeholder(module: str, attr: str) -> type:
    def __init__(self, *args, **kwargs):
        raise ImportError(_MESSAGE.format(name=f"{module}.{attr}"))

    return _PlaceholderMeta(attr, (), {"__module__": module, "__init__": __init__, STUB_MARK: True})


class _StubModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        value = _placeholder(self.__name__, attr)
        setattr(self, attr, value)
        return value


def _transformers_reports_absent() -> list:
    """Ask transformers (its answers are cached) while the real packages are absent; return what it says is present."""
    try:
        from transformers.utils import import_utils
    except ImportError:
        return []
    present = []
    for check in ("is_torchvision_available", "is_timm_available"):
        fn = getattr(import_utils, check, None)
        if fn is not None and fn():
            present.append(check)
    return present


def install() -> list:
    """Install the stubs (idempotent); returns the names installed by this call.

    Raises:
        RuntimeError: transformers reports torchvision or timm as available before the stubs are
            installed (a real install would be shadowed), or a real module is already imported.
    """
    present = _transformers_reports_absent()
    if present:
        raise RuntimeError(
            f"transformers reports {present} True: a real torchvision/timm is installed, so the stubs are "
            "not needed; remove easyedit-cpu-stubs.pth from the environment or uninstall them"
        )
    installed = []
    for name in STUBBED_MODULES:
        existing = sys.modules.get(name)
        if existing is not None:
            if not getattr(existing, STUB_MARK, False):
                raise RuntimeError(f"{name} is already imported from {getattr(existing, '__file__', '?')}; not stubbing it")
            continue
        module = _StubModule(name, _MESSAGE.format(name=name))
        setattr(module, STUB_MARK, True)
        # a spec and a package path, so that `import a.b.c` and importlib treat it as a loaded package
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
        module.__path__ = []
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
        installed.append(name)
    return installed


class _InstallBeforeEasyEdit(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: at the first ``import easyeditor`` (or ``find_spec``), installs the
    stubs where torchvision is not installed, then steps aside so that the real finders load easyeditor."""

    def find_spec(self, name, path=None, target=None):
        if name != "easyeditor":
            return None
        sys.meta_path.remove(self)
        if importlib.util.find_spec("torchvision") is None:
            install()
        return None


def install_on_easyeditor_import() -> None:
    """Install the stubs when easyeditor is first imported (cheap at start-up: imports nothing).

    `install_into_env.py` calls this from a ``.pth`` file in ``.venv-easyedit``, so that every
    script run there (``examples/easyedit_benchmark.py`` included) imports easyeditor without a wrapper.
    """
    if not any(isinstance(f, _InstallBeforeEasyEdit) for f in sys.meta_path):
        sys.meta_path.insert(0, _InstallBeforeEasyEdit())


def is_stub(module) -> bool:
    return bool(getattr(module, STUB_MARK, False))
