"""Command line: compute and cache the key statistics C0, on one process or data-parallel.

One process::

    python -m betaedit_plugin.stats --model smollm2-135m --layers 4 5 6 7 8 --n-samples 1000

Data-parallel on N processes (gloo on CPU, NCCL with one GPU per process); rank 0 writes the cache::

    torchrun --nproc_per_node N -m betaedit_plugin.stats --model smollm2-135m --layers 4 5 6 7 8 \\
        --n-samples 100000 --max-length 256 --cache-dir /shared/betaedit/stats

The files are the ones the editor reads (``stats_dir`` / ``$BETAEDIT_CACHE/stats``), keyed by
model, weights, tokenizer, layer, corpus, sample count, max length and dtype. Rank 0 prints one
JSON line: layers, token count, tokens per rank, files, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

import torch
import torch.distributed as dist

from .covariance import distributed_second_moments, layer_second_moments
from .models import load_model
from .models.devices import as_device
from .models.layout import ModelLayout


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m betaedit_plugin.stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="'smollm2-135m', 'tiny-<arch>' or a local checkpoint directory")
    p.add_argument("--layers", type=int, nargs="+", required=True, help="edited layers, e.g. 4 5 6 7 8")
    p.add_argument("--corpus", default="wiki_vital", help="'wiki_vital' or a .txt/.txt.gz file, one text per line")
    p.add_argument("--n-samples", type=int, default=1000, help="texts taken from the start of the corpus")
    p.add_argument("--max-length", type=int, default=256, help="tokens per text")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    p.add_argument("--dtype", default="float32", help="forward dtype (sums are float64): float32, bfloat16, float16")
    p.add_argument("--cache-dir", default=None, help="default: $BETAEDIT_CACHE/stats")
    p.add_argument("--device", default="auto", help="'auto' (cuda:<LOCAL_RANK> when CUDA is there, else cpu), or a device")
    p.add_argument("--progress", action="store_true", help="progress bar on rank 0")
    return p


def _device(arg: str) -> torch.device:
    if arg != "auto":
        return as_device(arg)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    distributed = "WORLD_SIZE" in os.environ  # set by torchrun
    device = _device(args.device)
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        model, tok = load_model(args.model)
        dtype = getattr(torch, args.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise SystemExit(f"--dtype {args.dtype!r}: expected float32, bfloat16 or float16")
        model = model.to(device=device, dtype=dtype).eval()
        layout = ModelLayout.from_model(model)
        kw = dict(corpus=args.corpus, n_samples=args.n_samples, max_length=args.max_length, dtype=args.dtype,
                  batch_size=args.batch_size, cache_dir=args.cache_dir, progress=args.progress)
        t0 = time.perf_counter()
        if distributed:
            out = distributed_second_moments(model, tok, layout, args.layers, **kw)
            rank, world = dist.get_rank(), dist.get_world_size()
            summary = {"tokens": out["counts"][args.layers[0]], "rank_tokens": out["rank_tokens"],
                       "files": {l: str(p) for l, p in out["files"].items()}}
        else:
            rank, world = 0, 1
            layer_second_moments(model, tok, layout, args.layers, **kw)
            summary = {}
        if rank == 0:
            print(json.dumps({"model": args.model, "layers": args.layers, "world_size": world,
                              "seconds": round(time.perf_counter() - t0, 3), **summary}))
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
