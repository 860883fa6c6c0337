"""Rebuild the edited model of a run from its journal, without optimising any target.

    python -m betaedit_plugin.run replay results/smollm2-counterfact-n1000/betaedit
    python -m betaedit_plugin.run replay runs/x/betaedit --save edited.safetensors   # or a directory

`replay_run` reads the folder's ``results.json`` (the run's configuration) and ``journal/``,
loads the model and the statistics, writes every journaled step from its z* (keys, residuals and
updates recomputed, as in the run), checks the weights' fingerprints where the journal has them,
then scores the last journaled step like the run did and compares with the recorded metrics.
Nothing in the folder is written.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .config import validate_config
from .errors import ConfigError
from .identity import identity_difference
from .inputs import build_hparams, load_requests
from .journal import Journal, JournalError, compare_fingerprint
from .results import RunResults

logger = logging.getLogger(__name__)

__all__ = ["replay_run", "metric_differences", "save_weights"]

#: metrics compared between the recorded and the replayed final point (those that exist in both)
COMPARED = ("efficacy", "generality", "specificity", "rewrite_acc", "rephrase_acc", "locality_acc",
            "ppl", "fluency", "mmlu_acc", "rel_leakage", "perturbation")


def replay_run(src, *, save: Optional[str] = None, evaluate: bool = True, device: Optional[str] = None) -> Dict[str, Any]:
    """Replay the journal in ``src`` (an out_dir or a published results folder).

    Args:
        save: write the edited model there: a ``.safetensors`` file (the model's state dict) or a
            directory (``save_pretrained`` of the model and its tokenizer).
        evaluate: score the last journaled step and compare with the recorded point.
        device: run on this device instead of the run's ``hparams.device``.
    Returns:
        {"steps", "replay_s", "fingerprints", "identical", "max_rel_diff", "recorded", "replayed",
         "differences": {metric: |recorded - replayed|}}.
    Raises:
        ConfigError: no results.json or journal, a journal of another run, or a replay that diverges
            (the step and layer named).
    """
    from .experiment import _read_results, set_up_editing

    src = Path(src)
    if not (src / "results.json").is_file():
        raise ConfigError(f"replay {str(src)!r}: no results.json there; give a run's out_dir or a published results folder")
    raw = _read_results(src / "results.json")
    if "config" not in raw:
        raise ConfigError(f"replay {str(src)!r}: results.json holds no 'config'; it was not written by the runner")
    try:
        results = RunResults.from_json(raw)
    except ValueError as exc:
        raise ConfigError(f"replay {str(src)!r}: {exc}") from None
    cfg = validate_config({**results.config, "out_dir": str(src), "resume": True})
    if cfg["mode"] == "bank":
        raise ConfigError(f"replay {str(src)!r}: a target bank edits nothing; replay the runs that use it")
    try:
        journal = Journal.open(src)
    except JournalError as exc:
        raise ConfigError(f"replay {str(src)!r}: {exc}") from None
    diff = identity_difference(journal.header.get("identity", {}), results.identity or {})
    if diff is not None:
        key, theirs, ours = diff
        raise ConfigError(f"replay {str(src)!r}: the journal is of another run than results.json ({key}={theirs!r} vs {ours!r})")
    hparams = build_hparams(cfg)
    if device is not None:
        hparams.device = device
    requests = load_requests(cfg)
    try:
        journal.check_requests(requests, journal.last_step)
    except JournalError as exc:
        raise ConfigError(f"replay {str(src)!r}: {exc}") from None

    setup = set_up_editing(cfg, hparams, requests, evaluate=evaluate, context_templates=journal.header["context_templates"])
    editor = setup.editor
    editor.prepare()

    out: Dict[str, Any] = {"steps": journal.last_step, "fingerprints": 0, "identical": 0, "max_rel_diff": 0.0}
    t0, step = time.perf_counter(), 0
    for record in journal.records:
        editor.apply(requests[step: record.step], z_star=record.z_star)
        step = record.step
        if record.fingerprint is not None:
            try:
                got = compare_fingerprint(record.fingerprint, setup.fingerprint(), step)
            except JournalError as exc:
                raise ConfigError(f"replay {str(src)!r}: {exc}") from None
            out["fingerprints"] += 1
            out["identical"] += int(got["identical"])
            out["max_rel_diff"] = max(out["max_rel_diff"], got["max_rel_diff"])
    out["replay_s"] = time.perf_counter() - t0
    logger.info("replayed %d edits in %.1f s", step, out["replay_s"])

    if evaluate:
        recorded = results.point(step)
        point = setup.evaluator.evaluate(step, editor.weight_deltas)
        out["replayed"] = point
        out["recorded"] = recorded
        out["differences"] = metric_differences(recorded, point) if recorded is not None else {}
    if save:
        out["saved"] = str(save_weights(setup.model, setup.tok, save))
    return out


def metric_differences(recorded: Dict[str, Any], replayed: Dict[str, Any]) -> Dict[str, float]:
    """{metric: |recorded - replayed|} over `COMPARED` metrics present (and finite) in both."""
    diffs = {}
    for key in COMPARED:
        a, b = recorded.get(key), replayed.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b):
            diffs[key] = abs(float(a) - float(b))
    return diffs


def save_weights(model, tok, path) -> Path:
    """The edited model: ``*.safetensors`` -> its state dict in one file; anything else -> a
    ``save_pretrained`` directory with the tokenizer."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_model

        from .._fileio import atomic_write

        atomic_write(path, lambda tmp: save_model(model, str(tmp)))  # save_model handles tied weights
        return path
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--save {str(path)!r}: a file that is not .safetensors; give a .safetensors path or a directory")
    model.save_pretrained(path)
    if tok is not None:
        tok.save_pretrained(path)
    return path
