"""C0 statistics data-parallel on torch.distributed: each rank runs a share of the batches.

C0 = (sum of k k^T) / (number of tokens) is a sum over texts, so it splits exactly: rank r runs the
batches r, r + N, r + 2N, ... of the one-process pass (`second_moment_sums`: same texts, same
batches, so the same keys bit for bit), accumulates its float64 sums and counts, and ONE
``all_reduce`` over a single packed float64 buffer adds them up. Every rank gets C0; rank 0 writes
the cache files that `layer_second_moments` reads (same key, same validation). The result equals
the one-process statistics up to float64 summation order (1e-10 relative is checked in tests).

Backends: gloo on CPU, NCCL with one GPU per rank. Launch with torchrun; see
``python -m betaedit_plugin.stats --help``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.distributed as dist

from .collect import second_moment_sums, write_second_moments

logger = logging.getLogger(__name__)

__all__ = ["distributed_second_moments"]


def distributed_second_moments(
    model: torch.nn.Module,
    tok: Any,
    layout: Any,
    layers: Sequence[int],
    *,
    corpus: Union[str, Path] = "wiki_vital",
    n_samples: int = 1000,
    max_length: int = 256,
    dtype: str = "float32",
    batch_size: int = 8,
    cache_dir: Optional[Union[str, Path]] = None,
    write_cache: bool = True,
    progress: bool = False,
) -> Dict[str, Any]:
    """C0 of ``layers`` with this process as one rank of the initialised default process group.

    Every rank must call it with the same arguments and the same model weights.

    Returns:
        ``{"moments": {layer: C0 (d_k, d_k) float64 CPU}, "counts": {layer: tokens},
        "rank_tokens": [tokens of each rank at the first layer], "files": {layer: Path} (rank 0,
        when written; {} elsewhere)}``.

    Raises:
        RuntimeError: no process group (launch with torchrun) or a corpus that gave no tokens.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "distributed_second_moments: no torch.distributed process group; launch with "
            "torchrun --nproc_per_node N -m betaedit_plugin.stats ... (or call layer_second_moments)"
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    layers = layout.check_layers(layers)
    sums = second_moment_sums(
        model, tok, layout, layers, corpus=corpus, n_samples=n_samples, max_length=max_length,
        batch_size=batch_size, rank=rank, world_size=world, progress=progress and rank == 0,
    )
    # one buffer, one all_reduce: [sum k k^T of each layer | token count of each layer | tokens per rank]
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    dims = [layout.key_dim(model, l) for l in layers]
    parts = []
    for l, d in zip(layers, dims):
        mom2 = sums[l].mom2
        parts.append(mom2.reshape(-1).to(comm) if mom2 is not None else torch.zeros(d * d, dtype=torch.float64, device=comm))
    counts = [sums[l].count for l in layers]
    per_rank = [0] * world
    per_rank[rank] = counts[0]
    parts.append(torch.tensor(counts + per_rank, dtype=torch.float64, device=comm))  # exact below 2**53
    buffer = torch.cat(parts)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    buffer = buffer.cpu()
    moments, totals = {}, {}
    tail = buffer[sum(d * d for d in dims):].tolist()
    offset = 0
    for i, (l, d) in enumerate(zip(layers, dims)):
        mom2 = buffer[offset: offset + d * d].reshape(d, d)
        offset += d * d
        totals[l] = int(tail[i])
        if totals[l] < 1:
            raise RuntimeError(f"layer {l}: the corpus gave no tokens on any rank")
        m = mom2 / totals[l]
        moments[l] = (m + m.t()) / 2  # as SecondMoment.moment()
    files: Dict[int, Path] = {}
    if rank == 0 and write_cache:
        files = write_second_moments(
            model, tok, layout, {l: (moments[l], totals[l]) for l in layers}, corpus=corpus,
            n_samples=n_samples, max_length=max_length, dtype=dtype, cache_dir=cache_dir,
        )
        logger.info("rank 0 wrote C0 of layers %s (%d tokens) to %s", layers, totals[layers[0]], sorted(map(str, files.values())))
    dist.barrier()  # the files exist on every rank's return
    return {
        "moments": moments,
        "counts": totals,
        "rank_tokens": [int(t) for t in tail[len(layers):]],
        "files": files,
    }
