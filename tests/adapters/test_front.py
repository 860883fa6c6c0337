"""EasyEdit's BaseEditor.edit shape without EasyEdit (adapters/front.py): metrics, modes, checks."""

from __future__ import annotations

import pytest
import torch

from betaedit_plugin.adapters.front import build_records
from betaedit_plugin.eval.scoring import encode_pair
from support.editing import REQS, assert_bit_equal, make_editor, params


def _reference(model, tok, prompt, target):
    """(argmax tokens, target tokens, sum log p(target | prompt)) from one unbatched float64 pass."""
    p_ids, t_ids = encode_pair(tok, prompt, target)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p_ids + t_ids])).logits[0].double()
    lp = torch.log_softmax(logits[len(p_ids) - 1: len(p_ids) - 1 + len(t_ids)], -1)
    return [int(x) for x in lp.argmax(-1)], t_ids, float(sum(lp[i, t] for i, t in enumerate(t_ids)))


def _accuracy(model, tok, prompt, target):
    argmax, t_ids, _ = _reference(model, tok, prompt, target)
    return sum(a == t for a, t in zip(argmax, t_ids)) / len(t_ids)


# settings under which the tiny model takes these edits (rewrite_acc 0 -> above 0), so that the
# post-edit metrics below differ from the pre-edit ones
STRONG = dict(fact_token="last", v_num_grad_steps=20, v_weight_decay=0.0, clamp_norm_factor=10.0, kl_factor=0.0,
              lambda1=0.1, lambda2=0.1)


def test_non_sequential_edit_restores_weights_and_state(tiny):
    ed = make_editor(tiny, **STRONG)
    before = params(ed.model)
    kwargs = dict(
        prompts=[REQS[1].prompt, REQS[2].prompt], target_new=["soccer", "English"],
        subject=["Michael Jordan", "Japan"], rephrase_prompts=["Michael Jordan is good at", "In Japan people speak"],
        locality_inputs={"neighborhood": {"prompt": ["Rome is the capital of", "Toyota produces"],
                                          "ground_truth": ["Italy", "cars"]}},
    )
    metrics, model = ed.edit(**kwargs, sequential_edit=False)
    assert model is ed.model and ed.step == 0
    assert_bit_equal(before, params(ed.model))
    assert [m["case_id"] for m in metrics] == [0, 1]
    # reference: each request written alone by a fresh editor of the same model and settings, its
    # metrics computed here from the logits (float64), before and after that edit
    records, reqs = build_records(kwargs["prompts"], kwargs["target_new"], kwargs["subject"],
                                  rephrase_prompts=kwargs["rephrase_prompts"], locality_inputs=kwargs["locality_inputs"])
    for m, rec, req in zip(metrics, records, reqs):
        ref = make_editor(tiny, **STRONG)
        loc = rec["locality"]["neighborhood"]
        pre_loc, _, _ = _reference(ref.model, ref.tok, loc["prompt"], loc["ground_truth"])
        _, _, pre_logp = _reference(ref.model, ref.tok, req.prompt, req.target_new)
        assert m["pre"]["rewrite_acc"] == [_accuracy(ref.model, ref.tok, req.prompt, req.target_new)]
        assert m["pre"]["rephrase_acc"] == [_accuracy(ref.model, ref.tok, rec["rephrase_prompt"], req.target_new)]
        assert m["pre"]["locality"]["neighborhood_output"] == [pre_loc]
        ref.apply([req])
        post_loc, _, _ = _reference(ref.model, ref.tok, loc["prompt"], loc["ground_truth"])
        _, _, post_logp = _reference(ref.model, ref.tok, req.prompt, req.target_new)
        assert post_logp > pre_logp + 1.0  # the edit raised p(target_new | prompt) ...
        assert m["post"]["rewrite_acc"][0] > m["pre"]["rewrite_acc"][0]  # ... and the metric saw it
        assert m["post"]["rewrite_acc"] == [_accuracy(ref.model, ref.tok, req.prompt, req.target_new)]
        assert m["post"]["rephrase_acc"] == [_accuracy(ref.model, ref.tok, rec["rephrase_prompt"], req.target_new)]
        assert m["post"]["locality"]["neighborhood_acc"] == [
            pytest.approx(sum(a == b for a, b in zip(pre_loc, post_loc)) / len(pre_loc))
        ]


def test_edit_checks_lengths_before_editing(tiny):
    ed = make_editor(tiny)
    with pytest.raises(ValueError, match="target_new has 1 entries but prompts has 2"):
        ed.edit(prompts=[REQS[0].prompt, REQS[1].prompt], target_new=["x"], subject=["a", "b"])
    assert ed.step == 0


def test_records_are_checked_before_any_edit():
    records, reqs = build_records("Toyota was founded in", "Germany", "Toyota", ground_truth="Japan",
                                  locality_inputs={"n": {"prompt": ["Rome is in"], "ground_truth": [["Italy"]]}})
    assert records[0]["locality"] == {"n": {"prompt": "Rome is in", "ground_truth": "Italy"}}
    assert reqs[0].locality_ground_truth == ("Italy",)
    with pytest.raises(ValueError, match="request 0: subject='Honda'"):
        build_records("Toyota was founded in", "Germany", "Honda")
    with pytest.raises(ValueError, match=r"locality_inputs\['n'\]"):
        build_records("Toyota was founded in", "Germany", "Toyota", locality_inputs={"n": {"prompt": ["x"]}})
