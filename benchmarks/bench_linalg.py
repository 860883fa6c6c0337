"""Dense vs incremental BetaEdit update: per-edit time and agreement.

Prints one JSON line. For each d_k, runs `n_edits` single-key edits between two
projector refreshes with the incremental (Woodbury) solver, and times the dense
formula `betaedit_delta` on a few of those steps with the same history H; the
two are measured side by side in this one run. Deviation is the max over the
sampled steps of ||Delta_inc - Delta_dense||_F / ||Delta_dense||_F, with the
dense float64 result as reference; the float32 row feeds float32 inputs.
``refresh_s`` (float64 rows) times one from-scratch recomputation of the carried
inverse per inverse form (`refresh` with the final H: U^T A U, Cholesky, then the
inverse or M = U G^-1 U^T), the cost the float32 mode pays every ``refresh_every`` keys.

    python benchmarks/bench_linalg.py [--dims 1536 4096] [--edits 200] [--dense-samples 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from betaedit_plugin.linalg import IncrementalSolver, add_keys, betaedit_delta, nullspace_basis


def synthetic_prior(d: int, device, seed: int = 0) -> torch.Tensor:
    """SPD matrix with a log-spaced spectrum 1e-4..10 (about 40% below 0.02)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    vals = torch.logspace(-4, 1, d, dtype=torch.float64)
    return ((q * vals) @ q.T).to(device)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_one(d_k: int, d_v: int, n_edits: int, dense_samples: int, dtype, device, lam1=3000.0, lam2=10.0, thr=0.02):
    C0 = synthetic_prior(d_k, device)
    U = nullspace_basis(C0, thr)
    H = torch.zeros(d_k, d_k, dtype=torch.float64, device=device)
    solver = IncrementalSolver(C0, U, H, lambda1=lam1, lambda2=lam2)
    P = U @ U.T
    g = torch.Generator(device="cpu").manual_seed(1)
    sample_at = set(torch.linspace(0, n_edits - 1, dense_samples).round().long().tolist())
    inc_time, dense_time, worst = 0.0, 0.0, 0.0
    for t in range(n_edits):
        K = torch.randn(d_k, 1, generator=g, dtype=torch.float64).to(device)
        R = torch.randn(d_v, 1, generator=g, dtype=torch.float64).to(device)
        Kx, Rx = K.to(dtype), R.to(dtype)
        sync(device)
        t0 = time.perf_counter()
        delta = solver.delta(Kx, Rx)
        solver.add_keys(Kx)
        sync(device)
        inc_time += time.perf_counter() - t0
        if t in sample_at:
            Cx, Hx, Px = C0.to(dtype), H.to(dtype), P.to(dtype)
            sync(device)
            t0 = time.perf_counter()
            dense_x = betaedit_delta(Kx, Rx, Px, Cx, Hx, lam1, lam2)
            sync(device)
            dense_time += time.perf_counter() - t0
            ref = betaedit_delta(K, R, P, C0, H, lam1, lam2) if dtype != torch.float64 else dense_x.double()
            worst = max(worst, ((delta.double() - ref).norm() / ref.norm()).item())
        H = add_keys(H, Kx.double())
    inc = inc_time / n_edits
    dense = dense_time / len(sample_at)
    refresh = {}
    if dtype == torch.float64:
        for form in ("factored", "dense"):
            s = IncrementalSolver(C0, None, None, lambda1=lam1, lambda2=lam2, inverse_form=form)
            sync(device)
            t0 = time.perf_counter()
            s.refresh(U, H)
            sync(device)
            refresh[form] = round(time.perf_counter() - t0, 3)
    return {
        "d_k": d_k,
        "dtype": str(dtype).replace("torch.", ""),
        "null_dim": U.shape[1],
        "dense_s_per_edit": round(dense, 6),
        "incremental_s_per_edit": round(inc, 6),
        "ratio": round(dense / inc, 1),
        "max_rel_dev": float(f"{worst:.3g}"),
        **({"refresh_s": refresh} if refresh else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[1536, 4096])
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--dense-samples", type=int, default=4)
    ap.add_argument("--d-v", type=int, default=576)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rows = []
    for d_k in args.dims:
        for dtype in (torch.float64, torch.float32):
            rows.append(run_one(d_k, args.d_v, args.edits, args.dense_samples, dtype, args.device))
    print(json.dumps({
        "bench": "linalg_dense_vs_incremental",
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "edits_between_refreshes": args.edits,
        "n_per_edit": 1,
        "rows": rows,
    }))


if __name__ == "__main__":
    main()
