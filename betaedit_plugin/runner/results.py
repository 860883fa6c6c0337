"""`RunResults`: what a run records, typed; ``results.json`` is its `to_json` (format 1).

The file's keys and their order are those the runner has always written::

    [protocol], format, method, alg_name, model, data, config, identity, config_hash, hparams,
    evals, edits, skipped_invalid, status, edits_done, [resumed_from], [replayed], timing, [plots]

(``[...]``: only when set). `from_json` reads any results.json of the runner, older ones
included: keys it does not know are kept in ``extra`` and written back after the others, keys an
older file lacks stay out, so ``from_json(d).to_json() == d``.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["RunResults", "RESULTS_FORMAT"]

RESULTS_FORMAT = 1

#: results.json keys in the order they are written (the optional ones are left out when unset)
_ORDER = ("protocol", "format", "method", "alg_name", "model", "data", "config", "identity", "config_hash", "hparams",
          "evals", "edits", "skipped_invalid", "status", "edits_done", "resumed_from", "replayed", "timing", "plots")
_OPTIONAL = ("protocol", "resumed_from", "replayed", "timing", "plots")
#: timing keys `finish_timing` derives from the edit log and the points (the others are wall time per phase)
_FROM_LOG = ("edit_total_s", "edit_mean_s", "eval_points_s")


@dataclass
class RunResults:
    """One run's results: its configuration, evaluation points, per-edit log, status and timing.

    Attributes:
        evals: evaluation points ({"step": t, metric: value ...}), ordered by step.
        edits: one entry per step written ({"step", "case_ids", "seconds", "delta_norm", "refreshed" ...}).
        status: "running", "stopped" or "complete"; ``edits_done`` the step reached.
        protocol: set when the run is not the sequential protocol (a target bank, fixed targets).
        resumed_from / replayed: the checkpoint step resumed from, the journal steps replayed.
        timing: seconds per phase (`finish_timing`), summed over the processes that ran it (a resumed
            run's earlier ones included); plots: the plot files written at the end.
    """

    method: str
    alg_name: str
    model: str
    data: str
    config: Dict[str, Any]
    identity: Dict[str, Any]
    config_hash: str
    hparams: Dict[str, Any]
    evals: List[Dict[str, Any]] = field(default_factory=list)
    edits: List[Dict[str, Any]] = field(default_factory=list)
    skipped_invalid: List[Dict[str, Any]] = field(default_factory=list)
    status: str = "running"
    edits_done: int = 0
    protocol: Optional[str] = None
    resumed_from: Optional[int] = None
    replayed: Optional[Dict[str, Any]] = None
    timing: Optional[Dict[str, Any]] = None
    plots: Optional[List[str]] = None
    format: int = RESULTS_FORMAT
    extra: Dict[str, Any] = field(default_factory=dict)  # keys of results.json this version does not know
    absent: tuple = ()  # keys the results.json read lacked (an older runner's): not written back
    # seconds per phase of the processes before this one (`take_history`), added by `finish_timing`
    earlier_phases: Dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ evaluation points
    def has_point(self, step: int) -> bool:
        return any(p["step"] == step for p in self.evals)

    def point(self, step: int) -> Optional[Dict[str, Any]]:
        """The evaluation point of ``step``, or None."""
        return next((p for p in self.evals if p.get("step") == step), None)

    def add_point(self, point: Dict[str, Any]) -> None:
        """Add an evaluation point, keeping ``evals`` ordered by step (after points of the same step)."""
        steps = [p["step"] for p in self.evals]
        self.evals.insert(bisect.bisect_right(steps, point["step"]), point)

    @property
    def last_point(self) -> Optional[Dict[str, Any]]:
        return self.evals[-1] if self.evals else None

    # ------------------------------------------------------------------ the edit log
    def log_edit(self, step: int, case_ids: Sequence[Any], seconds: float, info: Mapping, replayed: bool = False) -> None:
        """Record the step that wrote ``case_ids`` (``info``: the editor's, with ``delta_norm`` per layer)."""
        entry = {"step": step, "case_ids": list(case_ids), "seconds": seconds,
                 "delta_norm": {str(k): v for k, v in info["delta_norm"].items()},
                 "refreshed": bool(info.get("refreshed"))}
        if info.get("refresh"):
            entry["refresh"] = info["refresh"]
        if replayed:
            entry["replayed"] = True
        self.edits.append(entry)
        self.edits_done = step

    def logged_steps(self) -> set:
        return {e["step"] for e in self.edits}

    def take_history(self, other: "RunResults") -> None:
        """The evaluation points, edit log and phase timings of ``other`` (an earlier results.json of this run)."""
        self.evals, self.edits = other.evals, other.edits
        self.earlier_phases = {k: v for k, v in (other.timing or {}).items()
                               if k not in _FROM_LOG and isinstance(v, (int, float))}

    def truncate(self, last: int) -> None:
        """Drop evaluation points and edits after step ``last``."""
        self.evals = [p for p in self.evals if p["step"] <= last]
        self.edits = [e for e in self.edits if e["step"] <= last]

    # ------------------------------------------------------------------ status and timing
    def finish(self, step: int, num_edits: int) -> None:
        self.status = "complete" if step >= num_edits else "stopped"
        self.edits_done = step

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def finish_timing(self, phases: Mapping[str, float]) -> None:
        """``timing``: the seconds per phase (``phases``, this process's, plus those of the processes
        before it: `take_history`), and the edit and evaluation totals from the log."""
        seconds = [e["seconds"] for e in self.edits]
        per_edit = sum(seconds) / max(1, sum(len(e["case_ids"]) for e in self.edits)) if self.edits else float("nan")
        summed = dict(self.earlier_phases)
        for key, value in phases.items():
            summed[key] = summed.get(key, 0.0) + value
        self.timing = {
            **summed,
            "edit_total_s": sum(seconds),
            "edit_mean_s": per_edit,
            "eval_points_s": sum(p.get("eval_s", 0.0) for p in self.evals),
        }
        self.edits_done = self.edits[-1]["step"] if self.edits else 0

    # ------------------------------------------------------------------ results.json
    def to_json(self) -> Dict[str, Any]:
        """The results.json mapping (the same keys, order and values the runner has always written)."""
        out: Dict[str, Any] = {}
        for key in _ORDER:
            value = getattr(self, key)
            if (key in _OPTIONAL and value is None) or key in self.absent:
                continue
            out[key] = value
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, default=str)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunResults":
        """A results.json mapping (of any runner version) as RunResults; unknown keys go to ``extra``.

        Raises:
            ValueError: ``evals`` or ``edits`` is not a list.
        """
        for key in ("evals", "edits"):
            if not isinstance(data.get(key, []), list):
                raise ValueError(f"results.json {key!r} is a {type(data[key]).__name__}, not a list")
        known = {k: data[k] for k in _ORDER if k in data}
        required = ("method", "alg_name", "model", "data", "config", "identity", "config_hash", "hparams")
        kwargs = {k: known.get(k) for k in required}
        kwargs.update({k: v for k, v in known.items() if k not in required})
        absent = tuple(k for k in _ORDER if k not in data and k not in _OPTIONAL)
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in _ORDER}, absent=absent)
