"""Atomic checkpoints of a sequential editing run, and resuming from them.

A checkpoint is a directory ``<out_dir>/checkpoints/step-<t>/`` holding

* ``editor_state.safetensors``: what `BetaEditor.save_state` writes: the history, projector and
  solver of every edited layer, W_0 and the current weights W_t (each tensor once);
* ``results.json``: the results so far;
* ``manifest.json``, written last: format, step, the run's identity and its hash, the sha256
  of every file, and a sha256 of these fields.

Every file is written to a temporary name, flushed, fsynced and moved into place with
``os.replace``; the directory is first built as ``step-<t>.tmp`` and renamed when complete. A
checkpoint whose manifest is missing, whose files do not match their digests, or whose identity
differs from the run's, is refused with :class:`CheckpointError` and never loaded.

The step is recorded three times: in the manifest, in the editor state (a metadata field covered
by the state file's own sha256 digests, see `betaedit_plugin.state.save_state_file`) and in
``results.json`` (``edits_done`` and the last logged edit). `verify_checkpoint` refuses a
checkpoint where they differ, so a manifest edited and re-hashed (step 3 -> 4 would skip an edit)
is not resumed; the editor state's tensors are checked against their digests when it is loaded.

Format 3 (this version) requires an editor state with digests. Formats 1 and 2 (written before
digests existed) are still resumed: their state file is covered by the manifest's sha256 only.
Format 1 checkpoints also hold ``weights.safetensors`` (W_t) and ``deltas.safetensors``
(W_t - W_0), copies of what the editor state holds: they are verified like every file and
otherwise not read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from ..errors import BetaEditError
from .._fileio import IntegrityError, _fsync_dir, atomic_write, atomic_write_text, read_metadata, sha256_file
from .identity import config_hash, identity_difference

logger = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "write_checkpoint",
    "list_checkpoints",
    "read_manifest",
    "verify_checkpoint",
    "latest_checkpoint",
    "atomic_write_text",
    "EDITOR_STATE",
]

MANIFEST = "manifest.json"
EDITOR_STATE = "editor_state.safetensors"
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
SEALED_FORMAT = 3  # from this format on, the editor state carries sha256 digests
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(BetaEditError, RuntimeError):
    """A checkpoint is truncated, corrupt, or belongs to a run with another configuration."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint on disk."""

    path: Path
    step: int
    manifest: dict

    def file(self, name: str) -> Path:
        return self.path / name

    def load_into(self, editor) -> None:
        """Load the editor state (history, projector, solver, weights) into ``editor``; formats before
        `SEALED_FORMAT` are covered by the manifest's sha256 only. Raises what ``editor.load_state``
        raises: IntegrityError (a tensor that does not match its digest), ValueError (another run's)."""
        editor.load_state(self.file(EDITOR_STATE), restore_weights=True, allow_unverified=self.manifest["format"] < SEALED_FORMAT)


def checkpoint_root(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def write_checkpoint(
    out_dir: Path,
    step: int,
    *,
    identity: Mapping,
    save_editor_state: Callable[[Path], None],
    results: Mapping,
    keep: int = 1,
) -> Path:
    """Write the checkpoint of ``step`` and drop older ones beyond the ``keep`` newest.

    Args:
        identity: the run's identity (config keys that change results); stored with its hash.
        save_editor_state: writes the editor state to the given path (e.g. ``editor.save_state``).
        results: JSON-serialisable results so far.
    """
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    staging = root / f"step-{step:07d}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    atomic_write(staging / EDITOR_STATE, save_editor_state)
    atomic_write_text(staging / "results.json", json.dumps(results, indent=1, default=_json_default))
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
    manifest = json.loads(json.dumps({
        "format": FORMAT_VERSION,
        "step": step,
        "config_hash": config_hash(identity),
        "identity": dict(identity),
        "files": files,
    }, default=str))
    manifest["sha256"] = _manifest_sha256(manifest)
    atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=str))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    _fsync_dir(root)
    for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint at step %d written to %s", step, final)
    return final


def list_checkpoints(out_dir: Path) -> list:
    """Completed checkpoint directories (no ``.tmp``), oldest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp")]
    return sorted(dirs, key=lambda p: p.name)


def read_manifest(path: Path) -> dict:
    """The manifest of a checkpoint directory; :class:`CheckpointError` when missing or malformed."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} has no {MANIFEST} (truncated); delete it or start a new out_dir")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: unreadable {MANIFEST} ({exc}); delete it or start a new out_dir") from None
    for key in ("format", "step", "config_hash", "files"):
        if key not in manifest:
            raise CheckpointError(f"checkpoint {str(path)!r}: {MANIFEST} lacks {key!r}; delete it or start a new out_dir")
    if manifest["format"] not in READABLE_FORMATS:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: format {manifest['format']!r}, this version reads {list(READABLE_FORMATS)}"
        )
    if ("sha256" in manifest or manifest["format"] >= SEALED_FORMAT) and manifest.get("sha256") != _manifest_sha256(manifest):
        raise CheckpointError(
            f"checkpoint {str(path)!r}: {MANIFEST} does not match its own sha256 (corrupt or edited); "
            "delete the checkpoint or use a new out_dir"
        )
    if EDITOR_STATE not in manifest["files"]:
        raise CheckpointError(f"checkpoint {str(path)!r}: {MANIFEST} lists no {EDITOR_STATE}; delete it or start a new out_dir")
    return manifest


def _manifest_sha256(manifest: Mapping) -> str:
    """sha256 of the manifest's fields other than ``sha256`` (catches corruption, not a deliberate re-hash)."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def verify_checkpoint(path: Path, identity: Optional[Mapping] = None, verify_files: bool = True) -> Checkpoint:
    """Check a checkpoint's manifest, (optionally) its run identity, the sha256 of every file and
    (with ``verify_files``) that the manifest, the editor state and results.json agree on the step.

    Raises:
        CheckpointError: truncated/corrupt files, or an identity that differs from ``identity``.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if identity is not None and manifest["config_hash"] != config_hash(identity):
        diff = identity_difference(manifest.get("identity", {}), identity)
        if diff is not None:
            key, theirs, ours = diff
            raise CheckpointError(
                f"checkpoint {str(path)!r} belongs to a run with another config ({key}={theirs!r} there, {ours!r} here); "
                "use another out_dir, or the same settings to resume"
            )
    for name, digest in (manifest["files"].items() if verify_files else ()):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r}: file {name!r} is missing (truncated); delete the checkpoint or use a new out_dir")
        if sha256_file(file) != digest:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: file {name!r} does not match its sha256 in the manifest (corrupt or truncated); "
                "delete the checkpoint or use a new out_dir"
            )
    if verify_files:
        _check_step(path, manifest)
    return Checkpoint(path=path, step=int(manifest["step"]), manifest=manifest)


def _check_step(path: Path, manifest: Mapping) -> None:
    """The manifest's step must equal the editor state's (digest-checked) and results.json's."""
    fix = "the checkpoint was modified or mixed from several runs; delete it or use a new out_dir"
    try:
        meta = read_metadata(path / EDITOR_STATE, allow_unsealed=manifest["format"] < SEALED_FORMAT)
        state_step = json.loads(meta["step"])
        results = json.loads((path / "results.json").read_text(encoding="utf-8"))
        edits = results.get("edits") or []
        last_edit = edits[-1]["step"] if edits else 0
        done = results.get("edits_done", last_edit)
    except IntegrityError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: {exc}; delete the checkpoint or use a new out_dir") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: cannot read the step from {EDITOR_STATE} and results.json "
            f"({type(exc).__name__}: {exc}); {fix}"
        ) from None
    step = manifest["step"]
    if not (type(step) is int and step == state_step == last_edit == done):
        raise CheckpointError(
            f"checkpoint {str(path)!r}: {MANIFEST} says step {step!r}, {EDITOR_STATE} step {state_step!r}, "
            f"results.json edits_done {done!r} (last edit at step {last_edit!r}); {fix}"
        )


def latest_checkpoint(out_dir: Path, identity: Optional[Mapping] = None, verify_files: bool = True) -> Optional[Checkpoint]:
    """The newest checkpoint in ``out_dir``, verified; None when there is none.

    The newest one is never skipped: if it is invalid, :class:`CheckpointError` is raised.
    """
    dirs = list_checkpoints(out_dir)
    return verify_checkpoint(dirs[-1], identity, verify_files) if dirs else None


def _json_default(value):
    if hasattr(value, "tolist"):  # tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
