"""This package's editors through EasyEdit's own BaseEditor, on tiny models loaded by EasyEdit from a directory.

Covers ``BaseEditor.from_hparams`` for BetaEdit / AlphaEdit / MEMIT, ``edit(sequential_edit=True)``
and ``False``, ``batch_edit``, ``summary_metrics``, EasyEdit's built-in AlphaEdit beside this
package's, and EasyEdit's device conventions.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from betaedit_plugin import EditRequest
from betaedit_plugin.editor import BetaEditor
from betaedit_plugin.eval.scoring import predicted_target_tokens, token_agreement
from betaedit_plugin.models import load_model
from ee_support import ROWS, edit_kwargs, next_token, rewrite_accs, same_weights, tiny_hparams, weights

METHODS = ("BetaEdit", "AlphaEdit", "MEMIT")


def base_editor(easyedit, hp):
    return easyedit.BaseEditor.from_hparams(hp)


def test_from_hparams_dispatches_to_this_package(easyedit, tiny_checkpoint, tmp_path):
    from betaedit_plugin.adapters.easyedit import BetaEditExecutor

    for method, name in zip(METHODS, ("BetaEdit", "BE-AlphaEdit", "BE-MEMIT")):
        editor = base_editor(easyedit, tiny_hparams(method, tiny_checkpoint("llama"), str(tmp_path)))
        assert editor.alg_name == name
        assert isinstance(editor.apply_algo.__self__, BetaEditExecutor)
        assert editor.apply_algo.__self__ is easyedit.executors[name]
        assert type(editor.model).__name__ == "LlamaForCausalLM"


# One architecture per loader branch of EasyEdit's BaseEditor ('gpt', 'llama', 'qwen2'/'qwen3');
# tests/test_install.py loads local checkpoints of all five tiny architectures without EasyEdit.
@pytest.mark.parametrize("method, arch", [("BetaEdit", "llama"), ("AlphaEdit", "llama"), ("MEMIT", "llama"),
                                          ("BetaEdit", "gpt2"), ("BetaEdit", "qwen3")])
def test_sequential_edit_flips_answers_and_keeps_them(easyedit, tiny_checkpoint, tmp_path, method, arch):
    rows = ROWS[:3]
    editor = base_editor(easyedit, tiny_hparams(method, tiny_checkpoint(arch), str(tmp_path)))
    before = [next_token(editor.model, editor.tok, r[0]) for r in rows]
    metrics, model, _ = editor.edit(**edit_kwargs(rows), sequential_edit=True, verbose=False)

    assert rewrite_accs(metrics, "pre") == [0.0] * 3
    assert rewrite_accs(metrics, "post") == [1.0] * 3
    assert model is editor.model
    after = [next_token(model, editor.tok, r[0]) for r in rows]
    assert after == [" " + r[2] for r in rows] != before  # all three still hold after the third edit
    assert easyedit.executors[editor.alg_name].editor_for(model).step == 3
    # locality: EasyEdit scores each request right after its own edit; the same edits by a BetaEditor on a
    # fresh copy of the model, scored by this package, agree with it
    ours = BetaEditor(*load_model(tiny_checkpoint(arch)), tiny_hparams(method, tiny_checkpoint(arch), str(tmp_path)))
    for m, r in zip(metrics, rows):
        pre_tokens = predicted_target_tokens(ours.model, ours.tok, r[5], r[6])[0]
        ours.apply([EditRequest(r[0], r[1], r[2])])
        post_tokens = predicted_target_tokens(ours.model, ours.tok, r[5], r[6])[0]
        assert m["post"]["locality"]["neighborhood_acc"] == [pytest.approx(token_agreement(pre_tokens, post_tokens))]


def test_non_sequential_edit_restores_weights_and_history(easyedit, tiny_checkpoint, tmp_path):
    rows = ROWS[:3]
    editor = base_editor(easyedit, tiny_hparams("BetaEdit", tiny_checkpoint("llama"), str(tmp_path)))
    original = weights(editor.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics, _, _ = editor.edit(**edit_kwargs(rows), sequential_edit=False, verbose=False)
    rolled_back = [w for w in caught if "rolled back by one step" in str(w.message)]
    assert len(rolled_back) == 2  # at the second and third call EasyEdit had restored the weights

    assert rewrite_accs(metrics, "post") == [1.0] * 3  # each edit held right after it was made
    assert same_weights(weights(editor.model), original)  # ... and EasyEdit restored the model after each
    assert all(next_token(editor.model, editor.tok, r[0]) != " " + r[2] for r in rows)
    executor = easyedit.executors["BetaEdit"]
    assert executor.editor_for(editor.model).step == 1 and executor.weights_status(editor.model) == "restored"  # rolled back at the next call


def test_batch_edit_writes_each_batch_as_one_step(easyedit, tiny_checkpoint, tmp_path):
    hp = tiny_hparams("BetaEdit", tiny_checkpoint("llama"), str(tmp_path), batch_size=2)
    editor = base_editor(easyedit, hp)
    calls, apply = [], editor.apply_algo

    def counting(model, tok, requests, hparams, **kwargs):
        calls.append(len(requests))
        return apply(model, tok, requests, hparams, **kwargs)

    editor.apply_algo = counting
    metrics, model, _ = editor.batch_edit(**edit_kwargs(ROWS), sequential_edit=True, verbose=False)
    assert calls == [2, 2]  # EasyEdit hands over two batches of two
    assert len(metrics) == 4
    assert rewrite_accs(metrics, "pre") == [0.0] * 4
    assert rewrite_accs(metrics, "post") == [1.0] * 4
    assert easyedit.executors["BetaEdit"].editor_for(model).step == 4  # edits written so far
    assert [next_token(model, editor.tok, r[0]) for r in ROWS] == [" " + r[2] for r in ROWS]


def test_summary_metrics_on_the_results(easyedit, tiny_checkpoint, tmp_path, capsys):
    editor = base_editor(easyedit, tiny_hparams("AlphaEdit", tiny_checkpoint("llama"), str(tmp_path / "stats")))
    metrics, _, _ = editor.edit(**edit_kwargs(ROWS[:2]), sequential_edit=True, verbose=False)
    capsys.readouterr()
    easyedit.summary_metrics(metrics)
    printed = capsys.readouterr().out
    assert "Metrics Summary" in printed and "rewrite_acc" in printed and "neighborhood_acc" in printed
    saved = json.loads((tmp_path / "logs" / "results.json").read_text())  # EasyEdit writes it into ./logs
    assert len(saved) == 2 and [s["post"]["rewrite_acc"][0] for s in saved] == [1.0, 1.0]
    assert [s["requested_rewrite"]["target_new"] for s in saved] == [r[2] for r in ROWS[:2]]


# EasyEdit's AlphaEdit refuses fact_token 'last' ("This is definitely bugged") and needs a layer
# index for v_loss_layer. With the subject at the end of the prompt, 'subject_last' is the last
# prompt token, where the tiny model takes an edit.
SIDE_BY_SIDE = dict(fact_token="subject_last", v_loss_layer=3)
SIDE_ROWS = [
    ("The mother tongue of Danielle Darrieux", "Danielle Darrieux", "German", "French",
     "The language of Danielle Darrieux", "The mother tongue of Michel Rocard", "French"),
    ("The sport played by Michael Jordan", "Michael Jordan", "French", "basketball",
     "The sport of Michael Jordan", "The sport played by Lionel Messi", "soccer"),
]


def _easyedit_alphaedit_hparams(easyedit, model_name, p_loc, stats_dir):
    from ee_support import TINY_COMMON, TINY_METHOD

    common = {k: v for k, v in TINY_COMMON.items() if k not in ("mom2_max_length", "context_template_length_params")}
    common.update(SIDE_BY_SIDE)
    return easyedit.AlphaEditHyperParams(
        **common, **TINY_METHOD["AlphaEdit"], alg_name="AlphaEdit", model_name=model_name, device="cpu",
        layer_selection="all", mom2_adjustment=True, mom2_update_weight=1.0, mom2_dataset="wikipedia",
        mom2_dtype="float32", stats_dir=stats_dir, P_loc=p_loc,
        rewrite_module_tmp="model.layers.{}.mlp.down_proj", layer_module_tmp="model.layers.{}",
        mlp_module_tmp="model.layers.{}.mlp", attn_module_tmp="model.layers.{}.self_attn",
        ln_f_module="model.norm", lm_head_module="lm_head",
    )


def test_easyedits_alphaedit_and_ours_side_by_side(easyedit, tiny_checkpoint, tmp_path):
    """Two editors in one process, no shared state: ours edits exactly as it does alone."""
    from betaedit_plugin.linalg import nullspace_projector
    from betaedit_plugin.models.layout import ModelLayout
    from betaedit_plugin.covariance import layer_second_moments

    ckpt = tiny_checkpoint("llama")
    ours_hp = tiny_hparams("AlphaEdit", ckpt, str(tmp_path / "stats"), **SIDE_BY_SIDE)
    # EasyEdit's AlphaEdit reads its projector from P_loc (it would download Wikipedia to compute one):
    # give it the projector of the same C0 this package uses.
    ref = base_editor(easyedit, ours_hp)
    layout = ModelLayout.from_model(ref.model)
    c0 = layer_second_moments(ref.model, ref.tok, layout, ours_hp.layers, corpus="wiki_vital", n_samples=50,
                              max_length=32, progress=False, cache_dir=tmp_path / "stats")
    P = torch.stack([nullspace_projector(c0[l], threshold=ours_hp.nullspace_threshold).float() for l in ours_hp.layers])
    torch.save(P, tmp_path / "P.pt")
    alpha_main = __import__("sys").modules["easyeditor.models.alphaedit.AlphaEdit_main"]
    alpha_main.P_loaded, alpha_main.cache_c_new = False, False  # EasyEdit keeps these in module globals

    theirs = base_editor(easyedit, _easyedit_alphaedit_hparams(easyedit, ckpt, str(tmp_path / "P.pt"), str(tmp_path)))
    ours = base_editor(easyedit, ours_hp)
    assert theirs.apply_algo is easyedit.ALG_DICT["AlphaEdit"] is not ours.apply_algo
    assert ours.alg_name == "BE-AlphaEdit"

    rows = SIDE_ROWS
    results = {"theirs": [], "ours": []}
    for row in rows:  # interleaved: EasyEdit's AlphaEdit, then ours, edit after edit
        for name, editor in (("theirs", theirs), ("ours", ours)):
            metrics, _, _ = editor.edit(**edit_kwargs([row]), sequential_edit=True, verbose=False)
            results[name] += rewrite_accs(metrics, "post")
    ref_metrics, _, _ = ref.edit(**edit_kwargs(rows), sequential_edit=True, verbose=False)  # ours, alone

    assert results["ours"] == rewrite_accs(ref_metrics, "post") == [1.0, 1.0]
    assert same_weights(weights(ours.model), weights(ref.model))
    assert results["theirs"] == [1.0, 1.0]  # EasyEdit's own AlphaEdit edited its copy as well
    assert not same_weights(weights(theirs.model), weights(ours.model))
    assert easyedit.executors["BE-AlphaEdit"].editor_for(theirs.model) is None
    assert easyedit.executors["BE-AlphaEdit"].editor_for(ours.model).step == 2


@pytest.mark.parametrize("device, expected", [(0, "cuda:0"), ("0", "cuda:0"),
                                              ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("cpu", "cpu")])
def test_device_conventions_match_easyedits(easyedit, tmp_path, device, expected):
    import yaml

    from betaedit_plugin import load_hparams
    from betaedit_plugin.models.devices import as_device
    from easyeditor.util.device import normalize_device

    path = tmp_path / "hp.yaml"
    path.write_text(yaml.safe_dump({"alg_name": "BetaEdit", "model_name": "x", "layers": [1], "device": device}))
    hp = load_hparams(path)
    assert hp.device == device  # kept as written: EasyEdit interprets it
    assert str(normalize_device(hp.device)) == expected
    assert str(as_device(hp.device)) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is not available")
@pytest.mark.parametrize("device", [0, "cuda"])
def test_cuda_device_without_cuda_fails_clearly(easyedit, tiny_checkpoint, tmp_path, device):
    from betaedit_plugin import BetaEditor, DeviceError

    hp = tiny_hparams("BetaEdit", tiny_checkpoint("llama"), str(tmp_path), device=device)
    with pytest.raises((AssertionError, RuntimeError), match="(?i)cuda"):
        base_editor(easyedit, hp)
    with pytest.raises(DeviceError, match=r"hparams.device=.*: CUDA is not available on this machine"):
        BetaEditor.from_hparams(hp)
