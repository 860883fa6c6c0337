"""A short sequential session on SmolLM2-135M: BetaEdit vs AlphaEdit, without EasyEdit.

    python examples/sequential_smollm2.py --n 10

Both methods write the same first N CounterFact cases one after another into fresh copies of
the same model, with the same C0 statistics (computed once, cached), and are scored after the
last edit with EasyEdit's token metrics. Prints a small table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import time
from pathlib import Path

import torch

from betaedit_plugin import load_hparams
from betaedit_plugin.data.loaders import load_counterfact
from betaedit_plugin.editor import BetaEditor
from betaedit_plugin.eval.scoring import predicted_target_tokens, target_token_accuracy, token_agreement
from betaedit_plugin.models.smollm2 import load_smollm2
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.covariance import stats_for_hparams

ROOT = Path(__file__).resolve().parents[1]


def score(model, tok, reqs, pre_loc) -> dict:
    """Mean rewrite / rephrase accuracy and locality (agreement with the unedited model)."""
    rw = [target_token_accuracy(model, tok, r.prompt, r.target_new) for r in reqs]
    rp = [target_token_accuracy(model, tok, r.rephrase_prompts[0], r.target_new) for r in reqs if r.rephrase_prompts]
    loc = [token_agreement(pre, predicted_target_tokens(model, tok, r.locality_prompts[0], r.locality_ground_truth[0])[0])
           for r, pre in zip(reqs, pre_loc) if pre is not None]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    return {"rewrite": mean(rw), "rephrase": mean(rp), "locality": mean(loc)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10, help="number of sequential edits (CounterFact cases)")
    ap.add_argument("--mom2-n-samples", type=int, default=None,
                    help="override the hparams' number of corpus texts for C0 (e.g. 200 for a quick try)")
    ap.add_argument("--mom2-max-length", type=int, default=None, help="override the hparams' tokens per text for C0")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)

    base, tok = load_smollm2()
    reqs = load_counterfact("edit", n=args.n)
    pre_loc = [predicted_target_tokens(base, tok, r.locality_prompts[0], r.locality_ground_truth[0])[0]
               if r.locality_prompts else None for r in reqs]
    rows = []
    priors = None
    for method in ("BetaEdit", "AlphaEdit"):
        hp = load_hparams(ROOT / "hparams" / method / "smollm2-135m.yaml")
        over = {k: v for k, v in (("mom2_n_samples", args.mom2_n_samples),
                                  ("mom2_max_length", args.mom2_max_length)) if v is not None}
        hp = dataclasses.replace(hp, **over)
        if priors is None:  # same model and layers: one C0 for both methods
            priors = stats_for_hparams(base, tok, hp, ModelLayout.from_model(base, hp))
        model = copy.deepcopy(base)
        editor = BetaEditor(model, tok, hp, prior_covs={l: priors[l] for l in hp.layers})
        start = time.perf_counter()
        for r in reqs:
            editor.apply([r])
        per_edit = (time.perf_counter() - start) / len(reqs)
        leak = []
        for l, d in editor.weight_deltas().items():
            c0, w0 = priors[l].double(), editor.state.layers[l].w0.double()
            leak.append(float(torch.trace(d.double() @ c0 @ d.double().T) / torch.trace(w0 @ c0 @ w0.T)))
        rows.append({"method": method, **score(model, tok, reqs, pre_loc), "s/edit": per_edit,
                     "leakage": sum(leak) / len(leak)})
        del model, editor

    print(f"\n{args.n} sequential CounterFact edits on SmolLM2-135M-Instruct (scored after the last edit)")
    print(f"{'method':<10} {'rewrite':>8} {'rephrase':>9} {'locality':>9} {'s/edit':>7} {'rel. leakage':>13}")
    for r in rows:
        print(f"{r['method']:<10} {r['rewrite']:>8.2f} {r['rephrase']:>9.2f} {r['locality']:>9.2f} "
              f"{r['s/edit']:>7.1f} {r['leakage']:>13.2e}")


if __name__ == "__main__":
    main()
