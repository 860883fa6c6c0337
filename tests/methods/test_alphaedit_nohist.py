"""AlphaEdit without history: the method added as one file (methods/alphaedit_nohist.py) plus its
YAMLs, and found by everything that reads the registry."""

from __future__ import annotations

import pytest
import torch

from betaedit_plugin import load_hparams
from betaedit_plugin.hparams_files import hparams_path
from betaedit_plugin.linalg import alphaedit_delta
from betaedit_plugin.methods import AlphaEditNoHistHyperParams, get_method
from support.editing import LAYERS, REQS, TEMPLATES, make_editor, spd


def _nohist_editor(tiny, **over):
    from betaedit_plugin.editor import BetaEditor
    from betaedit_plugin.models.layout import ModelLayout

    model, tok = tiny("llama")
    hp = AlphaEditNoHistHyperParams(layers=LAYERS, v_num_grad_steps=4, L2=1.0, **over)
    d_k = ModelLayout.from_model(model).key_dim(model, LAYERS[0])
    return BetaEditor(model, tok, hp, prior_covs={l: spd(d_k, 100 + l) for l in LAYERS}, context_templates=TEMPLATES)


def test_the_update_ignores_earlier_edits(tiny):
    ed = _nohist_editor(tiny)
    for r in REQS[:3]:
        ed.apply([r])
    g = torch.Generator().manual_seed(0)
    for l, s in ed.state.layers.items():
        assert s.n_keys == 3 and float(s.hist_cov.abs().sum()) > 0  # H is kept, for the diagnostics
        K = torch.randn(s.prior_cov.shape[0], 2, generator=g, dtype=torch.float64)
        R = torch.randn(ed.layout.value_dim(ed.model, l), 2, generator=g, dtype=torch.float64)
        P = s.basis @ s.basis.T
        torch.testing.assert_close(s.solver.delta(K, R), alphaedit_delta(K, R, P, hist_cov=None, l2=1.0),
                                   rtol=1e-8, atol=1e-10)
        with_history = alphaedit_delta(K, R, P, hist_cov=s.hist_cov, l2=1.0)
        assert not torch.allclose(s.solver.delta(K, R), with_history)
    # AlphaEdit with history writes other weights from the second edit on
    alpha = make_editor(tiny, "AlphaEdit")
    for r in REQS[:3]:
        alpha.apply([r])
    assert not torch.equal(alpha.weight_deltas()[1], ed.weight_deltas()[1])


def test_found_by_name_yaml_adapter_and_runner():
    method = get_method("alphaedit-nohist")
    assert get_method("AlphaEdit-NoHist") is method and method.easyedit_name == "BE-AlphaEdit-NoHist"
    hp = load_hparams(hparams_path("AlphaEdit-NoHist", "smollm2-135m"))
    assert type(hp) is AlphaEditNoHistHyperParams and hp.alg_name == "BE-AlphaEdit-NoHist"

    from betaedit_plugin.adapters import easyedit
    from betaedit_plugin.runner.config import group_options

    assert "BE-AlphaEdit-NoHist" in easyedit.registered_names()
    assert easyedit.apply_alphaedit_nohist_to_model.__name__ == "apply_alphaedit_nohist_to_model"
    assert "alphaedit-nohist" in group_options("method")
    with pytest.raises(TypeError, match="BE-AlphaEdit needs AlphaEditHyperParams"):  # no mix-up with AlphaEdit
        easyedit.BetaEditExecutor("alphaedit").apply_to_model(None, None, [], hp)


def test_a_run_of_the_runner(tmp_path):
    from betaedit_plugin.runner import run_experiment
    from betaedit_plugin.runner.config import validate_config

    cfg = validate_config({
        "method": {"name": "alphaedit-nohist", "alg": "AlphaEdit-NoHist"},
        "model": {"name": "tiny-llama", "path": "tiny-llama", "hparams_file": "smollm2-135m",
                  "hparams_overrides": {"model_name": "tiny-llama", "layers": [1, 2], "v_loss_layer": 3,
                                        "v_num_grad_steps": 4, "mom2_n_samples": 20, "mom2_max_length": 32,
                                        "context_template_length_params": [[5, 2]], "nullspace_threshold": 0.2}},
        "data": {"name": "counterfact", "split": "edit"},
        "num_edits": 2, "eval_every": 2, "checkpoint_every": 0, "progress": False,
        "eval": {"mmlu_n": 0, "ppl_tokens": 0, "fluency_prompts": 0},
        "hparams": {"stats_dir": str(tmp_path / "stats")},
        "run_root": str(tmp_path / "runs"), "out_dir": str(tmp_path / "runs" / "alphaedit-nohist"),
    })
    results = run_experiment(cfg)
    assert results["status"] == "complete" and results["alg_name"] == "BE-AlphaEdit-NoHist"
    assert [p["step"] for p in results["evals"]] == [0, 2] and results["evals"][-1]["perturbation"] > 0
    assert "| alphaedit-nohist | 2 |" in (tmp_path / "runs" / "comparison.md").read_text()


def test_a_state_loaded_into_another_precision_keeps_ignoring_the_history(tiny):
    """A float32 state loaded into a float64 editor is recomputed on load; a history-free rule
    must recompute it without H, so the loaded editor writes what the saving one writes."""
    from betaedit_plugin.editor import BetaEditor
    from betaedit_plugin.models.layout import ModelLayout

    model, tok = tiny("llama")
    hp = AlphaEditNoHistHyperParams(layers=LAYERS, v_num_grad_steps=4, L2=1.0)
    d_k = ModelLayout.from_model(model).key_dim(model, LAYERS[0])
    priors = {l: spd(d_k, 100 + l) for l in LAYERS}
    saver = BetaEditor(model, tok, hp, prior_covs=priors, context_templates=TEMPLATES,
                       solver_options={"compute_dtype": "float32"})
    for r in REQS[:3]:
        saver.apply([r])
    loader = BetaEditor(model, tok, hp, prior_covs=priors, context_templates=TEMPLATES)  # float64
    loader.load_state_dict(saver.state_dict())
    g = torch.Generator().manual_seed(1)
    for l in LAYERS:
        s_saved, s_loaded = saver.state.layers[l], loader.state.layers[l]
        assert float(s_loaded.hist_cov.abs().sum()) > 0  # H itself is loaded, for the diagnostics
        K = torch.randn(d_k, 2, generator=g, dtype=torch.float64)
        R = torch.randn(loader.layout.value_dim(model, l), 2, generator=g, dtype=torch.float64)
        want = alphaedit_delta(K, R, s_loaded.basis @ s_loaded.basis.T, hist_cov=None, l2=1.0)
        torch.testing.assert_close(s_loaded.solver.delta(K, R).double(), want, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(s_saved.solver.delta(K, R).double(), want, rtol=1e-4, atol=1e-6)
