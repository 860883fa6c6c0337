"""Run checkpoints: atomic, verified, each tensor once; format 1 checkpoints still resume."""

from __future__ import annotations

import json

import pytest

from betaedit_plugin._fileio import atomic_write, sha256_file
from betaedit_plugin.runner.checkpoint import (
    EDITOR_STATE,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    write_checkpoint,
)
from betaedit_plugin.runner.config import identity_difference

IDENTITY = {"num_edits": 4, "eval": {"mmlu_n": 2}, "hparams": {"lambda1": None, "tau": 3}}


def _save_state(path):
    path.write_bytes(b"state")


def test_checkpoint_writer_is_atomic_and_verified(tmp_path):
    for step in (2, 4):
        write_checkpoint(tmp_path, step, identity=IDENTITY, save_editor_state=_save_state, results={"evals": []}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000004"]  # older ones pruned
    (tmp_path / "checkpoints" / "step-0000009.tmp").mkdir()  # an unfinished one is never picked
    ckpt = latest_checkpoint(tmp_path, IDENTITY)
    assert ckpt.step == 4 and ckpt.file(EDITOR_STATE).read_bytes() == b"state"
    assert sorted(ckpt.manifest["files"]) == [EDITOR_STATE, "results.json"]  # W_t lives in the state only
    with pytest.raises(CheckpointError, match=r"another config \(eval.mmlu_n=2 there, 3 here\)"):
        latest_checkpoint(tmp_path, {**IDENTITY, "eval": {"mmlu_n": 3}})

    def failing(path):
        path.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "x.json", failing)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.json.tmp").exists()


def test_identity_ignores_null_overrides_and_int_float():
    assert identity_difference(IDENTITY, {**IDENTITY, "hparams": {"tau": 3.0, "L2": None}}) is None
    assert identity_difference(IDENTITY, {**IDENTITY, "num_edits": 5}) == ("num_edits", 4, 5)


def test_a_format_1_checkpoint_is_accepted(tmp_path):
    """Written by the runner before each tensor was stored once: extra weights/deltas files, a
    hash over the identity with every null override, format 1."""
    ckpt = tmp_path / "checkpoints" / "step-0000002"
    ckpt.mkdir(parents=True)
    for name in ("weights.safetensors", "deltas.safetensors", EDITOR_STATE, "results.json"):
        (ckpt / name).write_bytes(name.encode())
    old_identity = {**IDENTITY, "hparams": {"lambda1": None, "tau": 3, "L2": None}}
    manifest = {"format": 1, "step": 2, "config_hash": "0" * 64, "identity": old_identity,
                "files": {p.name: sha256_file(p) for p in ckpt.iterdir()}}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    found = latest_checkpoint(tmp_path, IDENTITY)
    assert found.step == 2 and found.manifest["format"] == 1
    manifest["format"] = 7
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"format 7, this version reads \[1, 2\]"):
        latest_checkpoint(tmp_path, IDENTITY)
