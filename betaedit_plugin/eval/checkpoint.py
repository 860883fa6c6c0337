"""Atomic checkpoints of a sequential editing run.

A checkpoint is a directory ``<out_dir>/checkpoints/step-<t>/`` holding

* ``weights.safetensors``: the current weights W_t of the edited modules (``layer.<l>``, nn.Linear
  orientation), so that a resumed run continues from bit-equal weights;
* ``deltas.safetensors``: W_t - W_0 per layer (for inspection and for users who only keep deltas);
* ``editor_state.safetensors``: the editor's state (history, projector, step), written by the editor;
* ``results.json``: the evaluation points so far;
* ``manifest.json``, written last: step, the run's config hash and identity, and the sha256 of every file.

Every file is written to a temporary name, flushed, fsynced and moved into place with
``os.replace``; the directory is first built as ``step-<t>.tmp`` and renamed when complete. A
checkpoint whose manifest is missing, whose files do not match their digests, or whose config hash
differs from the run's, is refused with :class:`CheckpointError` and never loaded.
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

import torch

from .._fileio import _fsync_dir, atomic_write, sha256_file

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint is truncated, corrupt, or belongs to a run with another configuration."""


def config_hash(identity: Mapping) -> str:
    """sha256 of the canonical JSON of a run's identity (the config keys that change its results)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_tensors(path: Path, tensors: Mapping[int, torch.Tensor]) -> None:
    """Per-layer tensors as safetensors with keys ``layer.<l>`` (contiguous CPU copies)."""
    from safetensors.torch import save_file

    payload = {f"layer.{l}": t.detach().to("cpu").contiguous().clone() for l, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(payload, str(tmp)))


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return {int(k.split(".", 1)[1]): v for k, v in load_file(str(path)).items()}


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint on disk."""

    path: Path
    step: int
    manifest: dict

    def file(self, name: str) -> Path:
        return self.path / name


def checkpoint_root(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def write_checkpoint(
    out_dir: Path,
    step: int,
    *,
    identity: Mapping,
    weights: Mapping[int, torch.Tensor],
    deltas: Mapping[int, torch.Tensor],
    save_editor_state: Callable[[Path], None],
    results: Mapping,
    keep: int = 1,
) -> Path:
    """Write the checkpoint of ``step`` and drop older ones beyond the ``keep`` newest.

    Args:
        identity: the run's identity (config keys that change results); its hash goes in the manifest.
        weights / deltas: per-layer W_t and W_t - W_0, (d_v, d_k).
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
    save_tensors(staging / "weights.safetensors", weights)
    save_tensors(staging / "deltas.safetensors", deltas)
    atomic_write(staging / "editor_state.safetensors", save_editor_state)
    atomic_write_text(staging / "results.json", json.dumps(results, indent=1, default=_json_default))
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
    manifest = {
        "format": FORMAT_VERSION,
        "step": step,
        "config_hash": config_hash(identity),
        "identity": dict(identity),
        "files": files,
    }
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
    if manifest["format"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r}: format {manifest['format']!r}, this version reads {FORMAT_VERSION}")
    return manifest


def verify_checkpoint(path: Path, identity: Optional[Mapping] = None, verify_files: bool = True) -> Checkpoint:
    """Check a checkpoint's manifest, (optionally) config hash, and the sha256 of every file.

    Raises:
        CheckpointError: truncated/corrupt files, or a config hash that differs from ``identity``'s.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if identity is not None and manifest["config_hash"] != config_hash(identity):
        key, theirs, ours = first_difference(manifest.get("identity", {}), identity)
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
    return Checkpoint(path=path, step=int(manifest["step"]), manifest=manifest)


def latest_checkpoint(out_dir: Path, identity: Optional[Mapping] = None, verify_files: bool = True) -> Optional[Checkpoint]:
    """The newest checkpoint in ``out_dir``, verified; None when there is none.

    The newest one is never skipped: if it is invalid, :class:`CheckpointError` is raised.
    """
    dirs = list_checkpoints(out_dir)
    return verify_checkpoint(dirs[-1], identity, verify_files) if dirs else None


def first_difference(a: Mapping, b: Mapping, prefix: str = "") -> tuple:
    """(dotted key, value in a, value in b) of the first differing key of two nested mappings."""
    for key in sorted(set(a) | set(b), key=str):
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        name = f"{prefix}{key}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            found = first_difference(va, vb, name + ".")
            if found[0] is not None:
                return found
        elif json.dumps(va, default=str, sort_keys=True) != json.dumps(vb, default=str, sort_keys=True):
            return name, va, vb
    return None, None, None


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
