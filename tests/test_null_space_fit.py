"""results/null_space_fit.py: the shares of key energy inside null(C0) against float64 numpy
references, and the spread sample of the topic-ordered C0 corpus."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from support.runs import results_script

ROOT = Path(__file__).resolve().parents[1]


def _cov(rng, d, scale):
    x = rng.standard_normal((200, d)) * scale  # keys with a spectrum spread around the threshold
    return torch.from_numpy(x.T @ x / 200)


def _share(cov, other, threshold):
    w, v = np.linalg.eigh(cov)
    u = v[:, w < threshold]
    return u.shape[1], float(np.trace(u.T @ other @ u) / np.trace(other))


def test_the_table_matches_float64_references():
    nsf = results_script("null_space_fit")
    rng = np.random.default_rng(0)
    scale = np.geomspace(0.03, 0.5, 8)  # eigenvalues from about 1e-3 to 0.25
    covs = {"first 4": {1: _cov(rng, 8, scale), 2: _cov(rng, 8, scale[::-1])},
            "spread 4": {1: _cov(rng, 8, scale), 2: _cov(rng, 8, scale)}}
    held = {1: _cov(rng, 8, scale), 2: _cov(rng, 8, scale)}
    lines = nsf.null_space_table(covs, held, [0.005, 0.05], 64, 32)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ") and line[2].isdigit()]
    first, sweep = rows[:4], rows[4:]
    assert [(r[0], r[1]) for r in first] == [("1", "first 4"), ("1", "spread 4"), ("2", "first 4"), ("2", "spread 4")]
    for r in first:
        c0 = covs[r[1]][int(r[0])].numpy()
        dim, held_share = _share(c0, held[int(r[0])].numpy(), nsf.THRESHOLD)
        assert int(r[2]) == dim and float(r[3]) == pytest.approx(held_share, rel=5e-3)
        for cell, other in zip(r[4:], covs):
            assert float(cell) == pytest.approx(_share(c0, covs[other][int(r[0])].numpy(), nsf.THRESHOLD)[1], rel=5e-3)
    assert [(r[0], r[1]) for r in sweep] == [("1", "0.005"), ("1", "0.05"), ("2", "0.005"), ("2", "0.05")]
    for r in sweep:
        c0 = covs["first 4"][int(r[0])].numpy()
        dim, held_share = _share(c0, held[int(r[0])].numpy(), float(r[1]))
        assert int(r[2]) == dim and float(r[3]) == pytest.approx(held_share, rel=5e-3)
        assert float(r[4]) == pytest.approx(_share(c0, c0, float(r[1]))[1], rel=5e-3)
    assert int(sweep[0][2]) < int(sweep[1][2])  # a higher threshold, a larger null space


def test_a_spread_sample_covers_every_topic_of_the_corpus_where_its_first_texts_do_not(tmp_path):
    from betaedit_plugin.covariance.corpus import load_corpus

    nsf = results_script("null_space_fit")
    path = nsf.spread_corpus(1000, tmp_path / "spread.txt")
    spread = path.read_text(encoding="utf-8").splitlines()
    with pytest.warns(UserWarning, match="has only 10033 non-empty lines"):
        texts = load_corpus("wiki_vital", 20000)  # all of it
    assert len(spread) == 1000 and spread == [texts[i * len(texts) // 1000] for i in range(1000)]
    topics = {}  # the topic of each text: from the jsonl form beside the corpus in ../shared/data (SOURCES.md, 4a)
    jsonl = ROOT.parent / "shared" / "data" / "corpus" / "wiki_vital_summaries_en.jsonl.gz"
    if not jsonl.is_file():
        pytest.skip(f"the corpus' topics are in {jsonl}, not here")
    with gzip.open(jsonl, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            topics.setdefault(" ".join(row["text"].split()), row["topic"])
    assert len({topics[t] for t in texts[:1000]}) == 2  # the corpus is ordered by topic: Arts and Biology
    assert len({topics[t] for t in spread}) == len(set(topics.values())) == 12
    with pytest.raises(SystemExit, match="--spread 20000: wiki_vital has"):
        nsf.spread_corpus(20000, tmp_path / "too_many.txt")
