"""Replaying a journal against computing the edits: N sequential edits on SmolLM2, side by side.

One BetaEditor writes N CounterFact edits the normal way (z* optimised at every step) and keeps
each step's z*, as the run journal does; a second editor on a fresh copy of the model, with the
same statistics and context templates, writes the same N steps from those z* (`apply(z_star=...)`:
keys, residuals, updates and the history recomputed, no value optimisation). Prints one JSON line:
seconds per edit of both, their ratio (the issue's goal: replay <= 10% of computing), whether the
final weights are bit-identical and the largest relative difference of W_t - W_0 per layer, and the
journal's bytes per edit (z* in float32 plus what a journal stores of each request).

    python benchmarks/bench_replay.py [--edits 8] [--method BetaEdit] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_edit import ROOT, load_counterfact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="BetaEdit", help="hparams/<method>/smollm2-135m.yaml")
    parser.add_argument("--edits", type=int, default=8)
    parser.add_argument("--offset", type=int, default=0, help="first CounterFact record")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from betaedit_plugin.editor import BetaEditor
    from betaedit_plugin.hparams import load_hparams
    from betaedit_plugin.models.smollm2 import load_smollm2
    from betaedit_plugin.runner.journal import Journal, StepRecord, request_fields

    hp = load_hparams(ROOT / "hparams" / args.method / "smollm2-135m.yaml")
    model, tok = load_smollm2()
    fresh = copy.deepcopy(model)
    requests = load_counterfact(args.edits, args.offset)
    computing = BetaEditor(model, tok, hp)
    computing.prepare()
    replaying = BetaEditor(fresh, tok, hp, context_templates=computing.context_templates,
                           prior_covs={l: s.prior_cov for l, s in computing.state.layers.items()})
    replaying.prepare()

    targets, seconds = [], {"compute": 0.0, "replay": 0.0}
    for req in requests:
        t0 = time.perf_counter()
        targets.append(computing.apply([req])["z_star"])
        seconds["compute"] += time.perf_counter() - t0
    for req, z in zip(requests, targets):
        t0 = time.perf_counter()
        replaying.apply([req], z_star=z)
        seconds["replay"] += time.perf_counter() - t0

    rel, identical = {}, True
    for l in hp.layers:
        a, b = computing.weight_deltas()[l].double(), replaying.weight_deltas()[l].double()
        rel[l] = float((a - b).norm() / a.norm())
        identical = identical and torch.equal(computing.layout.read_weight(model, l), replaying.layout.read_weight(fresh, l))

    with tempfile.TemporaryDirectory() as tmp:  # what the journal of these steps costs on disk
        journal = Journal.create(Path(tmp), kind="run", identity={}, config_hash="", context_templates=computing.context_templates,
                                 target_fields={}, chunk_size=len(requests))
        for i, (req, z) in enumerate(zip(requests, targets)):
            journal.append(StepRecord(i + 1, [request_fields(req)], z))
        journal.seal()
        chunk_bytes = sum(p.stat().st_size for p in Path(tmp, "journal").glob("chunk-*"))
        header_bytes = Path(tmp, "journal", "header.safetensors").stat().st_size

    n = len(requests)
    print(json.dumps({
        "bench": "replay_vs_compute", "method": hp.alg_name, "edits": n, "threads": args.threads,
        "compute_s_per_edit": seconds["compute"] / n, "replay_s_per_edit": seconds["replay"] / n,
        "replay_over_compute": seconds["replay"] / seconds["compute"],
        "final_weights_bit_identical": identical, "max_rel_delta_diff": max(rel.values()),
        "journal_bytes_per_edit": chunk_bytes / n, "journal_header_bytes": header_bytes,
        "z_star_bytes_per_edit": targets[0].numel() * targets[0].element_size(),
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
