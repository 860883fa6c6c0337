"""A run's identity: the config keys that change its results, their hash, and the first difference
between two identities (what refuses an out_dir, a checkpoint or a journal of another run).

Keys added to the configuration after runs were written are left out at their neutral value, so the
identities of existing runs (committed results.json, journals, checkpoints) do not change.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional

from ..methods.base import PLACEMENT_FIELDS

__all__ = ["RUNTIME_KEYS", "run_identity", "config_hash", "identity_difference"]

#: config keys that do not change a run's results (left out of its identity)
RUNTIME_KEYS = ("resume", "out_dir", "run_root", "stop_after", "checkpoint_every", "keep_checkpoints", "progress", "hparams_dir",
                "journal_chunk", "targets_wait", "baseline_cache")


def run_identity(cfg: Mapping) -> dict:
    """The config keys that change a run's results (everything but where/how it runs)."""
    return {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS and k != "hydra"}


#: (group, key) added to the configuration after runs were written, with the value that leaves
#: results as before: left out of the identity at that value, so existing out_dirs still match
_ADDED_KEYS = {("data", "skip_invalid"): False, (None, "mode"): "edit", (None, "targets"): None,
               ("eval", "sample_final"): False}


def _normalised(identity: Mapping) -> dict:
    """An identity without the ``hparams`` overrides left at null (they change nothing) or naming
    where it computes (`PLACEMENT_FIELDS`: a run journaled on a GPU continues on a CPU), so that
    adding a method (and with it override keys) does not change the identity of existing runs;
    likewise without the `_ADDED_KEYS` at their neutral value."""
    out = dict(identity)
    if isinstance(out.get("model"), Mapping):  # where the model runs does not change the results
        out["model"] = {k: v for k, v in out["model"].items() if k not in ("model_parallel", "device_map")}
    if isinstance(out.get("hparams"), Mapping):  # nor does the device it computes on (rounding aside:
        # a replay elsewhere checks the journaled weights' fingerprints, `FINGERPRINT_RTOL`)
        out["hparams"] = {k: v for k, v in out["hparams"].items() if v is not None and k not in PLACEMENT_FIELDS}
    for (group, key), neutral in _ADDED_KEYS.items():
        if group is None:
            if out.get(key, neutral) == neutral:
                out.pop(key, None)
        elif isinstance(out.get(group), Mapping) and out[group].get(key, neutral) == neutral:
            out[group] = {k: v for k, v in out[group].items() if k != key}
    return out


def config_hash(identity: Mapping) -> str:
    """sha256 of the canonical JSON of a run's (normalised) identity."""
    import hashlib

    return hashlib.sha256(json.dumps(_normalised(identity), sort_keys=True, default=str).encode()).hexdigest()


def identity_difference(saved: Mapping, here: Mapping) -> Optional[tuple]:
    """(dotted key, saved value, value here) of the first difference between two run identities,
    or None when they are the same run (null hparams overrides and 1000 vs 1000.0 do not count)."""
    return _first_difference(_normalised(saved), _normalised(here))


def _first_difference(a: Mapping, b: Mapping, prefix: str = "") -> Optional[tuple]:
    for key in sorted(set(a) | set(b), key=str):
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        name = f"{prefix}{key}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            found = _first_difference(va, vb, name + ".")
            if found is not None:
                return found
        elif va != vb and json.dumps(va, default=str, sort_keys=True) != json.dumps(vb, default=str, sort_keys=True):
            return name, va, vb
    return None


