"""Sealed files (`betaedit_plugin._fileio`): every single-bit flip in a statistics cache file, an
editor state file and a checkpoint is detected; file modes follow the umask."""

from __future__ import annotations

import json
import os
import random
import stat
import struct
import warnings

import pytest
import torch

from betaedit_plugin._fileio import (
    IntegrityError,
    UnsealedFileError,
    read_metadata,
    read_tensors,
    write_tensors,
)
from betaedit_plugin.covariance import layer_second_moments
from betaedit_plugin.covariance.cache import _read_cached
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.runner.checkpoint import CheckpointError, latest_checkpoint, write_checkpoint

from support.editing import REQS, assert_bit_equal, make_editor, params

FLIPS = 40  # per region (header, data) and file kind
IDENTITY = {"num_edits": 4}


def _flips(raw: bytes, seed: int):
    """Seeded (byte, bit) positions: FLIPS in the header (length prefix and JSON), FLIPS in the tensor data."""
    (n,) = struct.unpack("<Q", raw[:8])
    rng = random.Random(seed)
    header = [(rng.randrange(0, 8 + n), rng.randrange(8)) for _ in range(FLIPS)]
    data = [(rng.randrange(8 + n, len(raw)), rng.randrange(8)) for _ in range(FLIPS)]
    return header + data


def _flipped(raw: bytes, byte: int, bit: int) -> bytes:
    out = bytearray(raw)
    out[byte] ^= 1 << bit
    return bytes(out)


def test_round_trip_keeps_dtypes_and_metadata(tmp_path):
    tensors = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.arange(5).to(torch.bfloat16),
               "s": torch.tensor(7), "empty": torch.zeros(0, 2)}
    path = write_tensors(tmp_path / "x.safetensors", tensors, {"step": "3"})
    back, meta = read_tensors(path)
    assert meta == {"step": "3"} and read_metadata(path) == {"step": "3"}
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)
    with pytest.raises(ValueError, match="reserved"):
        write_tensors(tmp_path / "y.safetensors", tensors, {"integrity": "x"})


def test_a_tensor_renamed_or_dropped_is_detected(tmp_path):
    from safetensors.torch import save_file

    path = write_tensors(tmp_path / "x.safetensors", {"a": torch.ones(2), "b": torch.zeros(2)}, {"k": "v"})
    tensors, _ = read_tensors(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({"a": tensors["a"]}, str(path), metadata=meta)
    with pytest.raises(IntegrityError, match=r"missing \['b'\]"):
        read_tensors(path)
    save_file({}, str(path), metadata={"k": "v"})
    with pytest.raises(UnsealedFileError, match="no content digests"):
        read_tensors(path)
    assert read_tensors(path, allow_unsealed=True) == ({}, {"k": "v"})


# ---------------------------------------------------------------- randomized single-bit flips
def test_every_bit_flip_in_a_statistics_cache_file_is_detected(tiny, tmp_path):
    model, tok = tiny("llama")
    layout = ModelLayout.from_model(model)
    layer_second_moments(model, tok, layout, [1], n_samples=8, max_length=16, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("*.safetensors")
    raw = path.read_bytes()
    key = json.loads(read_metadata(path)["key"])
    d_k = layout.key_dim(model, 1)
    assert _read_cached(path, key, d_k) is not None
    for byte, bit in _flips(raw, seed=1):
        path.write_bytes(_flipped(raw, byte, bit))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = _read_cached(path, key, d_k)
        assert got is None, f"flip of bit {bit} of byte {byte} not detected"
        assert len(seen) == 1 and "ignoring the statistics cache file" in str(seen[0].message)


def test_every_bit_flip_in_an_editor_state_file_is_refused(tiny, tmp_path):
    saved = make_editor(tiny)
    saved.apply(REQS[:2])
    path = saved.save_state(tmp_path / "state.safetensors")
    raw = path.read_bytes()
    target = make_editor(tiny)
    before = params(target.model)
    for byte, bit in _flips(raw, seed=2):
        path.write_bytes(_flipped(raw, byte, bit))
        with pytest.raises(IntegrityError, match="editor state file"):
            target.load_state(path)
        assert target.state is None or target.state.step == 0
    assert_bit_equal(params(target.model), before)
    path.write_bytes(raw)
    target.load_state(path)  # the intact file loads
    assert target.state.step == 2


def test_every_bit_flip_in_a_checkpoint_is_refused(tiny, tmp_path):
    editor = make_editor(tiny)
    editor.apply(REQS[:2])
    results = {"evals": [], "edits": [{"step": 1}, {"step": 2}], "edits_done": 2}
    ckpt = write_checkpoint(tmp_path, 2, identity=IDENTITY, save_editor_state=editor.save_state, results=results)
    files = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert sorted(files) == ["editor_state.safetensors", "manifest.json", "results.json"]
    rng = random.Random(3)
    for i in range(2 * FLIPS):
        name = sorted(files)[i % 3]
        raw = files[name]
        byte, bit = rng.randrange(len(raw)), rng.randrange(8)
        (ckpt / name).write_bytes(_flipped(raw, byte, bit))
        with pytest.raises(CheckpointError):
            latest_checkpoint(tmp_path, IDENTITY)
        (ckpt / name).write_bytes(raw)
    assert latest_checkpoint(tmp_path, IDENTITY).step == 2


# ---------------------------------------------------------------- file modes
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_follow_the_umask(tiny, tmp_path, umask_022):
    model, tok = tiny("gpt2")
    layout = ModelLayout.from_model(model)
    layer_second_moments(model, tok, layout, [1], n_samples=4, max_length=8, cache_dir=tmp_path / "stats",
                         progress=False)
    editor = make_editor(tiny)
    state = editor.save_state(tmp_path / "state.safetensors")
    ckpt = write_checkpoint(tmp_path / "run", 0, identity=IDENTITY, save_editor_state=editor.save_state,
                            results={"evals": [], "edits": [], "edits_done": 0})
    written = [*(tmp_path / "stats").glob("*.safetensors"), state, *ckpt.iterdir()]
    assert len(written) == 5
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    os.umask(0o077)  # a private umask keeps files private
    assert stat.S_IMODE(editor.save_state(tmp_path / "private.safetensors").stat().st_mode) == 0o600
