"""compute_z per edit on SmolLM2-135M: this project vs a straightforward full-forward loop.

Prints one JSON line. Both sides solve the same problem (same request, context
templates, hparams, number of steps; early stopping is switched off so both take
exactly ``--steps`` steps):

- ``baseline``: what the reference implementations do: every step runs the whole
  model on every prompt with a hook that adds ``delta`` to block ``layer``'s output
  at the fact token, computes full-vocabulary logits at every position, and
  back-propagates (``--weight-grads`` also lets autograd compute the model's weight
  gradients, as ``loss.backward()`` on a model with ``requires_grad`` weights does
  in the reference code; off by default).
- ``project``: ``betaedit_plugin.compute_z.optimise_value``: the blocks up to
  ``layer`` run once, each step runs blocks ``layer+1 .. v_loss_layer`` only, and the
  head only at the positions the loss reads; gradients w.r.t. delta only.

``max_rel_diff_z`` is max |z_project - z_baseline| / max |z_baseline|.

    python benchmarks/bench_compute_z.py [--hparams hparams/BetaEdit/smollm2-135m.yaml] [--steps 10] [--case 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import platform
import sys
import time
from pathlib import Path

import torch

from betaedit_plugin.hparams import load_hparams
from betaedit_plugin.models.smollm2 import load_smollm2
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.models.templates import generate_context_templates
from betaedit_plugin.compute_z import optimise_value, resolve_loss_layer
from betaedit_plugin.requests import EditRequest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the reference implementation is test support, not package code
from support.reference import reference_compute_z  # noqa: E402
COUNTERFACT = [
    ROOT / "betaedit_plugin" / "resources" / "counterfact" / "counterfact-edit.json.gz",
    ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-edit.json.gz",
]


def load_case(index: int) -> EditRequest:
    for path in COUNTERFACT:
        if path.is_file():
            with gzip.open(path, "rt") as f:
                return EditRequest.from_easyedit(json.load(f)[index])
    raise FileNotFoundError(f"counterfact-edit.json.gz not found in {[str(p) for p in COUNTERFACT]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default=str(ROOT / "hparams" / "BetaEdit" / "smollm2-135m.yaml"))
    parser.add_argument("--steps", type=int, default=10, help="optimisation steps for both sides")
    parser.add_argument("--case", type=int, default=0, help="CounterFact case index")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side (the minimum is reported)")
    parser.add_argument("--weight-grads", action="store_true", help="baseline also computes weight gradients")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_smollm2()
    hp = dataclasses.replace(load_hparams(args.hparams), v_num_grad_steps=args.steps, v_early_stop_loss=0.0)
    layout = ModelLayout.from_model(model, hp)
    layer = hp.layers[-1]
    ctx = generate_context_templates(model, tok, hp.context_template_length_params, seed=0)
    request = load_case(args.case)

    def timed(fn):
        best, out = float("inf"), None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_fast, res = timed(lambda: optimise_value(model, tok, request, hp, layout, layer, ctx))
    t_base, z_base = timed(lambda: reference_compute_z(model, tok, request, hp, layout, layer, ctx, weight_grads=args.weight_grads))
    rel = float((res.z - z_base).abs().max() / z_base.abs().max())
    print(json.dumps({
        "bench": "compute_z",
        "model": "SmolLM2-135M-Instruct",
        "case_id": request.case_id,
        "layer": layer,
        "v_loss_layer": resolve_loss_layer(hp, layout, layer),
        "steps": args.steps,
        "n_prompts": sum(len(g) for g in ctx) + 1,
        "baseline_weight_grads": args.weight_grads,
        "project_s": round(t_fast, 3),
        "baseline_s": round(t_base, 3),
        "speedup": round(t_base / t_fast, 3),
        "project_s_per_step": round(t_fast / args.steps, 3),
        "baseline_s_per_step": round(t_base / args.steps, 3),
        "max_rel_diff_z": rel,
        "final_nll": round(res.nll[-1], 4),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
