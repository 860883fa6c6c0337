"""ModelLayout and hooks on tiny random models of every supported architecture."""

from __future__ import annotations

import types

import pytest
import torch

from betaedit_plugin.models.hooks import BlockRecorder, StopForward, Trace, TraceDict, get_module, hook_count
from betaedit_plugin.models.layout import ARCHITECTURES, ModelLayout

ARCHS = ("gpt2", "gptj", "llama", "qwen2", "qwen3")


def _ids(tok, text="The mother tongue of Danielle Darrieux is"):
    return torch.tensor([tok(text)["input_ids"]])


@pytest.mark.parametrize("arch", ARCHS)
def test_delta_changes_rewrite_output_by_delta_times_key(tiny, arch):
    """Writing delta (d_v, d_k) changes the rewrite module's output by delta @ key, for Conv1D and Linear."""
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    layer = 1
    d_k, d_v = layout.key_dim(model, layer), layout.value_dim(model, layer)
    assert layout.read_weight(model, layer).shape == (d_v, d_k)
    ids = _ids(tok)
    with torch.no_grad(), Trace(model, layout.rewrite_name(layer), retain_input=True) as tr:
        model(ids)
    key, before = tr.input[0, -1].clone(), tr.output[0, -1].clone()
    assert key.shape == (d_k,) and before.shape == (d_v,)

    delta = torch.randn(d_v, d_k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w0 = layout.read_weight(model, layer)
    layout.add_delta(model, layer, delta)
    torch.testing.assert_close(layout.read_weight(model, layer), w0 + delta.float())
    with torch.no_grad():
        after = get_module(model, layout.rewrite_name(layer))(key[None])[0]
    torch.testing.assert_close(after - before, (delta.float() @ key), rtol=1e-4, atol=1e-4)

    layout.write_weight(model, layer, w0)
    torch.testing.assert_close(layout.read_weight(model, layer), w0)


def test_gpt2_uses_conv1d_and_llama_linear(tiny):
    from transformers.pytorch_utils import Conv1D

    gpt2, _ = tiny("gpt2")
    llama, _ = tiny("llama")
    assert isinstance(ModelLayout.from_model(gpt2).rewrite_module(gpt2, 0), Conv1D)
    assert type(ModelLayout.from_model(llama).rewrite_module(llama, 0)) is torch.nn.Linear
    assert ModelLayout.from_model(llama).tied_embeddings(llama)


def test_read_weight_is_a_clone(tiny):
    model, _ = tiny("gpt2")
    layout = ModelLayout.from_model(model)
    w = layout.read_weight(model, 0)
    w.add_(1.0)
    assert not torch.equal(w, layout.read_weight(model, 0))


def test_hparams_templates_override_defaults(tiny):
    model, _ = tiny("llama")
    hp = types.SimpleNamespace(rewrite_module_tmp="model.layers.{}.mlp.up_proj", layer_module_tmp=None)
    layout = ModelLayout.from_model(model, hp)
    assert layout.rewrite_module_tmp == "model.layers.{}.mlp.up_proj"
    assert layout.layer_module_tmp == ARCHITECTURES["llama"]["layer_module_tmp"]


def test_unknown_model_type_keyerror_with_suggestion(tiny):
    model, _ = tiny("llama")
    model.config.model_type = "lama"
    with pytest.raises(KeyError, match=r"Did you mean 'llama'.*Available"):
        ModelLayout.from_model(model)


def test_template_matching_no_module_lookuperror(tiny):
    model, _ = tiny("llama")
    hp = types.SimpleNamespace(rewrite_module_tmp="model.layer.{}.mlp.down_proj")
    with pytest.raises(LookupError, match=r"model\.layers\.0\.mlp\.down_proj"):
        ModelLayout.from_model(model, hp)


def test_unsupported_rewrite_module_type_typeerror(tiny):
    model, _ = tiny("llama")
    hp = types.SimpleNamespace(rewrite_module_tmp="model.layers.{}.mlp.act_fn")
    with pytest.raises(TypeError, match="act_fn|SiLU|not supported"):
        ModelLayout.from_model(model, hp)


def test_bad_layer_and_bad_delta_raise_before_writing(tiny):
    model, _ = tiny("gpt2")
    layout = ModelLayout.from_model(model)
    w0 = layout.read_weight(model, 0)
    with pytest.raises(ValueError, match=r"layer=7.*\[0, 3\]"):
        layout.add_delta(model, 7, torch.zeros_like(w0))
    with pytest.raises(ValueError, match=r"shape \(128, 32\).*\(32, 128\)"):
        layout.add_delta(model, 0, torch.zeros(128, 32))
    bad = torch.zeros_like(w0)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layout.add_delta(model, 0, bad)
    torch.testing.assert_close(layout.read_weight(model, 0), w0)


def test_get_module_lookup_error_lists_candidates(tiny):
    model, _ = tiny("llama")
    with pytest.raises(LookupError, match=r"Did you mean.*model\.layers\.0\.mlp"):
        get_module(model, "model.layers.0.mlpp")


def test_hooks_removed_after_exception(tiny):
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    names = [layout.layer_name(i) for i in range(layout.n_layers)]

    def boom(out, name):
        raise RuntimeError("boom")

    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with TraceDict(model, names, edit_output=boom):
            model(_ids(tok))
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with Trace(model, names[1], edit_output=boom):
            model(_ids(tok))
    assert hook_count(model) == 0


def test_stop_forward_after_layer(tiny):
    model, tok = tiny("gpt2")
    layout = ModelLayout.from_model(model)
    ids = _ids(tok)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    own = hook_count(model)  # transformers keeps the hooks that collect hidden states
    with torch.no_grad(), TraceDict(model, [layout.layer_name(0), layout.layer_name(1)], stop=True) as td:
        out = model(ids)
        pytest.fail("forward pass should have been stopped")  # pragma: no cover
    # what was recorded before the stop is the blocks' real output (hidden_states[i + 1] leaves block i)
    first = td[layout.layer_name(0)].output
    first = first[0] if isinstance(first, tuple) else first
    torch.testing.assert_close(first, hidden[1], rtol=0, atol=0)
    assert hook_count(model) == own
    # StopForward without stop=True propagates
    with pytest.raises(StopForward):
        def stop(out, name):
            raise StopForward(name)
        with Trace(model, layout.layer_name(0), edit_output=stop):
            model(_ids(tok))
    assert hook_count(model) == own


def test_edit_output_replaces_block_output(tiny):
    model, tok = tiny("qwen3")
    layout = ModelLayout.from_model(model)
    ids = _ids(tok)
    with torch.no_grad():
        base = model(ids).logits
        with Trace(model, layout.layer_name(3), edit_output=lambda out, n: out * 0):
            zeroed = model(ids).logits
    expected = layout.lm_head(model)(layout.ln_f(model)(torch.zeros(1, ids.shape[1], 32)))
    torch.testing.assert_close(zeroed, expected)
    assert not torch.allclose(base, zeroed)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_block_recorder_replays_blocks_as_the_forward_pass_called_them(tiny, arch):
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    batch = tok(["The mother tongue of Danielle Darrieux is"], return_tensors="pt")
    blocks = {b: layout.layer_module(model, b) for b in (1, 2, 3)}
    with torch.no_grad():
        with Trace(model, layout.layer_name(3), retain_output=True) as full:
            model(**batch)
        with BlockRecorder(blocks, stop=3) as rec:
            model(**batch)  # stops before block 3 runs
        assert list(rec.calls) == [1, 2, 3] and hook_count(model) == 0
        hidden = rec.calls[1].hidden
        for b in (1, 2, 3):  # blocks 1..3 called again from block 1's input give the pass's output
            out = rec.calls[b](blocks[b], hidden)
            hidden = out[0] if isinstance(out, tuple) else out
    # bit-equal on transformers 5; on 4.56 GPT-2's blocks called again differ in the 7th digit (measured
    # 9e-7 absolute), so float32 round-off is allowed: a wrong input or block order is off by O(1)
    torch.testing.assert_close(hidden, full.output[0] if isinstance(full.output, tuple) else full.output,
                               rtol=1e-5, atol=1e-5)


def test_block_recorder_removes_its_hooks_when_the_pass_fails(tiny):
    model, _ = tiny("llama")
    layout = ModelLayout.from_model(model)
    with pytest.raises(IndexError):
        with BlockRecorder({1: layout.layer_module(model, 1)}):
            model(input_ids=torch.tensor([[10**6]]))  # an id past the vocabulary
    assert hook_count(model) == 0
    with pytest.raises(ValueError, match="stop=5"):
        BlockRecorder({1: layout.layer_module(model, 1)}, stop=5)
