"""The unedited model's evaluation, computed once per machine for every run that shares it.

Before its first edit a run scores the unedited model twice: the locality reference (its answers on
every neighbourhood prompt, which later points compare against) and the evaluation point at step 0,
over all the requests it will edit. Both depend only on the model's weights, the requests, the
``eval`` settings and the scoring code, so runs that share those (the 25 fixed-target runs of a
screening, the methods of a comparison) need them once: on SmolLM2 with 1,000 CounterFact records
they cost more than the edits of a fixed-target run.

The cache file ``$BETAEDIT_CACHE/baseline/<key>.json`` is named by the sha256 of all of that (the
weights by their digest, the code by the source of the modules that score) and holds a sha256 of
its own content; a file that does not match is ignored with a warning and rewritten.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .._fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["BaselineCache", "baseline_key", "default_baseline_dir"]

#: bump when what a cached baseline holds changes shape
FORMAT = 1

#: eval settings that change no step-0 point and no locality reference (left out of the key)
_NOT_AT_STEP_0 = ("sample_final",)


def default_baseline_dir() -> Path:
    """``$BETAEDIT_CACHE/baseline`` (default ``~/.cache/betaedit_plugin/baseline``)."""
    from ..models.smollm2 import default_cache_dir

    return default_cache_dir() / "baseline"


def _scoring_source_digest(caller_source: str) -> str:
    """sha256 of the source of the modules an evaluation point runs and of the caller's (the
    evaluation loop): a change there is a new key."""
    from ..eval import capability, metrics, scoring
    from ..models import tokens

    digest = hashlib.sha256(caller_source.encode("utf-8"))
    for module in (capability, metrics, scoring, tokens):
        digest.update(inspect.getsource(module).encode("utf-8"))
    return digest.hexdigest()


def _weights_digest(model) -> str:
    """sha256 over every parameter and buffer of ``model`` (names, dtypes, shapes, bytes)."""
    from .._fileio import tensor_sha256

    digest = hashlib.sha256()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(f"{name}:{tensor_sha256(tensor)}\n".encode())
    return digest.hexdigest()


def baseline_key(model, requests: Sequence, settings: Mapping[str, Any], seed: int, caller_source: str = "") -> str:
    """sha256 of everything the unedited model's locality reference and step-0 point depend on
    (``caller_source``: the source of the code that evaluates, e.g. its module's)."""
    import dataclasses

    device = {str(p.device) for p in model.parameters()}
    parts = {
        "format": FORMAT,
        "weights": _weights_digest(model),
        "devices": sorted(device),
        "requests": hashlib.sha256(json.dumps([dataclasses.asdict(r) for r in requests], sort_keys=True,
                                              ensure_ascii=False, default=str).encode("utf-8")).hexdigest(),
        "eval": {k: v for k, v in sorted(settings.items()) if k not in _NOT_AT_STEP_0},
        "seed": seed,
        "code": _scoring_source_digest(caller_source),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _content_sha256(content: Mapping) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class BaselineCache:
    """The cached baseline of one key: ``locality_ref`` and ``point`` (step 0), each None until known."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = Path(path), key
        self.locality_ref: Optional[list] = None
        self.point: Optional[dict] = None

    @classmethod
    def open(cls, directory: Path, key: str) -> "BaselineCache":
        """The cache entry for ``key`` in ``directory``, read when a valid file exists."""
        cache = cls(Path(directory) / f"{key}.json", key)
        if not cache.path.exists():
            return cache
        try:
            stored = json.loads(cache.path.read_text(encoding="utf-8"))
            content = stored["content"]
            if stored.get("sha256") != _content_sha256(content) or content.get("key") != key:
                raise ValueError("its sha256 does not match its content")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"ignoring the baseline cache file {str(cache.path)!r} ({exc}); it is recomputed",
                          stacklevel=2)
            return cache
        if content.get("locality_ref") is not None:  # JSON has lists; scoring compares tuples
            cache.locality_ref = [tuple(tuple(a) for a in ref) for ref in content["locality_ref"]]
        cache.point = content.get("point")
        return cache

    def save(self) -> None:
        """Write what is known (atomically: concurrent runs each write a whole file). A cache that
        cannot be written is a warning: the run goes on without it."""
        content = {"key": self.key, "locality_ref": self.locality_ref, "point": self.point}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"sha256": _content_sha256(content), "content": content}))
        except OSError as exc:
            warnings.warn(f"could not write the baseline cache file {str(self.path)!r} ({type(exc).__name__}: {exc}); "
                          "the run goes on without it", stacklevel=2)
            return
        logger.info("baseline evaluation cached in %s", self.path)
