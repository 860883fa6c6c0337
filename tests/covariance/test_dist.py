"""Data-parallel C0 statistics: ``torchrun --nproc_per_node 2 -m betaedit_plugin.stats`` (gloo, CPU)
writes the cache that the one-process `layer_second_moments` reads, with the same numbers (1e-10
relative), each rank having run part of the corpus."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from betaedit_plugin.covariance import collect, distributed_second_moments
from betaedit_plugin.models.layout import ModelLayout

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str) -> dict:
    """Run the stats CLI on ``nproc`` CPU processes; returns rank 0's JSON line."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "betaedit_plugin.stats", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def one_process(model, tok, layers, **kw):
    """The reference: one process, one thread (as each torchrun worker), no cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return collect.layer_second_moments(model, tok, ModelLayout.from_model(model), layers, use_cache=False,
                                            progress=False, **kw)
    finally:
        torch.set_num_threads(threads)


def check_against_cache(model, tok, layers, ref, cache_dir, monkeypatch, **kw):
    """The files rank 0 wrote are found (same key) and valid, and hold the one-process C0."""
    monkeypatch.setattr(collect, "_one_pass", lambda *a, **k: pytest.fail("cache miss: the key differs"))
    got = collect.layer_second_moments(model, tok, ModelLayout.from_model(model), layers, cache_dir=cache_dir,
                                       progress=False, **kw)
    for l in layers:
        rel = float((got[l] - ref[l]).norm() / ref[l].norm())
        assert rel < 1e-10, (l, rel)


def test_two_gloo_processes_equal_one_process_on_tiny(tiny, tmp_path, monkeypatch):
    model, tok = tiny("llama")  # the CLI's tiny-llama is this model (seed 0)
    layers = [1, 2]
    kw = dict(corpus="wiki_vital", n_samples=24, max_length=32, batch_size=4)
    out = torchrun(2, "--model", "tiny-llama", "--layers", "1", "2", "--n-samples", "24", "--max-length", "32",
                   "--batch-size", "4", "--cache-dir", str(tmp_path))
    assert out["world_size"] == 2 and len(out["rank_tokens"]) == 2
    assert min(out["rank_tokens"]) > 0 and sum(out["rank_tokens"]) == out["tokens"]  # both ranks did work
    ref = one_process(model, tok, layers, **kw)
    check_against_cache(model, tok, layers, ref, tmp_path, monkeypatch, **kw)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_smollm2(smollm2, tmp_path, monkeypatch):
    model, tok = smollm2
    layers = [0, 1]
    kw = dict(corpus="wiki_vital", n_samples=8, max_length=32, batch_size=2)
    out = torchrun(2, "--model", "smollm2-135m", "--layers", "0", "1", "--n-samples", "8", "--max-length", "32",
                   "--batch-size", "2", "--cache-dir", str(tmp_path))
    assert min(out["rank_tokens"]) > 0 and sum(out["rank_tokens"]) == out["tokens"]
    ref = one_process(model, tok, layers, **kw)
    check_against_cache(model, tok, layers, ref, tmp_path, monkeypatch, **kw)


def test_without_a_process_group_the_error_says_how_to_launch(tiny):
    model, tok = tiny("llama")
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node N -m betaedit_plugin.stats"):
        distributed_second_moments(model, tok, ModelLayout.from_model(model), [1])


def test_shards_add_up_to_the_one_process_sums(tiny):
    """In-process check of the split itself: ranks 0..2 of 3 cover every batch exactly once."""
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    kw = dict(corpus="wiki_vital", n_samples=10, max_length=24, batch_size=3)
    whole = collect.second_moment_sums(model, tok, layout, [1], **kw)[1]
    parts = [collect.second_moment_sums(model, tok, layout, [1], rank=r, world_size=3, **kw)[1] for r in range(3)]
    assert sum(p.count for p in parts) == whole.count and all(p.count > 0 for p in parts)
    assert float((sum(p.mom2 for p in parts) - whole.mom2).norm() / whole.mom2.norm()) < 1e-12
