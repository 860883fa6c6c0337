"""Run checkpoints: atomic, verified, each tensor once, step cross-checked; format 1 checkpoints still resume;
the out_dir lock between processes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from betaedit_plugin._fileio import atomic_write, sha256_file
from betaedit_plugin.state import load_state_file, save_state_file
from betaedit_plugin.runner.checkpoint import (
    EDITOR_STATE,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    write_checkpoint,
)
from betaedit_plugin.runner.config import identity_difference

IDENTITY = {"num_edits": 4, "eval": {"mmlu_n": 2}, "hparams": {"lambda1": None, "tau": 3}}


def _state_writer(step):
    """A stand-in for ``editor.save_state``: a sealed state file holding ``step``."""
    return lambda path: save_state_file(path, {"layers.1.w": torch.arange(6.0).reshape(2, 3)}, {"step": step})


def _results(step):
    return {"evals": [], "edits": [{"step": s} for s in range(1, step + 1)], "edits_done": step}


def _write(out, step, **kw):
    return write_checkpoint(out, step, identity=IDENTITY, save_editor_state=_state_writer(step), results=_results(step), **kw)


def test_checkpoint_writer_is_atomic_and_verified(tmp_path):
    for step in (2, 4):
        _write(tmp_path, step, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000004"]  # older ones pruned
    (tmp_path / "checkpoints" / "step-0000009.tmp").mkdir()  # an unfinished one is never picked
    ckpt = latest_checkpoint(tmp_path, IDENTITY)
    assert ckpt.step == 4 and load_state_file(ckpt.file(EDITOR_STATE))[1]["step"] == 4
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
    from safetensors.torch import save_file

    ckpt = tmp_path / "checkpoints" / "step-0000002"
    ckpt.mkdir(parents=True)
    for name in ("weights.safetensors", "deltas.safetensors"):
        (ckpt / name).write_bytes(name.encode())  # verified by their sha256, never read
    save_file({"layers.1.w": torch.zeros(2, 3)}, str(ckpt / EDITOR_STATE), metadata={"step": "2"})  # no digests
    (ckpt / "results.json").write_text(json.dumps(_results(2)))
    old_identity = {**IDENTITY, "hparams": {"lambda1": None, "tau": 3, "L2": None}}
    manifest = {"format": 1, "step": 2, "config_hash": "0" * 64, "identity": old_identity,
                "files": {p.name: sha256_file(p) for p in ckpt.iterdir()}}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    found = latest_checkpoint(tmp_path, IDENTITY)
    assert found.step == 2 and found.manifest["format"] == 1
    manifest["format"] = 7
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"format 7, this version reads \[1, 2, 3\]"):
        latest_checkpoint(tmp_path, IDENTITY)


# ---------------------------------------------------------------- the step is cross-checked
def _rehash(ckpt, manifest=None, **changes):
    """Rewrite the manifest with ``changes``, its file digests and its own sha256 recomputed (a careful forger)."""
    from betaedit_plugin.runner.checkpoint import _manifest_sha256

    manifest = {**(manifest or json.loads((ckpt / "manifest.json").read_text())), **changes}
    manifest["files"] = {name: sha256_file(ckpt / name) for name in manifest["files"]}
    manifest["sha256"] = _manifest_sha256(manifest)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def test_a_rehashed_manifest_with_another_step_is_refused(tmp_path):
    ckpt = _write(tmp_path, 3)
    _rehash(ckpt, step=4)  # would skip edit 4 on resume
    with pytest.raises(CheckpointError, match=r"manifest.json says step 4, editor_state.safetensors step 3, "
                                              r"results.json edits_done 3 \(last edit at step 3\)"):
        latest_checkpoint(tmp_path, IDENTITY)


def test_results_edited_to_another_step_are_refused(tmp_path):
    ckpt = _write(tmp_path, 3)
    (ckpt / "results.json").write_text(json.dumps(_results(4)))
    _rehash(ckpt, step=4)
    with pytest.raises(CheckpointError, match="editor_state.safetensors step 3"):
        latest_checkpoint(tmp_path, IDENTITY)


def test_a_state_file_with_an_edited_step_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt = _write(tmp_path, 3)
    state = ckpt / EDITOR_STATE
    with safe_open(str(state), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, str(state), metadata={**meta, "step": "4"})  # the digests are left as they were
    (ckpt / "results.json").write_text(json.dumps(_results(4)))
    _rehash(ckpt, step=4)
    with pytest.raises(CheckpointError, match=r"editor_state.safetensors.*metadata field 'step' does not match"):
        latest_checkpoint(tmp_path, IDENTITY)


def test_an_edited_manifest_that_was_not_rehashed_is_refused(tmp_path):
    ckpt = _write(tmp_path, 3)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    (ckpt / "manifest.json").write_text(json.dumps({**manifest, "step": 4}))
    with pytest.raises(CheckpointError, match="manifest.json does not match its own sha256"):
        latest_checkpoint(tmp_path, IDENTITY)


# ---------------------------------------------------------------- the out_dir lock
_REPO = Path(__file__).resolve().parents[2]
_HOLD = """
import sys
from betaedit_plugin._fileio import exclusive_lock
from betaedit_plugin.runner.experiment import RUN_LOCK, RUN_PID
out = __import__("pathlib").Path(sys.argv[1])
with exclusive_lock(out / RUN_LOCK, out / RUN_PID):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(_REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _holder(out_dir):
    """A second process holding ``out_dir`` as a run does; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out_dir)], cwd=_REPO, env=_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from betaedit_plugin.runner import CONF_DIR
    from betaedit_plugin.runner.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


def _tiny_run(tmp_path, out_dir, *extra):
    return _compose(["model=tiny-llama", "num_edits=4", "eval_every=2", "checkpoint_every=2", "eval.mmlu_n=2",
                     "eval.ppl_tokens=48", "eval.ppl_window=24", "eval.fluency_prompts=1", "eval.fluency_tokens=2",
                     "hparams.v_num_grad_steps=2", f"hparams.stats_dir={tmp_path / 'stats'}", "progress=false",
                     f"run_root={tmp_path / 'runs'}", f"out_dir={out_dir}", *extra])


def test_a_second_run_on_an_out_dir_in_use_is_refused_with_the_pid(tmp_path):
    from betaedit_plugin.runner import ConfigError, run_experiment

    out = tmp_path / "out"
    proc = _holder(out)
    try:
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(ConfigError, match=rf"out_dir='{out}' is in use by another betaedit-run process "
                                              rf"\(pid {proc.pid}\); wait for it to finish or use another out_dir"):
            run_experiment(_tiny_run(tmp_path, out))
        assert sorted(p.name for p in out.iterdir()) == before  # nothing written
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    assert not (out / ".betaedit-run.pid").exists()  # released at exit


def test_the_cli_refuses_an_out_dir_in_use_in_one_line(tmp_path):
    from betaedit_plugin._fileio import exclusive_lock
    from betaedit_plugin.runner.experiment import RUN_LOCK, RUN_PID

    out = tmp_path / "out"
    with exclusive_lock(out / RUN_LOCK, out / RUN_PID):  # this process holds it
        proc = subprocess.run([sys.executable, "-m", "betaedit_plugin.run", "model=tiny-llama", "num_edits=2",
                               f"out_dir={out}", f"run_root={tmp_path}"],
                              cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"(pid {os.getpid()})" in proc.stderr, proc.stderr


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    from betaedit_plugin._fileio import exclusive_lock
    from betaedit_plugin.runner.experiment import RUN_LOCK, RUN_PID

    out = tmp_path / "out"
    proc = _holder(out)
    proc.kill()  # SIGKILL: no clean-up; its lock and pid files stay behind
    proc.wait(timeout=60)
    assert (out / RUN_PID).read_text().strip() == str(proc.pid)
    with exclusive_lock(out / RUN_LOCK, out / RUN_PID):
        assert (out / RUN_PID).read_text().strip() == str(os.getpid())


# ---------------------------------------------------------------- resume refuses a tampered checkpoint
def test_resume_refuses_tampered_checkpoints_and_accepts_the_intact_one(tmp_path):
    from betaedit_plugin.runner import ConfigError, run_experiment

    out = tmp_path / "out"
    first = run_experiment(_tiny_run(tmp_path, out, "stop_after=2"))
    assert first["status"] == "stopped"
    ckpt = out / "checkpoints" / "step-0000002"
    assert json.loads((ckpt / "manifest.json").read_text())["format"] == 3
    pristine = {p.name: p.read_bytes() for p in ckpt.iterdir()}

    _rehash(ckpt, step=3)
    with pytest.raises(ConfigError, match="manifest.json says step 3, editor_state.safetensors step 2"):
        run_experiment(_tiny_run(tmp_path, out, "resume=true"))

    # one bit of a saved weight flipped, the manifest re-hashed: caught by the state file's own digests
    for name, data in pristine.items():
        (ckpt / name).write_bytes(data)
    raw = bytearray(pristine[EDITOR_STATE])
    (n,) = struct.unpack("<Q", raw[:8])
    start, _ = json.loads(raw[8:8 + n])["layers.1.w"]["data_offsets"]
    raw[8 + n + start + 5] ^= 0x10
    (ckpt / EDITOR_STATE).write_bytes(bytes(raw))
    _rehash(ckpt)
    with pytest.raises(ConfigError, match=r"tensor 'layers.1.w' does not match the sha256 stored with it"):
        run_experiment(_tiny_run(tmp_path, out, "resume=true"))

    for name, data in pristine.items():
        (ckpt / name).write_bytes(data)
    second = run_experiment(_tiny_run(tmp_path, out, "resume=true"))
    assert second["resumed_from"] == 2 and second["status"] == "complete" and second["edits_done"] == 4
    # the wall time of the stopped process stays in the resumed run's timing (its projector was not rebuilt)
    before, after = first["timing"], second["timing"]
    assert after["projector_s"] == before["projector_s"] > 0
    assert after["load_model_s"] > before["load_model_s"] and after["eval_total_s"] > before["eval_total_s"]
