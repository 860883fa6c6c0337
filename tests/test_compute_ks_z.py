"""compute_ks, compute_z, compute_current_z and context templates on tiny random models."""

from __future__ import annotations

import pytest
import torch

from betaedit_plugin.hparams import BetaEditHyperParams
from betaedit_plugin.models.hooks import Trace, hook_count
from betaedit_plugin.compute_ks import KeySweep, compute_ks
from betaedit_plugin.models.layout import ModelLayout
from support.reference import reference_compute_z
from betaedit_plugin.models.templates import generate_context_templates
from betaedit_plugin.models.tokens import build_prompt, encode, fact_token_index, subject_token_range
from betaedit_plugin.compute_z import (
    build_value_problem,
    compute_current_z,
    compute_z,
    compute_zs,
    optimise_value,
    optimise_values,
)
from betaedit_plugin.requests import EditRequest

ARCHS = ("gpt2", "gptj", "llama", "qwen2", "qwen3")
CTX = [["{}"], ["The cat. {}", "Because I said so. {}"], ["You know that. {}"]]
REQS = [
    EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French"),
    EditRequest("Michael Jordan plays the sport of", "Michael Jordan", "soccer", "basketball"),
]


def _hp(**kw) -> BetaEditHyperParams:
    return BetaEditHyperParams(layers=[1, 2], **kw)


def _rewrite_input(model, tok, layout, layer, text, index):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad(), Trace(model, layout.rewrite_name(layer), retain_input=True, stop=True) as tr:
        model(ids)
    return tr.input[0, index]


# ---------------------------------------------------------------- token positions
def test_fact_token_choices(tiny):
    _, tok = tiny("llama")
    req = REQS[0]
    prompt = build_prompt(req)
    ids = encode(tok, prompt)
    offsets = tok(prompt.text, return_offsets_mapping=True)["offset_mapping"]
    first, last = subject_token_range(tok, prompt)
    assert prompt.text[offsets[first][0]: offsets[last][1]].strip() == "Danielle Darrieux"
    assert fact_token_index(tok, prompt, "subject_first") == first
    assert fact_token_index(tok, prompt, "subject_last") == last
    assert fact_token_index(tok, prompt, "subject_first_after_last") == last + 1
    assert fact_token_index(tok, prompt, "last") == len(ids) - 1
    with pytest.raises(ValueError, match="fact_token='middle'"):
        fact_token_index(tok, prompt, "middle")


class _SlowTokenizer:
    """A tokenizer without offset mappings (like a Python 'slow' tokenizer)."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, text, **kw):
        return self._tok(text, **kw)


@pytest.mark.parametrize("context", ["{}", "Because I said so. {}"])
def test_subject_range_same_without_offsets(tiny, context):
    _, tok = tiny("gpt2")
    for req in REQS:
        prompt = build_prompt(req, context)
        assert subject_token_range(_SlowTokenizer(tok), prompt) == subject_token_range(tok, prompt)


def test_subject_missing_from_prompt_raises():
    with pytest.raises(ValueError, match=r"subject='Paris' does not occur in prompt"):
        EditRequest("The mother tongue of Danielle Darrieux is", "Paris", "English")
    with pytest.raises(ValueError, match="target_new=''"):
        EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "")


# ---------------------------------------------------------------- keys
@pytest.mark.parametrize("arch", ARCHS)
def test_keys_shape_and_left_right_padding(tiny, arch):
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    keys = {}
    for side in ("left", "right"):
        tok.padding_side = side
        keys[side] = compute_ks(model, tok, REQS, _hp(), layout, 1, CTX)
    assert keys["left"].shape == (layout.key_dim(model, 1), len(REQS))
    torch.testing.assert_close(keys["left"], keys["right"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ("gpt2", "llama"))
def test_keys_are_rewrite_inputs_averaged_per_group(tiny, arch):
    """Key = mean over groups of the mean over each group's templates of the down_proj input."""
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    tok.padding_side = "left"
    hp = _hp(fact_token="subject_last")
    got = compute_ks(model, tok, REQS, hp, layout, 2, CTX)
    for col, req in enumerate(REQS):
        group_means = []
        for group in CTX:
            rows = []
            for ctx in group:
                p = build_prompt(req, ctx)
                rows.append(_rewrite_input(model, tok, layout, 2, p.text, fact_token_index(tok, p, "subject_last")))
            group_means.append(torch.stack(rows).mean(0))
        torch.testing.assert_close(got[:, col], torch.stack(group_means).mean(0), rtol=1e-5, atol=1e-6)


def test_keys_bad_input_raises_before_forward(tiny):
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"layer=9.*\[0, 3\]"):
            compute_ks(model, tok, REQS, _hp(), layout, 9, CTX)
        with pytest.raises(ValueError, match="requests=\\[\\]"):
            compute_ks(model, tok, [], _hp(), layout, 1, CTX)
        with pytest.raises(TypeError, match="EditRequest.from_easyedit"):
            compute_ks(model, tok, [{"prompt": "x"}], _hp(), layout, 1, CTX)
        with pytest.raises(ValueError, match="contain"):
            compute_ks(model, tok, REQS, _hp(), layout, 1, [["no placeholder"]])
    finally:
        handle.remove()
    assert calls == []


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("arch,layer,loss_layer", [("gpt2", 2, -1), ("llama", 1, 2), ("qwen3", 1, -1), ("gptj", 1, 3)])
def test_compute_z_matches_full_forward_reference(tiny, arch, layer, loss_layer):
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    hp = _hp(v_num_grad_steps=8, v_lr=0.2, v_loss_layer=loss_layer, clamp_norm_factor=4.0)
    ctx = CTX[:2]
    fast = optimise_value(model, tok, REQS[0], hp, layout, layer, ctx)
    ref = reference_compute_z(model, tok, REQS[0], hp, layout, layer, ctx)
    assert fast.delta.norm() > 0.05 * fast.z_init.norm()
    torch.testing.assert_close(fast.z, ref, rtol=1e-4, atol=1e-4)


REQS3 = REQS + [EditRequest("{}, who works as a", "Ada Lovelace", "plumber", "mathematician")]


@pytest.mark.parametrize("arch,stop_at", [("gpt2", 5.5), ("llama", 6.5)])
def test_batched_values_equal_one_request_at_a_time(tiny, arch, stop_at, monkeypatch):
    """n requests in one optimisation == each alone: same z*, same steps (early stops differ per request;
    a stopped request's rows leave the batch)."""
    from betaedit_plugin.compute_z import FrozenPrefix

    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    hp = _hp(v_num_grad_steps=12, v_lr=0.3, clamp_norm_factor=2.0, v_early_stop_loss=stop_at)
    alone = [optimise_value(model, tok, r, hp, layout, 1, CTX) for r in REQS3]
    kept_rows = []
    real_keep = FrozenPrefix.keep_rows

    def keep_rows(self, keep):
        done = real_keep(self, keep)
        kept_rows.append(keep.numel() if done else None)
        return done

    monkeypatch.setattr(FrozenPrefix, "keep_rows", keep_rows)
    batched = optimise_values(model, tok, REQS3, hp, layout, 1, CTX, check_prefix=False)
    assert kept_rows and all(k is not None for k in kept_rows), kept_rows  # rows were dropped, not kept
    for a, b in zip(alone, batched):
        assert a.steps == b.steps
        torch.testing.assert_close(b.z, a.z, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.tensor(b.nll), torch.tensor(a.nll), rtol=1e-4, atol=1e-5)
    assert len({r.steps for r in alone}) > 1, "the test should cover requests that stop at different steps"
    z = compute_zs(model, tok, REQS3, hp, layout, 1, CTX)
    torch.testing.assert_close(z, torch.stack([a.z for a in alone], 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,layers", [("gpt2", [1, 2]), ("llama", [0, 2, 3]), ("qwen3", [1])])
def test_key_sweep_matches_compute_ks_after_each_write(tiny, arch, layers):
    """KeySweep (prompts cut at the fact token, blocks run from stored inputs) == compute_ks from the embeddings."""
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    hp = BetaEditHyperParams(layers=layers)
    gen = torch.Generator().manual_seed(0)
    sweep = KeySweep(model, tok, REQS3, hp, layout, layers, CTX)
    for l in layers:
        want = compute_ks(model, tok, REQS3, hp, layout, l, CTX)
        torch.testing.assert_close(sweep.keys(l), want, rtol=1e-5, atol=1e-5)
        w = layout.read_weight(model, l)
        layout.add_delta(model, l, 0.5 * torch.randn(w.shape, generator=gen) * w.std())
        sweep.advance(l)
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="layers go in order"):
        sweep.keys(layers[0])


def test_cached_columns_used_and_same_as_whole_sequence_path(tiny, monkeypatch):
    import betaedit_plugin.compute_z as values

    model, tok = tiny("qwen2")
    layout = ModelLayout.from_model(model)
    hp = _hp(v_num_grad_steps=6, v_lr=0.2, clamp_norm_factor=4.0)
    pb = build_value_problem(tok, REQS[0], hp.fact_token, CTX, torch.device("cpu"))
    rows, cols = torch.cat([pb.target_rows, pb.kl_rows]), torch.cat([pb.target_cols, pb.kl_cols])
    prefix = values.prepare_frozen_prefix(model, layout, pb, 1, 3, rows, cols)
    assert prefix.start == int(pb.fact_cols[0]) > 0 and bool((pb.fact_cols == prefix.start).all())
    cached = optimise_value(model, tok, REQS[0], hp, layout, 1, CTX)

    def unavailable(*args, **kwargs):
        raise values.PrefixCacheUnavailable("no per-layer keys/values")

    monkeypatch.setattr(values, "run_frozen_prefix_cached", unavailable)
    whole = optimise_value(model, tok, REQS[0], hp, layout, 1, CTX)
    torch.testing.assert_close(cached.z, whole.z, rtol=1e-4, atol=1e-5)

    def broken(*args, **kwargs):  # any other error is a bug, not a reason to take the slow path
        raise IndexError("bug")

    monkeypatch.setattr(values, "run_frozen_prefix_cached", broken)
    with pytest.raises(IndexError, match="bug"):
        optimise_value(model, tok, REQS[0], hp, layout, 1, CTX)


def test_compute_z_flips_tiny_model_and_leaves_it_unchanged(tiny):
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hp = _hp(v_num_grad_steps=20, v_lr=0.5, clamp_norm_factor=10.0, v_weight_decay=0.0, fact_token="last")
    req = REQS[0]
    res = optimise_value(model, tok, req, hp, layout, 2, CTX)
    assert res.nll[-1] < res.nll[0] - 1.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert hook_count(model) == 0
    z = compute_z(model, tok, req, hp, layout, 2, CTX)
    torch.testing.assert_close(z, res.z)


@pytest.mark.parametrize("arch", ("gpt2", "qwen2"))
def test_compute_z_left_right_padding_and_current_z(tiny, arch):
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    hp = _hp(v_num_grad_steps=5, v_lr=0.2)
    out = {}
    for side in ("left", "right"):
        tok.padding_side = side
        out[side] = optimise_value(model, tok, REQS[1], hp, layout, 2, CTX[:2])
    torch.testing.assert_close(out["left"].z, out["right"].z, rtol=1e-4, atol=1e-5)
    current = compute_current_z(model, tok, REQS, hp, layout, 2)
    assert current.shape == (layout.value_dim(model, 2), len(REQS))
    torch.testing.assert_close(current[:, 1], out["right"].z_init, rtol=1e-5, atol=1e-6)


def test_compute_z_bad_layers_raise_before_forward(tiny):
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"layer=4"):
            compute_z(model, tok, REQS[0], _hp(), layout, 4, CTX)
        with pytest.raises(ValueError, match=r"layer=7"):
            compute_z(model, tok, REQS[0], BetaEditHyperParams(layers=[1], v_loss_layer=7), layout, 1, CTX)
        with pytest.raises(ValueError, match=r"layer=-2"):
            compute_current_z(model, tok, REQS, _hp(), layout, -2)
    finally:
        handle.remove()
    assert calls == []


# ---------------------------------------------------------------- templates
def test_context_templates_deterministic(tiny):
    model, tok = tiny("gpt2")
    a = generate_context_templates(model, tok, [[4, 5], [2, 3]], seed=0)
    b = generate_context_templates(model, tok, [[4, 5], [2, 3]], seed=0)
    c = generate_context_templates(model, tok, [[4, 5], [2, 3]], seed=1)
    assert a == b and a != c
    assert a[0] == ["{}"] and [len(g) for g in a] == [1, 5, 3]
    assert all(t.endswith(". {}") and t.count("{") == 1 and t.count("}") == 1 for g in a[1:] for t in g)
    with pytest.raises(ValueError, match="context_template_length_params"):
        generate_context_templates(model, tok, [[4]], seed=0)
