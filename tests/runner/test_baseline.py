"""The unedited model's evaluation, cached: a second run with the same weights, requests and eval
settings reads its locality reference and step-0 point instead of scoring the model again, and
gets the same numbers; anything else it depends on is another key; a damaged file is recomputed."""

from __future__ import annotations

import json

import pytest
import torch

from betaedit_plugin.runner import run_experiment
from betaedit_plugin.runner.baseline import BaselineCache, baseline_key

from test_journal import _cfg, _metrics  # tests/runner is on sys.path (rootdir conftest, no packages)


def _no_scoring(*args, **kwargs):
    raise AssertionError("the unedited model was scored again")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BETAEDIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "baseline"


def test_a_second_run_reads_the_baseline_and_gets_the_same_numbers(tmp_path, cache, monkeypatch):
    first = run_experiment(_cfg(tmp_path, tmp_path / "first", "method=memit"))
    (path,) = cache.glob("*.json")
    assert "baseline_cached" not in first["evals"][0]
    stored = json.loads(path.read_text())["content"]
    assert stored["point"]["efficacy"] == first["evals"][0]["efficacy"] and len(stored["locality_ref"]) == 5

    import betaedit_plugin.eval.metrics as metrics

    monkeypatch.setattr(metrics, "locality_reference", _no_scoring)  # the reference must come from the cache
    second = run_experiment(_cfg(tmp_path, tmp_path / "second", "method=alphaedit"))
    assert second["evals"][0]["baseline_cached"] is True
    assert _metrics(second["evals"][0]) == _metrics(first["evals"][0])
    assert [p["step"] for p in second["evals"]] == [0, 2, 4, 5]  # later points are scored as always
    monkeypatch.undo()

    # the same AlphaEdit run without the cache: every point equal (the locality reference was the same)
    monkeypatch.setenv("BETAEDIT_CACHE", str(tmp_path / "cache"))
    plain = run_experiment(_cfg(tmp_path, tmp_path / "plain", "method=alphaedit", "baseline_cache=false"))
    assert "baseline_cached" not in plain["evals"][0]
    for a, b in zip(plain["evals"], second["evals"]):
        assert _metrics(a) == _metrics(b), a["step"]
    assert len(list(cache.glob("*.json"))) == 1  # baseline_cache=false neither reads nor writes


def test_other_eval_settings_requests_or_weights_are_another_key(tmp_path, cache, tiny):
    run_experiment(_cfg(tmp_path, tmp_path / "a", "method=memit", "num_edits=2"))
    run_experiment(_cfg(tmp_path, tmp_path / "b", "method=memit", "num_edits=2", "eval.batch_size=3"))
    run_experiment(_cfg(tmp_path, tmp_path / "c", "method=memit", "num_edits=1"))
    assert len(list(cache.glob("*.json"))) == 3

    model, _ = tiny("llama")
    settings = {"batch_size": 4, "max_cases": None}
    key = baseline_key(model, [], settings, 0)
    assert baseline_key(model, [], settings, 0) == key
    assert baseline_key(model, [], dict(settings, batch_size=5), 0) != key
    assert baseline_key(model, [], settings, 1) != key
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert baseline_key(model, [], settings, 0) != key


def test_a_damaged_cache_file_is_ignored_with_a_warning_and_rewritten(tmp_path, cache):
    first = run_experiment(_cfg(tmp_path, tmp_path / "first", "method=memit", "num_edits=2"))
    (path,) = cache.glob("*.json")
    stored = json.loads(path.read_text())
    stored["content"]["point"]["efficacy"] = 0.123  # a changed number, its digest left as it was
    path.write_text(json.dumps(stored))
    with pytest.warns(UserWarning, match=r"ignoring the baseline cache file .*sha256 does not match"):
        again = run_experiment(_cfg(tmp_path, tmp_path / "again", "method=memit", "num_edits=2"))
    assert "baseline_cached" not in again["evals"][0]  # scored again
    assert _metrics(again["evals"][0]) == _metrics(first["evals"][0])
    reread = BaselineCache.open(cache, path.stem)
    assert reread.point["efficacy"] == first["evals"][0]["efficacy"]  # rewritten whole


def test_a_cache_that_cannot_be_written_is_a_warning_and_the_run_goes_on(tmp_path, cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("a file where the baseline folder would be")
    with pytest.warns(UserWarning, match=r"could not write the baseline cache file .*the run goes on without it"):
        r = run_experiment(_cfg(tmp_path, tmp_path / "out", "method=memit", "num_edits=2"))
    assert r["status"] == "complete" and "baseline_cached" not in r["evals"][0]
    assert cache.read_text() == "a file where the baseline folder would be"
