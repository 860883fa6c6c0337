"""Data files are read by content: CounterFact in EasyEdit's or MEMIT's format, ZsRE in MEND's; anything else is named."""

from __future__ import annotations

import json

import pytest

from betaedit_plugin.data import (
    DatasetError,
    detect_format,
    load_counterfact,
    load_edit_file,
    load_zsre,
    to_memit_counterfact,
)

# Two records in ROME/MEMIT's counterfact.json layout (facts from the bundled CounterFact, case 0 and 1).
MEMIT_RECORDS = [
    {
        "case_id": 0,
        "pararel_idx": 2796,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": "P103",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"},
            "subject": "Danielle Darrieux",
        },
        "paraphrase_prompts": ["Where Danielle Darrieux is from, people speak the language of",
                               "Danielle Darrieux was born in a place where people speak"],
        "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Jacques Chaban-Delmas is a native speaker of"],
        "attribute_prompts": ["J. R. R. Tolkien is a native speaker of"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"],
    },
    {
        "case_id": 1,
        "requested_rewrite": {
            "prompt": "{} is located in the continent of",
            "target_new": {"str": "Antarctica", "id": "Q51"},
            "target_true": {"str": "Asia", "id": "Q48"},
            "subject": "Autonomous University of Madrid",
        },
        "paraphrase_prompts": ["Autonomous University of Madrid is located in the continent"],
        "neighborhood_prompts": ["Kuala Lumpur is located in the continent of"],
    },
]


def write(tmp_path, name, records):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_memit_counterfact_is_read_by_content(tmp_path):
    path = write(tmp_path, "counterfact.json", MEMIT_RECORDS)
    reqs = load_counterfact(str(path))
    r = reqs[0]
    assert r.prompt == "The mother tongue of Danielle Darrieux is" and r.template == "The mother tongue of {} is"
    assert (r.subject, r.target_new, r.ground_truth, r.case_id) == ("Danielle Darrieux", "English", "French", 0)
    assert len(r.rephrase_prompts) == 2
    # MEMIT's convention: every neighbourhood prompt should still answer target_true
    assert r.locality_prompts == ("Michel Rocard is a native speaker of", "Jacques Chaban-Delmas is a native speaker of")
    assert r.locality_ground_truth == ("French", "French")
    assert reqs[1].prompt == "Autonomous University of Madrid is located in the continent of"
    assert [x.case_id for x in load_edit_file(path, n=1)] == [0]


def test_bundled_counterfact_round_trips_through_memit_format(tmp_path):
    reqs = load_counterfact("edit", n=20)
    path = write(tmp_path, "multi_counterfact.json", to_memit_counterfact(reqs))
    assert detect_format(json.loads(path.read_text())) == "counterfact-memit"
    assert load_counterfact(path) == reqs


def test_zsre_file_is_recognised_and_refused_as_counterfact(tmp_path):
    records = [{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
                "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"],
                "rephrase": "What university did Watts Humphrey take part in?",
                "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving"}]
    path = write(tmp_path, "zsre_mend_eval.json", records)
    (r,) = load_edit_file(path)
    assert (r.prompt, r.target_new, r.ground_truth) == (records[0]["src"], "University of Michigan", "Illinois Institute of Technology")
    assert r.locality_prompts == ("who played desmond doss father in hacksaw ridge",)
    with pytest.raises(DatasetError, match=r"holds zsre records .* load_zsre\(\)"):
        load_counterfact(path)
    cf = write(tmp_path, "cf.json", MEMIT_RECORDS)
    with pytest.raises(DatasetError, match=r"holds counterfact records .* load_counterfact\(\)"):
        load_zsre(cf)


def test_unknown_format_lists_the_accepted_ones(tmp_path):
    path = write(tmp_path, "qa.json", [{"question": "Who?", "answer": "Me"}])
    with pytest.raises(DatasetError, match=r"record 0 has fields \['answer', 'question'\].*requested_rewrite.*src"):
        load_edit_file(path)
    with pytest.raises(DatasetError, match="holds no records"):
        load_counterfact(write(tmp_path, "empty.json", []))


def test_memit_record_with_a_missing_field_is_named(tmp_path):
    broken = json.loads(json.dumps(MEMIT_RECORDS))
    del broken[1]["requested_rewrite"]["target_true"]
    with pytest.raises(DatasetError, match=r"record 1 has no field 'requested_rewrite.target_true'"):
        load_counterfact(write(tmp_path, "cf.json", broken))
    broken = json.loads(json.dumps(MEMIT_RECORDS))
    broken[0]["requested_rewrite"]["prompt"] = "The mother tongue of Danielle Darrieux is"
    with pytest.raises(DatasetError, match=r"record 0: requested_rewrite.prompt=.* has no '\{\}'"):
        load_counterfact(write(tmp_path, "cf2.json", broken))


def test_runner_reads_a_memit_file(tmp_path):
    from betaedit_plugin.run import load_requests

    path = write(tmp_path, "counterfact.json", MEMIT_RECORDS)
    reqs = load_requests({"data": {"name": "counterfact", "split": "edit", "path": str(path)}, "num_edits": 2})
    assert [r.target_new for r in reqs] == ["English", "Antarctica"]
