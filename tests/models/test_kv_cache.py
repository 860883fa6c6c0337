"""The package's own cache calls use the installed transformers' spelling: no deprecation notice, cached path taken."""

from __future__ import annotations

import inspect
import logging
import warnings

import pytest
import torch

import betaedit_plugin.compute_z as values
from betaedit_plugin.hparams import BetaEditHyperParams
from betaedit_plugin.models.kv_cache import cache_kwargs, new_cache, returned_cache
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.models.templates import generate_context_templates
from betaedit_plugin.compute_z import build_value_problem, optimise_value
from betaedit_plugin.requests import EditRequest

ARCHS = ("gpt2", "gptj", "llama", "qwen2", "qwen3")
CTX = [["{}"], ["The cat. {}", "Because I said so. {}"]]
REQ = EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    """Messages that transformers logs (it does not propagate to the root logger, so caplog misses them)."""
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def test_cache_argument_is_the_one_forward_declares(tiny):
    model, _ = tiny("llama")
    kwargs = cache_kwargs(model, None)
    (name,) = set(kwargs) - {"use_cache"}
    assert name in inspect.signature(type(model).forward).parameters
    assert kwargs["use_cache"] is True
    with pytest.raises(TypeError, match="no key/value cache argument"):
        cache_kwargs(torch.nn.Linear(2, 2), None)


def test_returned_cache_is_the_cache_passed_in(tiny):
    model, tok = tiny("qwen3")
    cache = new_cache(model)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tok("a b c")["input_ids"]]), **cache_kwargs(model, cache))
    assert returned_cache(out) is cache and cache.get_seq_length() == out.logits.shape[1]


@pytest.mark.parametrize("arch", ARCHS)
def test_no_deprecation_notice_and_cached_prefix_taken(tiny, arch, monkeypatch, transformers_log):
    """compute_z's frozen prefix and the template sampler run without a deprecated cache argument,
    and the column-cut (cached) prefix is the one used, not the whole-sequence fallback."""
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    hp = BetaEditHyperParams(layers=[1, 2], v_num_grad_steps=3)

    def fallback(*args, **kwargs):
        raise AssertionError("the whole-sequence fallback was taken")

    monkeypatch.setattr(values, "run_frozen_prefix", fallback)
    pb = build_value_problem(tok, REQ, hp.fact_token, CTX, torch.device("cpu"))
    rows, cols = torch.cat([pb.target_rows, pb.kl_rows]), torch.cat([pb.target_cols, pb.kl_cols])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        prefix = values.prepare_frozen_prefix(model, layout, pb, 1, 2, rows, cols, check=True)
        optimise_value(model, tok, REQ, hp, layout, 1, CTX)
        generate_context_templates(model, tok, [[3, 2]], seed=0)
    assert prefix.start > 0 and prefix.cache_saved
    deprecated = [m for m in transformers_log if "deprecated" in m.lower()]
    assert deprecated == []


def test_keep_rows_cuts_per_row_arguments_and_leaves_per_column_ones():
    """transformers 4.x passes blocks ``cache_position`` (T,): per column, so dropping rows leaves it as it
    is, also when T equals the number of rows B (the case a cut by first dimension would get wrong)."""
    from betaedit_plugin.compute_z import FrozenPrefix

    B = T = 3
    positions = torch.arange(10, 10 + T)
    per_row = torch.arange(B * T).view(B, T)
    keys = torch.arange(B * 2.0).view(B, 1, 2, 1)
    restored = []
    prefix = FrozenPrefix(hidden=torch.zeros(B, T, 4), start=2,
                          calls=[(None, (positions,), {"position_ids": per_row, "mask": torch.ones(1, 1, T, T)}, False)],
                          restore=lambda: restored.append(True), cache_saved=[[None, keys, keys.clone()]])
    assert prefix.keep_rows(torch.tensor([0, 2]))
    (_, args, kwargs, _), = prefix.calls
    assert torch.equal(args[0], positions)
    assert torch.equal(kwargs["position_ids"], per_row[[0, 2]]) and kwargs["mask"].shape == (1, 1, T, T)
    assert prefix.hidden.shape == (2, T, 4) and torch.equal(prefix.cache_saved[0][1], keys[[0, 2]])
    assert restored == [True]
