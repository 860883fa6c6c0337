"""Data loaders: CounterFact and ZsRE as typed EditRequests, bad input named."""

from __future__ import annotations

import gzip
import json

import pytest

from betaedit_plugin.data import DatasetError, load_counterfact, load_dataset, load_zsre
from betaedit_plugin.errors import BetaEditError
from betaedit_plugin.requests import EditRequest


def test_counterfact_first_case_matches_the_file():
    reqs = load_counterfact("edit", n=3)
    assert len(reqs) == 3 and all(isinstance(r, EditRequest) for r in reqs)
    r = reqs[0]
    assert r.case_id == 0
    assert r.prompt == "The mother tongue of Danielle Darrieux is"
    assert (r.subject, r.target_new, r.ground_truth) == ("Danielle Darrieux", "English", "French")
    assert r.rephrase_prompts == ("Where Danielle Darrieux is from, people speak the language of",)
    assert r.locality_prompts == ("Michel Rocard is a native speaker of",)
    assert r.locality_ground_truth == ("French",)
    assert r.template == "The mother tongue of {} is"


@pytest.mark.parametrize("split, size", [("edit", 10000), ("train", 10000), ("val", 1919)])
def test_counterfact_splits_are_complete_and_disjoint(split, size):
    reqs = load_counterfact(split)
    assert len(reqs) == size
    assert len({r.case_id for r in reqs}) == size


def test_counterfact_splits_cover_all_cases_once():
    ids = [r.case_id for s in ("edit", "train", "val") for r in load_counterfact(s)]
    assert sorted(ids) == list(range(21919))


def test_zsre_maps_the_mend_schema():
    r = load_zsre("eval", n=1)[0]
    assert r.prompt == "When was the inception of IAAF Combined Events Challenge?"
    assert r.subject == "IAAF Combined Events Challenge"
    assert (r.target_new, r.ground_truth) == ("2006", "1998")
    assert r.rephrase_prompts == ("When was the IAAF Combined Events Challenge launched?",)
    # the "nq question: " prefix is stripped from the locality prompt
    assert r.locality_prompts == ("what is the name of the last episode of spongebob",)
    assert r.locality_ground_truth == ("The String",)
    with pytest.warns(UserWarning, match=r"skipped 29 invalid record\(s\) \(case_ids \[112, 154, "):
        assert len(load_zsre("eval", skip_invalid=True)) == 1037 - 29  # alt equal to the true answer


def test_invalid_records_are_an_error_that_lists_them():
    # the bundled ZsRE train split has 19: 17 whose alt is the true answer (101, 115, 157, ...) and
    # two with an empty alt (534, 723)
    with pytest.raises(DatasetError, match=r"19 invalid record\(s\): record 101: target_new='Carabidae' equals "
                                           r"ground_truth .*; record 115: .*; record 157: .*; and 16 more; .*"
                                           r"skip_invalid=True") as info:
        load_zsre("train")
    assert isinstance(info.value, BetaEditError) and "\n" not in str(info.value)
    # only the first n records count: 14 invalid ones are among the first 600 (723 is not)
    with pytest.raises(DatasetError, match=r"first 600 records\): 14 invalid record\(s\): record 101"):
        load_zsre("train", n=600)
    assert [r.case_id for r in load_zsre("train", n=101)][-1] == 100


def test_skip_invalid_leaves_them_out_with_a_warning_and_names_them():
    with pytest.warns(UserWarning, match=r"skipped 19 invalid record\(s\) \(case_ids \[101, 115, "):
        reqs = load_zsre("train", skip_invalid=True)
    assert len(reqs) == 998 - 17 and {101, 534, 723}.isdisjoint(r.case_id for r in reqs)
    assert [(b.index, b.case_id) for b in reqs.skipped][:2] == [(101, 101), (115, 115)]
    assert "target_new=''" in reqs.skipped[11].reason and reqs.skipped[11].case_id == 534
    # the next valid records take the skipped ones' place
    with pytest.warns(UserWarning, match="skipped 13"):
        first = load_zsre("train", n=536, skip_invalid=True)
    assert len(first) == 536 and first[-1].case_id == 548 and [b.case_id for b in first.skipped][-2:] == [534, 541]


def test_a_target_equal_to_the_true_one_is_an_invalid_record(tmp_path):
    """Such an edit changes nothing and its efficacy P(new) > P(true) cannot be met: listed like the
    other invalid records (any format), or skipped with skip_invalid."""
    records = [{"prompt": f"{s} speaks", "subject": s, "target_new": new, "ground_truth": true, "case_id": i}
               for i, (s, new, true) in enumerate([("Ann", "English", "French"), ("Bob", "French", " French"),
                                                   ("Cy", "Dutch", "German")])]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match=r"1 invalid record\(s\): record 1: target_new='French' equals "
                                           r"ground_truth \(case_id=1\): the edit changes nothing .*give another target_new"):
        load_counterfact(str(path))
    with pytest.warns(UserWarning, match=r"skipped 1 invalid record\(s\) \(case_ids \[1\]\)"):
        assert [r.case_id for r in load_counterfact(str(path), skip_invalid=True)] == [0, 2]
    memit = [{"case_id": 7, "requested_rewrite": {"prompt": "{} speaks", "subject": "Ann", "target_new": {"str": "French"},
                                                   "target_true": {"str": "French"}}}]
    (tmp_path / "memit.json").write_text(json.dumps(memit))
    with pytest.raises(DatasetError, match=r"record 0: target_new='French' equals ground_truth \(case_id=7\)"):
        load_counterfact(str(tmp_path / "memit.json"))


@pytest.mark.parametrize("name", ["cases.jsonl", "cases.jsonl.gz", "cases.json"])
def test_json_lines_files_are_read_one_record_a_line(tmp_path, name):
    records = load_counterfact("edit", n=3)
    lines = [{"prompt": r.prompt, "subject": r.subject, "target_new": r.target_new, "ground_truth": r.ground_truth,
              "case_id": r.case_id} for r in records]
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n"  # a blank line at the end
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as stream:
            stream.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    got = load_counterfact(str(path))
    assert [(r.prompt, r.target_new, r.case_id) for r in got] == [(r.prompt, r.target_new, r.case_id) for r in records]
    assert [r.case_id for r in load_dataset("counterfact", split=str(path), n=2)] == [0, 1]


def test_a_bad_json_lines_file_names_the_line(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DatasetError, match=r"cases.jsonl' is unreadable \(JSONDecodeError: line 2: Expecting value"):
        load_counterfact(str(path))
    path = tmp_path / "cases.json"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DatasetError, match=r"Extra data: .* as a JSON list or as JSON Lines \(line 2: Expecting value"):
        load_counterfact(str(path))


def test_invalid_records_listed_are_capped_with_the_count(tmp_path):
    records = [{"prompt": f"p{i} is", "subject": "nobody", "target_new": "x", "ground_truth": "y", "case_id": 10 + i}
               for i in range(5)]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match=r"5 invalid record\(s\): record 0: .*; record 2: [^;]*; and 2 more"):
        load_counterfact(str(path))
    with pytest.raises(ValueError, match=r"n=1: cf.json has only 0 valid records; ask for at most 0"):
        load_counterfact(str(path), n=1, skip_invalid=True)


def test_load_dataset_by_name_and_unknown_name():
    assert load_dataset("counterfact", n=2)[1].case_id == 1
    assert len(load_dataset("zsre", n=4)) == 4
    with pytest.raises(KeyError, match="Did you mean 'counterfact'"):
        load_dataset("counterfakt", n=1)
    with pytest.raises(KeyError, match="Did you mean 'edit'"):
        load_counterfact("edti")


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_bad_n_is_named(n):
    with pytest.raises(ValueError, match=r"n="):
        load_counterfact("val", n=n)


def test_n_beyond_the_data_is_refused():
    with pytest.raises(ValueError, match=r"n=2000: .* has only 1919"):
        load_counterfact("val", n=2000)


def test_unreadable_and_malformed_files(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DatasetError, match="does not exist"):
        load_counterfact(str(missing))
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="unreadable"):
        load_counterfact(str(broken))
    not_list = tmp_path / "obj.json"
    not_list.write_text(json.dumps({"a": 1}))
    with pytest.raises(DatasetError, match="expected a JSON list"):
        load_zsre(str(not_list))
    no_field = tmp_path / "nofield.json.gz"
    with gzip.open(no_field, "wt") as f:
        json.dump([{"prompt": "x", "subject": "x"}], f)
    with pytest.raises(DatasetError, match="record 0 has no field 'target_new'"):
        load_counterfact(str(no_field))
