"""C0 statistics: one pass vs per-layer full passes, the validated cache, npz import, corpus loading."""

from __future__ import annotations

import gzip
import json
import struct
import warnings

import numpy as np
import pytest
import torch

from betaedit_plugin._fileio import sha256_file

from betaedit_plugin.covariance import (
    SecondMoment,
    corpus_path,
    import_npz_stats,
    layer_second_moments,
    load_corpus,
    stats_for_hparams,
)
from betaedit_plugin.models.layout import ModelLayout

N_TEXTS, MAX_LEN = 24, 24


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _reference_c0(model, tok, layout, layer, texts, max_length):
    """Straightforward reference: one FULL forward per text (no padding, no early stop), float64 sums."""
    module = layout.rewrite_module(model, layer)
    seen = []
    handle = module.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    total = torch.zeros(layout.key_dim(model, layer), layout.key_dim(model, layer), dtype=torch.float64)
    count = 0
    try:
        with torch.no_grad():
            for text in texts:
                ids = tok(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
                seen.clear()
                model(ids)
                k = seen[0][0].double()  # (seq, d_k)
                total += k.t() @ k
                count += k.shape[0]
    finally:
        handle.remove()
    return total / count


class _ForwardCounter:
    """Counts forward calls of ``module`` (a forward pre-hook)."""

    def __init__(self, module):
        self.calls = 0
        self._h = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1

    def remove(self):
        self._h.remove()


def _mixed_length_corpus(tmp_path):
    """Wikipedia texts cut to 1..9 words in mixed order: batches need padding (some texts truncation)."""
    texts = load_corpus("wiki_vital", N_TEXTS)
    lines = [" ".join(t.split()[: 1 + (5 * i) % 9]) for i, t in enumerate(texts)]
    path = tmp_path / "mixed.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _c0(model, tok, layout, layers, cache_dir, **kw):
    kw = {"n_samples": N_TEXTS, "max_length": MAX_LEN, "batch_size": 5, "progress": False, **kw}
    return layer_second_moments(model, tok, layout, layers, cache_dir=cache_dir, **kw)


# ---------------------------------------------------------------- accumulation


def test_second_moment_matches_float64_reference_and_round_trips():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, 7, generator=g) for n in (3, 0, 11, 1)]
    sm = SecondMoment()
    for c in chunks:
        sm.add(c)
    x = torch.cat(chunks).double()
    torch.testing.assert_close(sm.moment(), x.t() @ x / x.shape[0], rtol=1e-12, atol=1e-12)
    assert sm.count == 15 and sm.mom2.dtype == torch.float64

    other = SecondMoment()
    other.load_state_dict(sm.state_dict())
    assert other.count == 15
    torch.testing.assert_close(other.moment(), sm.moment(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no rows"):
        SecondMoment().moment()
    with pytest.raises(ValueError, match="width 3, expected 7"):
        sm.add(torch.zeros(2, 3))


# ---------------------------------------------------------------- one pass


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_one_pass_equals_per_layer_full_passes(tiny, tmp_path, arch):
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    layers = [0, 2]
    corpus = _mixed_length_corpus(tmp_path)
    texts = load_corpus(corpus, N_TEXTS)

    after_last = _ForwardCounter(layout.layer_module(model, 3))
    head = _ForwardCounter(layout.lm_head(model))
    try:
        got = _c0(model, tok, layout, layers, tmp_path, corpus=corpus)
    finally:
        after_last.remove()
        head.remove()
    assert after_last.calls == 0 and head.calls == 0, "the pass must stop after the last requested layer"

    assert list(got) == layers
    for layer in layers:
        ref = _reference_c0(model, tok, layout, layer, texts, MAX_LEN)
        c0 = got[layer]
        assert c0.dtype == torch.float64 and c0.device.type == "cpu"
        assert c0.shape == (layout.key_dim(model, layer),) * 2
        assert torch.equal(c0, c0.t())
        assert _rel(c0, ref) < 1e-5, f"layer {layer}: relative deviation {_rel(c0, ref):.2e}"
        assert torch.linalg.eigvalsh(c0).min() > -1e-8 * c0.diagonal().max()


def test_stats_for_hparams_uses_the_mom2_fields(tiny, tmp_path):
    from betaedit_plugin.hparams import BetaEditHyperParams

    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    hp = BetaEditHyperParams(
        alg_name="BetaEdit", layers=[1, 2], mom2_n_samples=N_TEXTS, mom2_max_length=MAX_LEN, stats_dir=str(tmp_path)
    )
    got = stats_for_hparams(model, tok, hp, layout, progress=False)
    want = layer_second_moments(model, tok, layout, [1, 2], n_samples=N_TEXTS, max_length=MAX_LEN,
                                use_cache=False, progress=False)
    assert sorted(got) == [1, 2]
    for layer in (1, 2):
        torch.testing.assert_close(got[layer], want[layer], rtol=1e-10, atol=1e-12)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


# ---------------------------------------------------------------- cache


def test_cache_round_trip_does_not_run_the_model(tiny, tmp_path):
    model, tok = tiny("gpt2")
    layout = ModelLayout.from_model(model)
    first = _c0(model, tok, layout, [1, 2], tmp_path)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 2 and not list(tmp_path.glob("*.tmp"))

    counter = _ForwardCounter(model)
    try:
        second = _c0(model, tok, layout, [2, 1], tmp_path)
    finally:
        counter.remove()
    assert counter.calls == 0
    assert list(second) == [2, 1]
    for layer in (1, 2):
        assert torch.equal(first[layer], second[layer])

    # metadata holds the full key
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt") as f:
        key = json.loads(f.metadata()["key"])
    assert key["n_samples"] == N_TEXTS and key["max_length"] == MAX_LEN and key["dtype"] == "float32"
    assert key["corpus"] == "wiki_vital" and len(key["corpus_sha256"]) == 64 and key["layer"] in (1, 2)


def test_cache_key_follows_settings_and_weights(tiny, tmp_path):
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    base = _c0(model, tok, layout, [2], tmp_path)
    _c0(model, tok, layout, [2], tmp_path, n_samples=N_TEXTS - 4)
    _c0(model, tok, layout, [2], tmp_path, max_length=MAX_LEN - 8)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3

    # an edit of an earlier rewrite weight changes the keys of layer 2: cached C0 must not be reused
    with torch.no_grad():
        layout.rewrite_module(model, 1).weight.mul_(1.5)
    counter = _ForwardCounter(model)
    try:
        edited = _c0(model, tok, layout, [2], tmp_path)
    finally:
        counter.remove()
    assert counter.calls > 0
    assert _rel(edited[2], base[2]) > 1e-3


def test_partial_cache_computes_only_missing_layers(tiny, tmp_path):
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    _c0(model, tok, layout, [0], tmp_path)
    layer0 = _ForwardCounter(layout.rewrite_module(model, 0))
    layer3 = _ForwardCounter(layout.layer_module(model, 3))
    try:
        got = _c0(model, tok, layout, [0, 2], tmp_path)
    finally:
        layer0.remove()
        layer3.remove()
    assert layer3.calls == 0  # stops after layer 2
    assert sorted(got) == [0, 2] and len(list(tmp_path.glob("*.safetensors"))) == 2


def _moment_offsets(path):
    """Byte offsets (start, end) of the 'moment' tensor's data in a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    start, end = header["moment"]["data_offsets"]
    return 8 + n + start, 8 + n + end


_CACHE_DAMAGE = {
    "truncate": "not a readable safetensors file",
    "flip_off_diagonal": "tensor 'moment' does not match the sha256 stored with it",
    # the top mantissa bit of C0[0, 0]: symmetric, finite, positive and wrong; only the digest sees it
    "flip_diagonal_mantissa": "tensor 'moment' does not match the sha256 stored with it",
    "nan": "tensor '(moment|count)' does not match",  # count differs too
    "wrong_key": "no content digests",  # rewritten by hand: no digests, so unverified
    "wrong_shape": "tensor '(moment|count)' does not match",
    "edited_key": "metadata field 'key' does not match",
    "no_digests": "no content digests",  # a file written by the previous version
}


@pytest.mark.parametrize("damage", sorted(_CACHE_DAMAGE))
def test_corrupt_cache_is_detected_and_recomputed(tiny, tmp_path, damage):
    from safetensors.torch import save_file

    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    good = _c0(model, tok, layout, [1], tmp_path)[1]
    (path,) = tmp_path.glob("*.safetensors")
    raw = bytearray(path.read_bytes())
    start, _ = _moment_offsets(path)
    d_k = good.shape[0]
    if damage == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "flip_off_diagonal":  # element (0, 1): breaks symmetry, stays finite
        raw[start + 8 + 3] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "flip_diagonal_mantissa":
        raw[start + 6] ^= 1 << 3  # bit 51 of the little-endian float64 C0[0, 0]
        path.write_bytes(bytes(raw))
    elif damage in ("edited_key", "no_digests"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
        if damage == "edited_key":
            meta["key"] = meta["key"].replace('"n_samples": 24', '"n_samples": 25')
        else:
            del meta["integrity"]
        save_file(tensors, str(path), metadata=meta)
    elif damage == "nan":
        bad = good.clone()
        bad[0, 0] = float("nan")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        save_file({"moment": bad, "count": torch.tensor(5)}, str(path), metadata=meta)
    elif damage == "wrong_key":  # a valid file of another layer renamed onto this one
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            key = json.loads(f.metadata()["key"])
        key["layer"] = 2
        save_file({"moment": good, "count": torch.tensor(5)}, str(path), metadata={"key": json.dumps(key, sort_keys=True)})
    elif damage == "wrong_shape":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        save_file({"moment": torch.eye(d_k - 1, dtype=torch.float64), "count": torch.tensor(5)}, str(path), metadata=meta)

    counter = _ForwardCounter(model)
    try:
        with pytest.warns(UserWarning, match=f"ignoring the statistics cache file {path}: .*{_CACHE_DAMAGE[damage]}"):
            again = _c0(model, tok, layout, [1], tmp_path)[1]
    finally:
        counter.remove()
    assert counter.calls > 0
    torch.testing.assert_close(again, good, rtol=1e-12, atol=1e-14)
    # the file was rewritten and is valid again: no warning, no forward pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(_c0(model, tok, layout, [1], tmp_path)[1], good, rtol=0, atol=0)



def test_a_cache_file_replaced_by_a_directory_is_recomputed_with_a_warning(tiny, tmp_path):
    """Like any other bad cache file: a warning, then C0 computed and written again; a directory
    that is not empty is left alone (C0 computed, not cached, and said so)."""
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    good = _c0(model, tok, layout, [1], tmp_path)[1]
    (path,) = tmp_path.glob("*.safetensors")
    path.unlink()
    path.mkdir()
    with pytest.warns(UserWarning, match=f"ignoring the statistics cache file {path}: it is a directory, not a file; "
                                         "recomputing it"):
        again = _c0(model, tok, layout, [1], tmp_path)[1]
    torch.testing.assert_close(again, good, rtol=1e-12, atol=1e-14)
    assert path.is_file()

    path.unlink()
    path.mkdir()
    (path / "mine").write_text("kept")
    with pytest.warns(UserWarning) as caught:
        again = _c0(model, tok, layout, [1], tmp_path)[1]
    messages = [str(w.message) for w in caught]
    assert any("it is a directory, not a file" in m for m in messages), messages
    assert any(f"{path} is a directory that is not empty: C0 of layer 1 is not cached" in m for m in messages), messages
    torch.testing.assert_close(again, good, rtol=1e-12, atol=1e-14)
    assert (path / "mine").read_text() == "kept"

def test_use_cache_false_writes_nothing_and_training_mode_warns(tiny, tmp_path):
    model, tok = tiny("gptj")
    layout = ModelLayout.from_model(model)
    _c0(model, tok, layout, [1], tmp_path, use_cache=False)
    assert list(tmp_path.iterdir()) == []
    model.train()
    with pytest.warns(UserWarning, match=r"training mode.*model\.eval\(\)"):
        _c0(model, tok, layout, [1], tmp_path, use_cache=False, n_samples=2)
    assert model.training  # the caller's mode is left alone


# ---------------------------------------------------------------- bad input


def test_bad_input_fails_before_anything_runs(tiny, tmp_path):
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    counter = _ForwardCounter(model)
    cache = tmp_path / "cache"
    try:
        with pytest.raises(ValueError, match=r"layers=\[1, 4\]: layer 4 is out of range .* \[0, 3\]"):
            _c0(model, tok, layout, [1, 4], cache)
        with pytest.raises(ValueError, match=r"layers=\[\]"):
            _c0(model, tok, layout, [], cache)
        with pytest.raises(ValueError, match="listed twice"):
            _c0(model, tok, layout, [1, 1], cache)
        with pytest.raises(KeyError, match=r"Did you mean: 'wiki_vital'"):
            _c0(model, tok, layout, [1], cache, corpus="wiki_vitl")
        with pytest.raises(FileNotFoundError, match="mom2_dataset="):
            _c0(model, tok, layout, [1], cache, corpus=str(tmp_path / "missing.txt"))
        with pytest.raises(ValueError, match=r"mom2_dataset=.*empty\.txt.*no usable text"):
            _c0(model, tok, layout, [1], cache, corpus=str(empty))
        with pytest.raises(ValueError, match=r"n_samples=0"):
            _c0(model, tok, layout, [1], cache, n_samples=0)
        with pytest.raises(ValueError, match=r"max_length=-1"):
            _c0(model, tok, layout, [1], cache, max_length=-1)
        with pytest.raises(ValueError, match=r"mom2_dtype='bfloat16' but the model's parameters are float32"):
            _c0(model, tok, layout, [1], cache, dtype="bfloat16")
        with pytest.raises(ValueError, match=r"mom2_dtype='float31'.*Did you mean 'float32'"):
            _c0(model, tok, layout, [1], cache, dtype="float31")
    finally:
        counter.remove()
    assert counter.calls == 0 and not cache.exists()


# ---------------------------------------------------------------- corpus


def test_load_corpus_bundled_and_files(tmp_path):
    texts = load_corpus("wiki_vital", 3)
    assert len(texts) == 3 and all(t and t == t.strip() for t in texts)
    assert load_corpus("wiki_vital", 5)[:3] == texts  # deterministic prefix

    plain = tmp_path / "c.txt"
    plain.write_text("first text\n\n  second text  \nthird\n", encoding="utf-8")
    assert load_corpus(str(plain), 2) == ["first text", "second text"]
    zipped = tmp_path / "c.txt.gz"
    with gzip.open(zipped, "wt", encoding="utf-8") as f:
        f.write("alpha\nbeta\n")
    with pytest.warns(UserWarning, match="only 2 non-empty lines"):
        assert load_corpus(zipped, 10) == ["alpha", "beta"]
    other = tmp_path / "c.json"
    other.write_text("[]")
    with pytest.raises(ValueError, match=r"\.txt or \.txt\.gz"):
        load_corpus(str(other), 1)


def test_bundled_corpus_matches_its_recorded_checksum():
    path = corpus_path("wiki_vital")
    assert sha256_file(path) == "e41dd3d8f628c6bd755f6285293962ebba0d71338d0ecc24d6a723f99f58061f"


# ---------------------------------------------------------------- npz import


def test_import_npz_stats_returns_the_mean(tmp_path):
    """EasyEdit's layer_stats saves CombinedStat(mom2=SecondMoment()).state_dict(): mom2.mom2 is a SUM."""
    g = np.random.default_rng(0)
    x = g.standard_normal((50, 6))
    path = tmp_path / "model.layers.4.mlp.down_proj_float32_mom2_100.npz"
    np.savez(
        path,
        **{
            "constructor": np.array("util.runningstats.CombinedStat()"),
            "mom2.constructor": np.array("util.runningstats.SecondMoment()"),
            "mom2.count": np.array(50),
            "mom2.mom2": (x.T @ x).astype(np.float32),
        },
    )
    got = import_npz_stats(path)
    assert got.dtype == torch.float64 and got.shape == (6, 6)
    torch.testing.assert_close(got, torch.from_numpy(x.T @ x / 50), rtol=1e-6, atol=1e-6)
    assert torch.equal(got, got.t())


def test_import_npz_stats_rejects_bad_files(tmp_path):
    missing = tmp_path / "a.npz"
    np.savez(missing, mom2=np.eye(3))
    with pytest.raises(ValueError, match=r"'mom2\.mom2' and 'mom2\.count'"):
        import_npz_stats(missing)
    zero = tmp_path / "b.npz"
    np.savez(zero, **{"mom2.mom2": np.eye(3), "mom2.count": np.array(0)})
    with pytest.raises(ValueError, match="positive token count"):
        import_npz_stats(zero)
    pickled = tmp_path / "c.npz"
    np.savez(pickled, **{"mom2.mom2": np.array([object()], dtype=object), "mom2.count": np.array(3)})
    with pytest.raises(ValueError, match="pickle"):
        import_npz_stats(pickled)
    garbage = tmp_path / "d.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="d.npz"):
        import_npz_stats(garbage)
    with pytest.raises(FileNotFoundError):
        import_npz_stats(tmp_path / "none.npz")


# ---------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_stats_fixture(smollm2, smollm2_stats):
    model, tok = smollm2
    assert sorted(smollm2_stats) == [4, 5, 6, 7, 8]
    for layer, c0 in smollm2_stats.items():
        assert c0.shape == (1536, 1536) and c0.dtype == torch.float64
        assert torch.isfinite(c0).all() and torch.equal(c0, c0.t())
        # positive semi-definite: a tiny ridge makes it Cholesky-factorable (cheaper than eigvalsh)
        ridge = 1e-9 * c0.diagonal().mean() * torch.eye(c0.shape[0], dtype=c0.dtype)
        assert torch.linalg.cholesky_ex(c0 + ridge).info.item() == 0
    # cached: a second request reads the files and runs no forward pass
    from betaedit_plugin.models.layout import ModelLayout

    counter = _ForwardCounter(model)
    try:
        again = layer_second_moments(model, tok, ModelLayout.from_model(model), [8], n_samples=200, max_length=128,
                                     progress=False)
    finally:
        counter.remove()
    assert counter.calls == 0 and torch.equal(again[8], smollm2_stats[8])


# ---------------------------------------------------------------- two processes, one cache file
_COMPUTE_SLOWLY = """
import sys, time
from betaedit_plugin.models.tiny import build_tiny
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.covariance import layer_second_moments
model, tok = build_tiny("llama", seed=0)
layout = ModelLayout.from_model(model)
handle = None
def slow(module, args):  # first batch, under the cache file's lock: tell the test, then take a while
    handle.remove()
    print("computing", flush=True)
    time.sleep(4)
handle = model.register_forward_pre_hook(slow)
layer_second_moments(model, tok, layout, [1], cache_dir=sys.argv[1], n_samples=int(sys.argv[2]),
                     max_length=int(sys.argv[3]), batch_size=5, progress=False)
print("written", flush=True)
"""


def test_a_second_process_waits_for_the_cache_and_reads_it(tiny, tmp_path):
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    model, tok = tiny("llama")  # the same model as the other process builds
    layout = ModelLayout.from_model(model)
    other = subprocess.Popen([sys.executable, "-c", _COMPUTE_SLOWLY, str(tmp_path), str(N_TEXTS), str(MAX_LEN)],
                             cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "computing"  # the other process holds the lock
        counter = _ForwardCounter(model)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no "ignoring the cache file" either
                got = _c0(model, tok, layout, [1], tmp_path)[1]
        finally:
            counter.remove()
        waited = time.perf_counter() - t0
        assert other.wait(timeout=300) == 0 and other.stdout.read().strip() == "written"
    finally:
        other.kill()
    assert counter.calls == 0  # read what the other process computed, computed nothing itself
    assert waited > 1.0
    (path,) = tmp_path.glob("*.safetensors")
    from betaedit_plugin._fileio import read_tensors

    assert torch.equal(got, read_tensors(path)[0]["moment"])
    assert torch.equal(got, _c0(model, tok, layout, [1], tmp_path, use_cache=False)[1])
