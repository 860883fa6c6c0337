"""The fast edit path and the reference path give the same edited model: N sequential edits each.

Two copies of SmolLM2-135M, two BetaEditors with the same hparams, statistics and templates. One
writes each edit with ``BetaEditor.apply`` (the fast path); the other writes the deltas of
``bench_edit.reference_deltas`` (a full forward per optimisation step, keys from the embeddings)
through ``BetaEditor.apply(EditStep)``, so its state and history follow its own deltas. After N
edits both models are scored on the N edited cases (efficacy, generality, specificity, token
accuracies). Prints one JSON line: both metric sets, the largest difference of a rate (goal <= 0.02),
the largest relative deviation of a written Delta over the run and of the final W - W_0.

    python benchmarks/compare_paths.py [--edits 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from bench_edit import ROOT, load_counterfact, reference_deltas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default=str(ROOT / "hparams" / "BetaEdit" / "smollm2-135m.yaml"))
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--offset", type=int, default=0, help="first CounterFact record")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from betaedit_plugin.editor import BetaEditor, EditStep
    from betaedit_plugin.eval.metrics import edit_metrics, locality_reference
    from betaedit_plugin.hparams import load_hparams
    from betaedit_plugin.models.smollm2 import load_smollm2

    hp = load_hparams(args.hparams)
    model, tok = load_smollm2()
    ref_model = copy.deepcopy(model)
    requests = load_counterfact(args.edits, args.offset)
    locality = locality_reference(model, tok, requests)
    fast = BetaEditor(model, tok, hp)
    ref = BetaEditor(ref_model, tok, hp, context_templates=fast.context_templates)
    ref.prepare()

    devs, seconds = [], {"fast": 0.0, "reference": 0.0}
    for i, req in enumerate(requests):
        t0 = time.perf_counter()
        keys: dict = {}
        deltas = reference_deltas(ref, [req], keys_out=keys)
        weights = {l: ref.layout.read_weight(ref_model, l) for l in hp.layers}
        ref.apply(EditStep(requests=(req,), deltas=deltas, keys=keys, step=ref.state.step, weights=weights))
        seconds["reference"] += time.perf_counter() - t0
        before = {l: fast.layout.read_weight(model, l) for l in hp.layers}
        t0 = time.perf_counter()
        fast.apply([req])
        seconds["fast"] += time.perf_counter() - t0
        for l in hp.layers:
            d_fast = (fast.layout.read_weight(model, l) - before[l]).double()
            devs.append(float((d_fast - deltas[l].double()).norm() / deltas[l].double().norm()))
        print(json.dumps({"edit": i + 1, "max_rel_delta_dev_so_far": max(devs)}), flush=True)

    total = {}
    for l in hp.layers:
        a, b = fast.weight_deltas()[l].double(), ref.weight_deltas()[l].double()
        total[l] = float((a - b).norm() / b.norm())
    m_fast = edit_metrics(model, tok, requests, locality_ref=locality)
    m_ref = edit_metrics(ref_model, tok, requests, locality_ref=locality)
    keys = sorted(k for k in m_fast if isinstance(m_fast[k], float) and isinstance(m_ref.get(k), float))
    print(json.dumps({
        "bench": "compare_paths", "edits": len(requests), "threads": torch.get_num_threads(),
        "metrics_fast": {k: m_fast[k] for k in keys}, "metrics_reference": {k: m_ref[k] for k in keys},
        # the rates in [0, 1] (the margins are log-probability differences, reported above)
        "max_rate_difference": max(abs(m_fast[k] - m_ref[k]) for k in keys if not k.endswith("_margin")),
        "max_rel_delta_dev": max(devs), "rel_dev_of_final_update_per_layer": total,
        "s_per_edit": {k: round(v / len(requests), 2) for k, v in seconds.items()},
    }), flush=True)


if __name__ == "__main__":
    main()
