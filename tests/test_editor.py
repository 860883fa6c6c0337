"""BetaEditor: sequential steps, compute/apply, exact resume, rollback on every failure, and a real edit on SmolLM2."""

from __future__ import annotations

import pytest
import torch

from betaedit_plugin.editor import BetaEditor, EditStep, NonFiniteUpdateError, WeightsChangedError
from betaedit_plugin.adapters.undo import UndoLog
from betaedit_plugin.linalg import IncrementalSolver, betaedit_delta, memit_delta
from betaedit_plugin.linalg.solver import FormSolver
from betaedit_plugin import EditRequest
from support.editing import (
    LAYERS, METHOD_NAMES, REQS, TEMPLATES, arch_for, assert_bit_equal, hp_for, make_editor, params, spd,
)


# ---------------------------------------------------------------------------- stepping
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_step_writes_only_edited_layers_and_keeps_history(tiny, method):
    ed = make_editor(tiny, method, arch_for(method))
    before = params(ed.model)
    deltas = ed.compute([REQS[0]]).deltas
    assert_bit_equal(before, params(ed.model))  # compute leaves the model as it was
    assert ed.step == 0
    info = ed.apply([REQS[0]])
    assert info["step"] == ed.step == 1
    after = params(ed.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {ed.layout.rewrite_name(l) + ".weight" for l in LAYERS}
    for l, d in ed.weight_deltas().items():  # apply wrote exactly what compute predicted
        torch.testing.assert_close(d, deltas[l].to(d.dtype), rtol=1e-5, atol=1e-6)
        s = ed.state.layers[l]
        assert s.n_keys == 1 and float(s.hist_cov.abs().sum()) > 0
    for s in ed.state.layers.values():  # the rule's projector: none (MEMIT), or C0's null space (half of it)
        expected = ed.rule.initial_basis(s.prior_cov)
        if expected is None:
            assert s.basis is None
        else:
            d = s.prior_cov.shape[0]
            assert s.basis.shape == expected.shape == (d, d // 2)


def test_solver_delta_equals_the_dense_formulas(tiny):
    """After two edits, the incremental solver's Delta equals the closed forms with H."""
    ed = make_editor(tiny, "BetaEdit", tau=100)
    ed.apply([REQS[0]])
    ed.apply([REQS[1]])
    g = torch.Generator().manual_seed(0)
    for l, s in ed.state.layers.items():
        K = torch.randn(s.prior_cov.shape[0], 2, generator=g, dtype=torch.float64)
        R = torch.randn(ed.layout.value_dim(ed.model, l), 2, generator=g, dtype=torch.float64)
        P = s.basis @ s.basis.T
        dense = betaedit_delta(K, R, P, s.prior_cov, hist_cov=s.hist_cov, lambda1=5.0, lambda2=1.0)
        torch.testing.assert_close(s.solver.delta(K, R), dense, rtol=1e-8, atol=1e-10)
    ed2 = make_editor(tiny, "MEMIT")
    ed2.apply([REQS[0]])
    s = ed2.state.layers[1]
    K = torch.randn(s.prior_cov.shape[0], 1, dtype=torch.float64)
    R = torch.randn(ed2.layout.value_dim(ed2.model, 1), 1, dtype=torch.float64)
    dense = memit_delta(K, R, s.prior_cov, hist_cov=s.hist_cov, mom2_update_weight=5.0)
    torch.testing.assert_close(s.solver.delta(K, R), dense, rtol=1e-8, atol=1e-10)


def test_betaedit_refreshes_projector_every_tau_edits(tiny):
    ed = make_editor(tiny, "BetaEdit", tau=2)
    first = {l: s.basis.clone() for l, s in ed.prepare().layers.items()}
    assert ed.apply([REQS[0]])["refreshed"] is False
    assert all(torch.equal(ed.state.layers[l].basis, first[l]) for l in LAYERS)
    assert ed.apply([REQS[1]])["refreshed"] is True
    assert ed.state.last_refresh == 2
    # the refreshed solver equals a from-scratch solver on the new basis and history
    s = ed.state.layers[1]
    fresh = IncrementalSolver(s.prior_cov, basis=s.basis, hist_cov=s.hist_cov, lambda1=5.0, lambda2=1.0)
    torch.testing.assert_close(s.solver.g_inv, fresh.g_inv)


def test_two_editors_two_histories(tiny):
    a, b = make_editor(tiny), make_editor(tiny)
    a.apply([REQS[0]])
    a.apply([REQS[1]])
    b.apply([REQS[2]])
    assert (a.step, b.step) == (2, 1)
    assert not torch.equal(a.state.layers[1].hist_cov, b.state.layers[1].hist_cov)


# ---------------------------------------------------------------------------- save / resume
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_resume_after_three_edits_is_bit_equal(tiny, tmp_path, method):
    arch = arch_for(method)
    full = make_editor(tiny, method, arch)
    for r in REQS:
        full.apply([r])

    first = make_editor(tiny, method, arch)
    for r in REQS[:3]:
        first.apply([r])
    path = first.save_state(tmp_path / "state.safetensors")

    resumed = make_editor(tiny, method, arch)  # fresh copy of the ORIGINAL model
    resumed.load_state(path)
    assert resumed.step == 3
    for r in REQS[3:]:
        resumed.apply([r])
    assert_bit_equal(params(full.model), params(resumed.model))
    for l in LAYERS:
        assert torch.equal(full.state.layers[l].hist_cov, resumed.state.layers[l].hist_cov)


def test_loading_a_mismatched_state_raises(tiny, tmp_path):
    ed = make_editor(tiny, "BetaEdit")
    ed.apply([REQS[0]])
    path = ed.save_state(tmp_path / "s.safetensors")

    other_hp = make_editor(tiny, "BetaEdit", lambda1=7.0)
    before = params(other_hp.model)
    with pytest.raises(ValueError, match="hparams.lambda1: saved 5.0, here 7.0"):
        other_hp.load_state(path)
    assert_bit_equal(before, params(other_hp.model))
    assert other_hp.state is None

    with pytest.raises(ValueError, match="method"):
        make_editor(tiny, "AlphaEdit").load_state(path)
    with pytest.raises(ValueError, match="layers"):
        make_editor(tiny, "BetaEdit", layers=[1, 3]).load_state(path)
    with pytest.raises(ValueError, match="match neither"):
        make_editor(tiny, "BetaEdit", seed=1).load_state(path)  # same config, other weights


# ---------------------------------------------------------------------------- bad input, rollback
def test_layer_beyond_the_model_raises_when_built(tiny):
    model, tok = tiny("llama")
    with pytest.raises(ValueError, match=r"layers=\[1, 9\]"):
        BetaEditor(model, tok, hp_for("BetaEdit", layers=[1, 9]))


def test_prior_covs_are_checked(tiny):
    model, tok = tiny("llama")
    with pytest.raises(ValueError, match="prior_covs"):
        BetaEditor(model, tok, hp_for("BetaEdit"), prior_covs={1: torch.eye(3)})
    with pytest.raises(ValueError, match="prior_covs has layers"):
        BetaEditor(model, tok, hp_for("BetaEdit"), prior_covs={1: torch.eye(3)} | {5: torch.eye(3)})


@pytest.mark.parametrize(
    "request_dict, match",
    [
        ({"prompt": "Michael Jordan plays", "subject": "Lionel Messi", "target_new": "chess"}, "subject"),
        ({"prompt": "Michael Jordan plays", "subject": "Michael Jordan", "target_new": "  "}, "target_new"),
    ],
)
def test_bad_request_fails_before_any_weight_changes(tiny, request_dict, match):
    ed = make_editor(tiny)
    ed.apply([REQS[0]])
    before, step = params(ed.model), ed.step
    with pytest.raises(ValueError, match=match):
        ed.apply([REQS[1], request_dict])
    assert_bit_equal(before, params(ed.model))
    assert ed.step == step


def test_nonfinite_target_raises_naming_layer_and_step(tiny, monkeypatch):
    ed = make_editor(tiny)
    ed.apply([REQS[0]])
    before, hist = params(ed.model), {l: s.hist_cov for l, s in ed.state.layers.items()}
    import betaedit_plugin.editor as editor_mod

    real = editor_mod.compute_zs
    monkeypatch.setattr(editor_mod, "compute_zs", lambda *a, **k: torch.full_like(real(*a, **k), float("inf")))
    with pytest.raises(NonFiniteUpdateError, match=r"layer 1, step 2"):
        ed.apply([REQS[1]])
    assert_bit_equal(before, params(ed.model))
    assert ed.step == 1 and all(ed.state.layers[l].hist_cov is hist[l] for l in LAYERS)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_nan_at_second_layer_rolls_back_the_first(tiny, monkeypatch, method):
    ed = make_editor(tiny, method)
    before = params(ed.model)
    real = FormSolver.delta
    calls = []

    def flaky(self, keys, resid):
        calls.append(1)
        out = real(self, keys, resid)
        return out if len(calls) == 1 else torch.full_like(out, float("nan"))

    monkeypatch.setattr(FormSolver, "delta", flaky)
    with pytest.raises(NonFiniteUpdateError, match=r"layer 2, step 1"):
        ed.apply([REQS[0]])
    assert len(calls) == 2  # layer 1 was written, then rolled back
    assert_bit_equal(before, params(ed.model))
    assert ed.step == 0 and all(float(s.hist_cov.abs().sum()) == 0 for s in ed.state.layers.values())


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_undo_restores_weights_and_state(tiny, method):
    ed = make_editor(tiny, method)
    ed.apply([REQS[1]])  # an earlier step stays
    before, state_before = params(ed.model), ed.state_dict()
    log = UndoLog(ed)
    log.apply([REQS[0]])
    assert log.weights_status() == "unchanged"
    log.undo()
    assert_bit_equal(before, params(ed.model))
    assert ed.step == 1 and log.weights_status() == "unchanged"
    assert_bit_equal(state_before["tensors"], ed.state_dict()["tensors"])
    with pytest.raises(RuntimeError, match="nothing to undo"):
        log.undo()


# ---------------------------------------------------------------------------- compute, then apply
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_apply_of_a_computed_step_equals_apply_of_the_requests(tiny, method):
    direct, split = make_editor(tiny, method), make_editor(tiny, method)
    for r in REQS[:3]:
        direct.apply([r])
        step = split.compute([r])
        assert isinstance(step, EditStep) and step.step == split.step and step.requests == (r,)
        info = split.apply(step)  # writes the computed deltas, no second z* / key pass
        assert info["step"] == direct.step
    assert_bit_equal(params(direct.model), params(split.model))
    for l in LAYERS:
        assert torch.equal(direct.state.layers[l].hist_cov, split.state.layers[l].hist_cov)


def test_a_stale_computed_step_is_refused(tiny):
    ed = make_editor(tiny)
    step = ed.compute([REQS[0]])
    ed.apply([REQS[1]])  # the weights and the step moved on
    before = params(ed.model)
    with pytest.raises(WeightsChangedError, match="compute it again"):
        ed.apply(step)
    assert_bit_equal(before, params(ed.model))
    assert ed.step == 1
    other = make_editor(tiny)
    step = other.compute([REQS[0]])
    with torch.no_grad():
        other.model.get_parameter(other.layout.rewrite_name(2) + ".weight").mul_(1.01)
    with pytest.raises(WeightsChangedError, match="layer 1: the weights changed|layer 2: the weights changed"):
        other.apply(step)
    assert other.step == 0


def test_padding_side_and_training_mode_are_restored(tiny):
    ed = make_editor(tiny)
    ed.tok.padding_side = "left"
    ed.model.train()
    ed.apply([REQS[0]])
    assert ed.tok.padding_side == "left" and ed.model.training


# ---------------------------------------------------------------------------- real model
@pytest.mark.slow
def test_smollm2_five_sequential_counterfact_edits(smollm2, smollm2_stats):
    """BetaEdit writes 5 CounterFact facts one after another; all five hold after the fifth."""
    import dataclasses
    from pathlib import Path

    from betaedit_plugin import load_hparams
    from betaedit_plugin.data.loaders import load_counterfact
    from betaedit_plugin.eval.scoring import target_token_accuracy

    model, tok = smollm2
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        hp = load_hparams(Path(__file__).resolve().parents[1] / "hparams/BetaEdit/smollm2-135m.yaml")
        # Measured here (single edits of CounterFact cases 0, 4, 6, same z*): the paper's lambda1=3000,
        # lambda2=10 writes only 47-71% of the residual on SmolLM2 (its C0 spectrum: 983-1191 of 1536
        # eigenvalues under 0.02), so 2 of 5 edits fail; lambda1=300, lambda2=1 writes 91-97%.
        hp = dataclasses.replace(hp, lambda1=300.0, lambda2=1.0)
        reqs = load_counterfact("edit", n=5)
        pre = [target_token_accuracy(model, tok, r.prompt, r.target_new) for r in reqs]
        ed = BetaEditor(model, tok, hp, prior_covs={l: smollm2_stats[l] for l in hp.layers})
        for r in reqs:
            ed.apply([r])
        post = [target_token_accuracy(model, tok, r.prompt, r.target_new) for r in reqs]
        assert ed.step == 5
        assert all(p >= 0.8 for p in post), f"rewrite_acc pre {pre}, post {post}"
        assert sum(pre) < sum(post)
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)


def test_from_hparams_with_a_yaml_path_and_a_given_model(tiny, tmp_path):
    import yaml

    p = tmp_path / "beta.yaml"
    p.write_text(yaml.safe_dump({"alg_name": "BetaEdit", "model_name": "tiny-llama", "layers": [1, 2],
                                 "v_num_grad_steps": 2, "lambda1": 5.0, "tau": 3}))
    model, tok = tiny("llama")
    from betaedit_plugin.models.layout import ModelLayout

    d_k = ModelLayout.from_model(model).key_dim(model, 1)
    ed = BetaEditor.from_hparams(p, model, tok, prior_covs={l: spd(d_k, l) for l in LAYERS},
                                 context_templates=TEMPLATES)
    assert ed.method == "BetaEdit" and ed.model is model and ed.hparams.tau == 3
    with pytest.raises(ValueError, match="give both or neither"):
        BetaEditor.from_hparams(p, model)
    with pytest.raises(TypeError, match="hparams"):
        BetaEditor(model, tok, {"alg_name": "BetaEdit"})


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_float32_solver_options_track_the_float64_editor(tiny, tmp_path, method):
    """solver_options (float32 per-edit tensors, recomputed in float64 every 3 keys) write the same
    edits as the default float64 solver to 1e-4, and a saved float32 state resumes."""
    from betaedit_plugin.models.layout import ModelLayout

    layers = LAYERS

    editors = []
    for options in (None, {"compute_dtype": "float32", "inverse_form": "auto", "refresh_every": 3}):
        model, tok = tiny("llama", seed=0)
        d_k = ModelLayout.from_model(model).key_dim(model, layers[0])
        priors = {l: spd(d_k, 100 + l) for l in layers}
        editors.append(BetaEditor(model, tok, hp_for(method), prior_covs=priors, context_templates=TEMPLATES,
                                  solver_options=options))
    ref, f32 = editors
    for r in REQS:
        ref.apply([r])
        f32.apply([r])
        for l in layers:
            a, b = ref.weight_deltas()[l].double(), f32.weight_deltas()[l].double()
            assert float((a - b).norm() / a.norm()) < 1e-4
    f32.save_state(tmp_path / "s.safetensors")
    model, tok = tiny("llama", seed=0)
    back = BetaEditor(model, tok, hp_for(method), prior_covs={l: f32.state.layers[l].prior_cov for l in layers},
                      context_templates=TEMPLATES, solver_options={"compute_dtype": "float32", "inverse_form": "auto",
                                                                   "refresh_every": 3})
    back.load_state(tmp_path / "s.safetensors")
    assert back.step == len(REQS)


def test_unknown_solver_option_is_named(tiny):
    model, tok = tiny("llama")
    with pytest.raises(ValueError, match=r"solver_options: unknown key\(s\) \['compute_dtyp'\].*compute_dtype"):
        BetaEditor(model, tok, hp_for("BetaEdit"), solver_options={"compute_dtyp": "float32"})


# ---------------------------------------------------------------------------- user errors (issue 13)
def test_an_error_in_a_batch_names_the_item(tiny):
    from betaedit_plugin import RequestError

    ed = make_editor(tiny)
    ed.apply([REQS[0]])
    before, step = params(ed.model), ed.step
    bad = {"prompt": "Toyota was founded in", "subject": "Honda", "target_new": "Japan", "case_id": 17}
    with pytest.raises(RequestError, match=r"^requests\[2\] \(case_id 17\): subject='Honda' does not occur") as info:
        ed.apply([REQS[1], REQS[2], bad])
    assert (info.value.index, info.value.case_id) == (2, 17)
    long = EditRequest("word " * 300 + "Toyota was founded in", "Toyota", "Germany", case_id=23)
    with pytest.raises(RequestError, match=r"^requests\[1\] \(case_id 23\): the prompt \(\d+ tokens in its longest "
                                           r"context template\) and target_new \(\d+ tokens\) take \d+ tokens, more than "
                                           r"the model's context of 256 positions"):
        ed.apply([REQS[1], long])
    assert_bit_equal(before, params(ed.model))
    assert ed.step == step


def test_literal_braces_are_text_only_the_empty_pair_is_the_subject(tiny):
    req = EditRequest("In the set {x}, the mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", case_id=5)
    assert req.template == "In the set {x}, the mother tongue of {} is"
    assert req.filled_prompt == req.prompt
    ed = make_editor(tiny, "AlphaEdit", arch="gpt2")
    assert ed.apply([req])["step"] == 1


def test_device_of_the_hparams_is_checked_not_ignored(tiny):
    from betaedit_plugin import DeviceError

    model, tok = tiny("llama")
    before = params(model)
    with pytest.raises(DeviceError, match=r"hparams.device='meta', but the model's layer 1 is on cpu; move the model "
                                          r"there \(model.to\('meta'\)\), set device to 'cpu'"):
        BetaEditor(model, tok, hp_for("BetaEdit", device="meta"))
    if not torch.cuda.is_available():
        for device in ("cuda:0", 0):
            with pytest.raises(DeviceError, match=rf"hparams.device={device!r}: CUDA is not available on this machine; "
                                                  r"set hparams.device to 'cpu'"):
                BetaEditor(model, tok, hp_for("BetaEdit", device=device))
    assert_bit_equal(before, params(model))


def test_nullspace_threshold_with_an_empty_null_space_or_nothing_protected(tiny):
    from betaedit_plugin import HyperParamsError

    ed = make_editor(tiny, "BetaEdit", nullspace_threshold=1e-6)  # every eigenvalue of the priors is >= 1e-3
    before = params(ed.model)
    with pytest.raises(HyperParamsError, match=r"nullspace_threshold=1e-06: no eigenvalue of C0 is below it \(the smallest "
                                               r"is 0.001\), so the null space is empty .* above 0.001 \(layer 1\)"):
        ed.apply([REQS[0]])
    assert ed.state is None and ed.step == 0
    assert_bit_equal(before, params(ed.model))
    ed = make_editor(tiny, "AlphaEdit", nullspace_threshold=100.0)
    with pytest.warns(UserWarning, match=r"nullspace_threshold=100.0: every eigenvalue of C0 is below it .* so 0 of \d+ "
                                         r"directions are protected"):
        ed.prepare()
