"""EasyEdit's BaseEditor.edit shape without EasyEdit (adapters/front.py): metrics, modes, checks."""

from __future__ import annotations

import pytest

from betaedit_plugin import EditRequest
from betaedit_plugin.adapters.front import build_records, edit
from betaedit_plugin.eval.scoring import target_token_accuracy
from support.editing import REQS, assert_bit_equal, make_editor, params


STRONG = dict(fact_token="last", v_num_grad_steps=20, v_lr=0.5)  # edits that flip the tiny model's answers


def test_non_sequential_edit_restores_weights_and_state(tiny):
    ed = make_editor(tiny, **STRONG)
    before = params(ed.model)
    prompts, targets, subjects = [REQS[1].prompt, REQS[2].prompt], ["soccer", "English"], ["Michael Jordan", "Japan"]
    metrics, model = edit(
        ed, prompts=prompts, target_new=targets,
        subject=subjects, rephrase_prompts=["Michael Jordan is good at", "In Japan people speak"],
        locality_inputs={"neighborhood": {"prompt": ["Rome is the capital of", "Toyota produces"],
                                          "ground_truth": ["Italy", "cars"]}},
        sequential_edit=False,
    )
    assert model is ed.model and ed.step == 0
    assert_bit_equal(before, params(ed.model))
    assert [m["case_id"] for m in metrics] == [0, 1]
    for i, m in enumerate(metrics):
        assert set(m["pre"]) >= {"rewrite_acc", "rephrase_acc", "locality"}
        assert len(m["post"]["locality"]["neighborhood_acc"]) == 1
        # the same edit alone on a fresh copy of the model: its score before and after is what edit() reported
        ref = make_editor(tiny, **STRONG)
        assert m["pre"]["rewrite_acc"] == [target_token_accuracy(ref.model, ref.tok, prompts[i], targets[i])]
        ref.apply([EditRequest(prompts[i], subjects[i], targets[i], case_id=i)])
        assert m["post"]["rewrite_acc"] == [target_token_accuracy(ref.model, ref.tok, prompts[i], targets[i])]
    assert [m["post"]["rewrite_acc"] for m in metrics] != [m["pre"]["rewrite_acc"] for m in metrics]


def test_edit_checks_lengths_before_editing(tiny):
    ed = make_editor(tiny)
    with pytest.raises(ValueError, match="target_new has 1 entries but prompts has 2"):
        edit(ed, prompts=[REQS[0].prompt, REQS[1].prompt], target_new=["x"], subject=["a", "b"])
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
