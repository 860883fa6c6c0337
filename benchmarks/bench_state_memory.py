"""Editor state on the device: bytes per layer, and float32 per-edit tensors against float64.

Prints one JSON line with two parts.

``memory``: bytes per edited layer and for all layers, computed from the shapes (no tensors
are built), for SmolLM2-135M (d_k 1536, d_v 576, 5 layers; m, the null-space rank at the
0.02 threshold, read from the cached C0 under ~/.cache/betaedit_plugin when present, else
m = d_k as an upper bound) and for LLaMA-3-8B (d_k 14336, d_v 4096, 5 layers; m unknown
here, so m = d_k (upper bound), m = 0.7 d_k (the issue's 26 GB figure; SmolLM2 measures
0.60-0.78) and U = I (MEMIT)):

- ``today``: C0, H, U (d_k, m) and G^-1 (m, m), all float64 on the model's device;
- ``new``: on the device only the float32 per-edit tensors of `IncrementalSolver` in the
  smaller of its two forms (U and G^-1, or M = U G^-1 U^T) plus the low-rank factor at its
  largest (``refresh_every`` - 1 columns); C0, H and U in float64 on the CPU.
- W_0 (``LayerState.w0``, the model's dtype) is listed apart: it is wherever the editor
  puts it. For LLaMA-3-8B the bf16 model (8.03e9 parameters x 2 bytes) is added to say
  whether the state fits a 24 GB card (activations of the value optimisation not counted).

``deviation``: at d_k 1536 with SmolLM2's real C0 of ``--layer`` (or a synthetic C0 with
a similar spectrum when no cache is found), ``--edits`` sequential single-key edits for
BetaEdit (lambda1 300, lambda2 1: SmolLM2's settings), AlphaEdit (L2 10) and history-aware
MEMIT (w 1000), with keys drawn with second moment C0 (``gaussian``) or around 50
repeated subjects at twice the norm (``clustered``: H grows along few directions, the
harder case). Every edit, each mode computes Delta for the same K and R; the deviation is
||Delta - Delta_float64||_F / ||Delta_float64||_F, its running maximum reported every
100 edits. Modes: ``float64`` (today's solver), ``float32_r<k>`` (float32 per-edit tensors,
float64 recomputation every k keys) and ``float32_plain`` (a float32 G^-1 updated in
full every edit and never recomputed: what a plain dtype switch would do). Seconds per
edit (Delta plus the solver update; the history update H + K K^T, shared by all modes, is
timed apart) are measured side by side in this one run, interleaved edit by edit.

    python benchmarks/bench_state_memory.py [--edits 1000] [--refresh-every 100 250 1000]
        [--methods betaedit alphaedit memit] [--keys gaussian clustered] [--layer 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import statistics
import time

import torch

from betaedit_plugin.linalg import (
    DEFAULT_REFRESH_EVERY_FLOAT32,
    IncrementalSolver,
    Solver,
    add_keys,
    nullspace_basis,
    solver_device_bytes,
)

CACHE = os.path.expanduser("~/.cache/betaedit_plugin")
GiB = 2**30
THRESHOLD = 0.02


# ---------------------------------------------------------------- memory (from shapes)
def layer_bytes(d_k: int, m, refresh_every: int) -> dict:
    """Per-layer bytes of today's layout and of the new one (m None: U = I)."""
    f64 = 8
    basis = 0 if m is None else d_k * m
    rows = d_k if m is None else m
    today = f64 * (2 * d_k * d_k + basis + rows * rows)
    forms = {
        form: solver_device_bytes(d_k, m, torch.float32, form, factor_columns=refresh_every - 1)
        for form in ("factored", "dense")
    }
    auto = solver_device_bytes(d_k, m, torch.float32, "auto", factor_columns=refresh_every - 1)
    return {
        "m": m if m is not None else "identity (U = I)",
        "today_device_bytes": today,
        "new_device_bytes": auto,
        "new_device_form": "dense" if forms["dense"] < forms["factored"] else "factored",
        "new_device_bytes_by_form": forms,
        "new_cpu_bytes": f64 * (2 * d_k * d_k + basis),
    }


def model_config_rows(name, d_k, d_v, ms, n_layers, w_bytes_per_param, refresh_every):
    rows = []
    for label, m_per_layer in ms:
        per_layer = [layer_bytes(d_k, m, refresh_every) for m in m_per_layer]
        rows.append({
            "case": label,
            "per_layer": per_layer if len(set(map(str, m_per_layer))) > 1 else per_layer[0],
            "today_device_bytes_total": sum(p["today_device_bytes"] for p in per_layer),
            "new_device_bytes_total": sum(p["new_device_bytes"] for p in per_layer),
            "new_cpu_bytes_total": sum(p["new_cpu_bytes"] for p in per_layer),
        })
    return {
        "model": name,
        "d_k": d_k,
        "d_v": d_v,
        "layers": n_layers,
        "w0_bytes_per_layer": d_v * d_k * w_bytes_per_param,
        "cases": rows,
    }


def cached_priors(layers):
    """{layer: (C0 float64, n_samples)} from the statistics cache (largest sample per layer), or {}."""
    out = {}
    try:
        from safetensors import safe_open
    except ImportError:
        return out
    for l in layers:
        best = None
        for path in glob.glob(os.path.join(CACHE, "stats", f"c0_layer{l}_*.safetensors")):
            try:
                with safe_open(path, framework="pt") as f:
                    key = json.loads((f.metadata() or {}).get("key", "{}"))
                    if "smollm2" not in str(key.get("model", "")).lower():
                        continue
                    n = int(key.get("n_samples", 0))
                    if best is None or n > best[1]:
                        best = (f.get_tensor("moment").double(), n, os.path.basename(path))
            except Exception:  # an unreadable cache file is simply not used here
                continue
        if best is not None:
            out[l] = best
    return out


def memory_part(refresh_every: int) -> dict:
    smol_layers = [4, 5, 6, 7, 8]
    priors = cached_priors(smol_layers)
    if len(priors) == len(smol_layers):
        ms = [int((torch.linalg.eigvalsh(priors[l][0]) < THRESHOLD).sum()) for l in smol_layers]
        m_note = f"null-space rank at {THRESHOLD} of the cached C0 of layers 4-8 ({priors[4][1]} texts)"
    else:
        ms = [1536] * 5
        m_note = "no cached C0 found: m = d_k (upper bound)"
    smol = model_config_rows(
        "SmolLM2-135M", 1536, 576, [("BetaEdit/AlphaEdit", ms), ("MEMIT (U = I)", [None] * 5)], 5, 4, refresh_every
    )
    smol["m_source"] = m_note
    d_k = 14336
    llama = model_config_rows(
        "LLaMA-3-8B",
        d_k,
        4096,
        [
            ("BetaEdit/AlphaEdit, m = d_k (upper bound)", [d_k] * 5),
            ("BetaEdit/AlphaEdit, m = 0.7 d_k", [round(0.7 * d_k)] * 5),
            ("MEMIT (U = I)", [None] * 5),
        ],
        5,
        2,
        refresh_every,
    )
    model_bytes = int(8.03e9 * 2)
    llama["model_bf16_bytes"] = model_bytes
    for case in llama["cases"]:
        w0 = llama["w0_bytes_per_layer"] * llama["layers"]
        need = model_bytes + case["new_device_bytes_total"]
        case["model_plus_new_state_bytes"] = need
        case["model_plus_new_state_plus_w0_bytes"] = need + w0
        case["model_plus_today_state_bytes"] = model_bytes + case["today_device_bytes_total"]
        case["headroom_24GiB_bytes_w0_on_cpu"] = 24 * GiB - need
        case["headroom_24e9_bytes_w0_on_cpu"] = int(24e9) - need
        case["fits_24GiB_w0_on_cpu"] = need < 24 * GiB
    return {"refresh_every": refresh_every, "smollm2": smol, "llama3_8b": llama}


# ---------------------------------------------------------------- deviation and time (measured)
def synthetic_prior(d: int, seed: int = 0) -> torch.Tensor:
    """Power-law spectrum 2 / i (about 70% of the eigenvalues below 0.02, as SmolLM2's C0)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (q * (2.0 / torch.arange(1, d + 1, dtype=torch.float64))) @ q.T


def key_stream(C0: torch.Tensor, kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ev, Q = torch.linalg.eigh(C0)
    root = Q * ev.clamp_min(0).sqrt()  # root root^T = C0
    d = C0.shape[0]
    if kind == "gaussian":
        return root @ torch.randn(d, n, generator=g, dtype=torch.float64)
    if kind == "clustered":
        centres = 2.0 * (root @ torch.randn(d, 50, generator=g, dtype=torch.float64))
        pick = torch.randint(0, 50, (n,), generator=g)
        return centres[:, pick] + 0.2 * (root @ torch.randn(d, n, generator=g, dtype=torch.float64))
    raise ValueError(f"--keys {kind!r}: expected gaussian or clustered")


class PlainFloat32:
    """G^-1 cast to float32 once and updated in full by Woodbury every edit, never recomputed."""

    def __init__(self, ref: Solver):
        self.g = ref.g_inv.float().clone()
        self.U = None if ref.basis is None else ref.basis.float()

    def _w(self, K):
        B = K.float() if self.U is None else self.U.T @ K.float()
        W = self.g @ B
        return B, W, 1.0 + float(B.T @ W)

    def delta(self, K, R):
        _, W, s = self._w(K)
        X = W.T / s
        if self.U is not None:
            X = X @ self.U.T
        return (R.float() @ X).double()

    def add_keys(self, K):
        _, W, s = self._w(K)
        self.g = self.g - (W @ W.T) / s


METHODS = {
    "betaedit": dict(projected=True, lambda1=300.0, lambda2=1.0),
    "alphaedit": dict(projected=True, lambda1=0.0, lambda2=10.0),
    "memit": dict(projected=False, lambda1=1000.0, lambda2=0.0),
}


def run_one(C0, method, keys_kind, n_edits, refresh_list, form, d_v=576, seed=1):
    cfg = dict(METHODS[method])
    U = nullspace_basis(C0, THRESHOLD) if cfg.pop("projected") else None
    ref = IncrementalSolver(C0, U, None, **cfg)
    modes = {"float64": ref}
    for r in refresh_list:
        modes[f"float32_r{r}"] = IncrementalSolver(
            C0, U, None, **cfg, compute_dtype=torch.float32, refresh_every=r, inverse_form=form
        )
    modes["float32_plain"] = PlainFloat32(ref)
    keys = key_stream(C0, keys_kind, n_edits, seed)
    g = torch.Generator().manual_seed(seed + 1)
    H = torch.zeros_like(C0)
    worst = dict.fromkeys(modes, 0.0)
    curve = {k: [] for k in modes}
    t_edit = {k: [] for k in modes}
    t_refresh = {k: [] for k in modes}
    t_hist = []
    for t in range(n_edits):
        K = keys[:, t : t + 1]
        R = torch.randn(d_v, 1, generator=g, dtype=torch.float64)
        t0 = time.perf_counter()
        H = add_keys(H, K)
        t_hist.append(time.perf_counter() - t0)
        want = None
        for name, s in modes.items():  # float64 first: the reference
            t0 = time.perf_counter()
            D = s.delta(K, R)
            if not isinstance(s, PlainFloat32):
                s.add_keys(K, hist_cov=H)
            else:
                s.add_keys(K)
            dt = time.perf_counter() - t0
            refreshed = not isinstance(s, PlainFloat32) and s.refresh_every and s.keys_since_refresh == 0
            (t_refresh if refreshed else t_edit)[name].append(dt)
            if want is None:
                want = D
            else:
                worst[name] = max(worst[name], ((D - want).norm() / want.norm()).item())
            if (t + 1) % 100 == 0:
                curve[name].append(float(f"{worst[name]:.3g}"))
    ev = torch.linalg.eigvalsh(ref.g_inv)
    out = {
        "method": method,
        "keys": keys_kind,
        "lambda1": cfg["lambda1"],
        "lambda2": cfg["lambda2"],
        "m": ref.rank,
        "cond_G_at_end": float(f"{(ev[-1] / ev[0]).item():.3g}"),
        "history_update_s_per_edit": float(f"{statistics.median(t_hist):.3g}"),
        "modes": {},
    }
    for name, s in modes.items():
        row = {"s_per_edit_median": float(f"{statistics.median(t_edit[name]):.3g}")}
        if not isinstance(s, PlainFloat32):
            row["form"] = s.form
            row["device_bytes"] = s.device_bytes()
        if name != "float64":
            row["max_rel_dev"] = float(f"{worst[name]:.3g}")
            row["max_rel_dev_every_100_edits"] = curve[name]
        if t_refresh[name]:
            row["refresh_s_mean"] = float(f"{statistics.mean(t_refresh[name]):.3g}")
            row["refreshes"] = len(t_refresh[name])
        total = sum(t_edit[name]) + sum(t_refresh[name])
        row["s_per_edit_amortized"] = float(f"{total / n_edits:.3g}")
        out["modes"][name] = row
    return out


def refresh_cost(C0, form: str, repeats: int = 2) -> dict:
    """Seconds of one float64 recomputation at this d_k, and the d^3 extrapolation to 14336."""
    U = nullspace_basis(C0, THRESHOLD)
    s = IncrementalSolver(C0, U, None, 300.0, 1.0, inverse_form=form)
    H = torch.zeros_like(C0)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        s.refresh_inverse(H)
        best = min(best, time.perf_counter() - t0)
    d, m = C0.shape[0], U.shape[1]
    scale = (14336 / d) ** 3
    return {
        "form": form,
        "d_k": d,
        "m": m,
        "seconds": float(f"{best:.3g}"),
        "extrapolated_seconds_d14336_m_same_fraction_this_cpu": float(f"{best * scale:.3g}"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=1000)
    ap.add_argument("--refresh-every", type=int, nargs="+", default=[100, 250, 1000])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--keys", nargs="+", default=["gaussian", "clustered"], choices=["gaussian", "clustered"])
    ap.add_argument("--form", default="auto", choices=["auto", "factored", "dense"])
    ap.add_argument("--layer", type=int, default=4, help="SmolLM2 layer whose cached C0 is used")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-deviation", action="store_true", help="only the memory table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    result = {
        "bench": "state_memory",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "memory": memory_part(DEFAULT_REFRESH_EVERY_FLOAT32),
    }
    if not args.skip_deviation:
        priors = cached_priors([args.layer])
        if args.layer in priors:
            C0, n_samples, fname = priors[args.layer]
            source = f"SmolLM2-135M layer {args.layer}, cached C0 ({n_samples} texts, {fname})"
        else:
            C0, source = synthetic_prior(1536), "synthetic: power-law spectrum 2 / i, d_k 1536 (no cached C0)"
        runs = [
            run_one(C0, method, kind, args.edits, args.refresh_every, args.form)
            for kind in args.keys
            for method in args.methods
        ]
        result["deviation"] = {
            "d_k": C0.shape[0],
            "c0_source": source,
            "edits": args.edits,
            "keys_per_edit": 1,
            "threshold": THRESHOLD,
            "runs": runs,
            "max_rel_dev_over_all_runs": {
                mode: max(r["modes"][mode]["max_rel_dev"] for r in runs)
                for mode in runs[0]["modes"]
                if mode != "float64"
            },
        }
        result["refresh_cost"] = [refresh_cost(C0, f) for f in ("factored", "dense")]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
