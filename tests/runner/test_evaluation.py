"""Which edits an evaluation point scores: every edit before editing and at the end, a fixed seeded
sample of ``eval.max_cases`` in between, and the sample at the end too with ``eval.sample_final``."""

from __future__ import annotations

import math

import pytest
import torch

from betaedit_plugin.eval.metrics import token_scores
from betaedit_plugin.runner import eval_sample, run_experiment
from betaedit_plugin.runner.identity import config_hash, identity_difference

from test_journal import _cfg, _metrics  # tests/runner is on sys.path (rootdir conftest, no packages)


def test_intermediate_points_score_the_first_of_one_seeded_permutation():
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(7)).tolist()
    assert eval_sample(6, 3, 7, 10, final=False) == sorted([i for i in perm if i < 6][:3])
    assert eval_sample(10, 3, 7, 10, final=False) == sorted(perm[:3])
    other = torch.randperm(10, generator=torch.Generator().manual_seed(1)).tolist()
    assert sorted(other[:3]) != sorted(perm[:3]) and eval_sample(10, 3, 1, 10, final=False) == sorted(other[:3])
    assert eval_sample(2, 3, 7, 10, final=False) == [0, 1]  # fewer edits than max_cases: all of them
    assert eval_sample(10, 3, 7, 10, final=True) == list(range(10))
    assert eval_sample(10, None, 7, 10, final=False) == list(range(10))


def test_sample_final_scores_the_sample_at_the_end_and_is_its_own_run(tmp_path):
    every = run_experiment(_cfg(tmp_path, tmp_path / "every", "method=memit", "eval.max_cases=2"))
    sampled = run_experiment(_cfg(tmp_path, tmp_path / "sampled", "method=memit", "eval.max_cases=2",
                                  "eval.sample_final=true"))
    shape = [(p["step"], p["n_scored"], p["sampled"]) for p in every["evals"]]
    assert shape == [(0, 5, False), (2, 2, False), (4, 2, True), (5, 5, False)]
    assert [(p["step"], p["n_scored"], p["sampled"]) for p in sampled["evals"]] == shape[:3] + [(5, 2, True)]
    for a, b in zip(every["evals"][:3], sampled["evals"][:3]):  # the same points up to the end
        assert _metrics(a) == _metrics(b), a["step"]
        assert (a["scored_cases"], a["outcomes"]) == (b["scored_cases"], b["outcomes"]), a["step"]
    # each point keeps every comparison's outcome (what a paired comparison of two runs reads), one per
    # scored case here (one rephrase and one neighbourhood prompt per case), their mean the metric;
    # token accuracies and token locality: each prompt's tokens, the mean of their shares the metric
    # the perplexity: each held-out window's summed NLL and tokens, whose ratio of sums gives the ppl
    for p in every["evals"] + sampled["evals"]:
        assert sorted(p["outcomes"]) == ["efficacy", "generality", "locality_acc", "ppl", "rephrase_acc", "rewrite_acc",
                                         "specificity"]
        windows = p["outcomes"].pop("ppl")
        assert sum(n for _, n in windows) == p["ppl_tokens"]
        assert math.exp(sum(t for t, _ in windows) / p["ppl_tokens"]) == pytest.approx(p["ppl"], rel=1e-12)
        for metric, won in p["outcomes"].items():
            values = token_scores(won) if metric.endswith("_acc") else [int(c) for c in won]
            assert len(values) == p["n_scored"] and sum(values) / len(values) == pytest.approx(p[metric], rel=1e-12), \
                (p["step"], metric)
    digest = {p["step"]: p["scored_cases"] for p in every["evals"]}
    assert digest[0] == digest[5] != digest[2]  # all five cases; the first two
    # its own run: another identity; sample_final=false is the identity of runs written before the key
    assert identity_difference(every["identity"], sampled["identity"])[0] == "eval.sample_final"
    old = dict(every["identity"], eval={k: v for k, v in every["identity"]["eval"].items() if k != "sample_final"})
    assert identity_difference(old, every["identity"]) is None and config_hash(old) == config_hash(every["identity"])
