"""The EasyEdit adapter: EasyEdit's calling convention, per-model histories, rollback on restore.

Most tests call the executor exactly as EasyEdit's ``BaseEditor`` does, so they run without
EasyEdit; the registration tests import ``easyeditor`` when it is importable and skip otherwise.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from betaedit_plugin import BetaEditHyperParams
from betaedit_plugin.adapters.easyedit import (
    REGISTERED_NAMES,
    BetaEditExecutor,
    apply_betaedit_to_model,
    register_easyedit,
)
from betaedit_plugin.editor import WeightsChangedError
from betaedit_plugin.models.layout import ModelLayout
from support.editing import spd

LAYERS = [1, 2]
TEMPLATES = [["{}"], ["The. {}"]]


def easyedit_request(i: int) -> dict:
    """A request dict as EasyEdit's ``_prepare_requests`` builds it."""
    rows = [
        ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French"),
        ("Michael Jordan plays the sport of", "Michael Jordan", "soccer", "basketball"),
        ("The official language of Japan is", "Japan", "English", "Japanese"),
    ]
    prompt, subject, new, truth = rows[i]
    return {"prompt": prompt, "target_new": new, "ground_truth": truth, "portability": {},
            "locality": {}, "subject": subject}


@pytest.fixture
def setup(tiny):
    def build(seed: int = 0):
        model, tok = tiny("llama", seed=seed)
        d_k = ModelLayout.from_model(model).key_dim(model, LAYERS[0])
        hp = BetaEditHyperParams(layers=LAYERS, v_num_grad_steps=4, lambda1=5.0, lambda2=1.0, tau=100)
        priors = {l: spd(d_k, 100 + l) for l in LAYERS}
        return model, tok, hp, priors

    return build


def call(executor, model, tok, req, hp):
    """EasyEdit's BaseEditor.edit_requests calling convention."""
    return executor.apply_to_model(model, tok, [req], hp, copy=False, return_orig_weights=True,
                                   keep_original_weight=False, train_ds=None)


def restore(model, weights_copy):
    """What EasyEdit's restore_after_edit does for a method not in its special lists."""
    with torch.no_grad():
        for name, value in weights_copy.items():
            model.get_parameter(name).copy_(value)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_calling_convention_and_weights_copy(setup):
    model, tok, hp, priors = setup()
    ex = BetaEditExecutor("BetaEdit", prior_covs=priors, context_templates=TEMPLATES)
    before = snapshot(model)
    edited, weights_copy = call(ex, model, tok, easyedit_request(0), hp)
    assert edited is model
    assert sorted(weights_copy) == [f"model.layers.{l}.mlp.down_proj.weight" for l in LAYERS]
    for name, w in weights_copy.items():
        assert torch.equal(w, before[name]) and not torch.equal(model.get_parameter(name), w)
    assert ex.editor_for(model).step == 1
    _, wc = ex.apply_to_model(model, tok, [easyedit_request(1)], hp)  # return_orig_weights=False
    assert wc == {} and ex.editor_for(model).step == 2


def test_restored_weights_roll_the_history_back(setup):
    """Non-sequential EasyEdit: restore after each edit; the history must follow the weights."""
    model, tok, hp, priors = setup()
    ex = BetaEditExecutor("BetaEdit", prior_covs=priors, context_templates=TEMPLATES)
    _, wc = call(ex, model, tok, easyedit_request(0), hp)
    restore(model, wc)
    with pytest.warns(UserWarning, match="rolled back by one step to step 0"):
        call(ex, model, tok, easyedit_request(1), hp)
    assert ex.editor_for(model).step == 1

    # same weights and history as a model that only ever got request 1
    ref_model, _, _, _ = setup()
    ref = BetaEditExecutor("BetaEdit", prior_covs=priors, context_templates=TEMPLATES)
    call(ref, ref_model, tok, easyedit_request(1), hp)
    a, b = snapshot(model), snapshot(ref_model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for l in LAYERS:
        assert torch.equal(ex.editor_for(model).state.layers[l].hist_cov,
                           ref.editor_for(ref_model).state.layers[l].hist_cov)


def test_weights_changed_elsewhere_raise(setup):
    model, tok, hp, priors = setup()
    ex = BetaEditExecutor("BetaEdit", prior_covs=priors, context_templates=TEMPLATES)
    call(ex, model, tok, easyedit_request(0), hp)
    with torch.no_grad():
        model.get_parameter("model.layers.1.mlp.down_proj.weight").mul_(1.01)
    with pytest.raises(WeightsChangedError, match="reset"):
        call(ex, model, tok, easyedit_request(1), hp)
    ex.reset(model)
    call(ex, model, tok, easyedit_request(1), hp)
    assert ex.editor_for(model).step == 1


def test_two_models_two_histories_and_weak_binding(setup):
    m1, tok, hp, priors = setup()
    m2, _, _, _ = setup(seed=1)
    ex = BetaEditExecutor("BetaEdit", prior_covs=priors, context_templates=TEMPLATES)
    call(ex, m1, tok, easyedit_request(0), hp)
    call(ex, m1, tok, easyedit_request(1), hp)
    call(ex, m2, tok, easyedit_request(2), hp)
    assert (ex.editor_for(m1).step, ex.editor_for(m2).step) == (2, 1)
    del m2
    import gc

    gc.collect()
    assert len(ex._editors) == 1  # the second model's state died with it


def test_copy_edits_a_copy_and_keeps_the_original(setup):
    model, tok, hp, priors = setup()
    ex = BetaEditExecutor("BetaEdit", prior_covs=priors, context_templates=TEMPLATES)
    call(ex, model, tok, easyedit_request(0), hp)
    before = snapshot(model)
    copy_model, _ = ex.apply_to_model(model, tok, [easyedit_request(1)], hp, copy=True)
    assert copy_model is not model
    assert all(torch.equal(v, snapshot(model)[k]) for k, v in before.items())
    assert (ex.editor_for(model).step, ex.editor_for(copy_model).step) == (1, 2)


def test_padding_side_is_restored_and_bad_input_changes_nothing(setup):
    model, tok, hp, priors = setup()
    tok.padding_side = "left"  # what EasyEdit sets for methods it does not know
    ex = BetaEditExecutor("BetaEdit", prior_covs=priors, context_templates=TEMPLATES)
    before = snapshot(model)
    bad = dict(easyedit_request(0), subject="Lionel Messi")
    with pytest.raises(ValueError, match="subject"):
        call(ex, model, tok, bad, hp)
    with pytest.raises(TypeError, match="BetaEditHyperParams"):
        BetaEditExecutor("BE-AlphaEdit").apply_to_model(model, tok, [easyedit_request(0)], hp)
    assert all(torch.equal(v, snapshot(model)[k]) for k, v in before.items())
    call(ex, model, tok, easyedit_request(0), hp)
    assert tok.padding_side == "left"


def test_other_hparams_for_the_same_model_raise(setup):
    model, tok, hp, priors = setup()
    ex = BetaEditExecutor("BetaEdit", prior_covs=priors, context_templates=TEMPLATES)
    call(ex, model, tok, easyedit_request(0), hp)
    other = BetaEditHyperParams(layers=LAYERS, v_num_grad_steps=4, lambda1=9.0, lambda2=1.0, tau=100)
    with pytest.raises(ValueError, match="hparams.lambda1"):
        call(ex, model, tok, easyedit_request(1), other)


def test_module_function_without_executor_warns(setup, monkeypatch):
    # hide an executor that an earlier register_easyedit() in this process put into ALG_DICT
    monkeypatch.delitem(sys.modules, "easyeditor.util.alg_dict", raising=False)
    model, tok, hp, priors = setup()
    with pytest.warns(UserWarning, match="history is not kept"):
        edited, wc = apply_betaedit_to_model(model, tok, [easyedit_request(0)], hp, return_orig_weights=True,
                                             prior_covs=priors, context_templates=TEMPLATES)
    assert edited is model and len(wc) == 2


def test_unknown_method_name_did_you_mean():
    with pytest.raises(KeyError, match="Did you mean 'BetaEdit'"):
        BetaEditExecutor("BetaEdt")


# ---------------------------------------------------------------------------- registration
def test_register_without_easyedit_explains_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "easyeditor", None)  # makes `import easyeditor` fail
    with pytest.raises(ImportError, match="pip install -e EasyEdit --no-deps"):
        register_easyedit()


def _easyeditor_or_skip():
    try:
        return importlib.import_module("easyeditor")
    except Exception as exc:  # EasyEdit's import pulls many optional packages
        pytest.skip(f"EasyEdit (easyeditor) not importable here ({type(exc).__name__}: {exc}); "
                    "install it from its source tree to run this test")


def test_register_easyedit_is_idempotent_and_in_place():
    _easyeditor_or_skip()
    from easyeditor.editors import editor as editor_mod
    from easyeditor.editors.batch_editor import BatchEditor
    from easyeditor.util import alg_dict as alg_mod

    table = alg_mod.ALG_DICT
    first = register_easyedit()
    n = len(table)
    second = register_easyedit()
    assert alg_mod.ALG_DICT is table and len(table) == n
    assert editor_mod.ALG_DICT is table
    for name in REGISTERED_NAMES:
        assert first[name] is second[name]
        assert table[name].__self__ is first[name]
        assert BatchEditor.is_batchable_method(name)
    assert BatchEditor.is_batchable_method("MEMIT") and not BatchEditor.is_batchable_method("KN")
