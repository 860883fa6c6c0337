"""Rebuild the edited model of a run from its journal, without optimising any target.

    python -m betaedit_plugin.run replay results/smollm2-counterfact-n1000/betaedit
    python -m betaedit_plugin.run replay runs/x/betaedit --save edited.safetensors   # or a directory

`replay_run` reads the folder's ``results.json`` (the run's configuration) and ``journal/``,
loads the model and the statistics, writes every journaled step from its z* (keys, residuals and
updates recomputed, as in the run), checks the weights' fingerprints where the journal has them,
then scores the last journaled step like the run did and compares with the recorded metrics.
Nothing in the folder is written.

    python -m betaedit_plugin.run replay DIR --from-checkpoint            # the newest checkpoint's weights
    python -m betaedit_plugin.run replay DIR --from-checkpoint --amend    # ... and add what the point lacks

``--from-checkpoint`` loads the newest verified checkpoint instead of replaying the journal (minutes
instead of an edit's cost per journaled step; the journal's fingerprint at that step is checked
where it has one) and scores that step. `amend_point` adds to the recorded point at that step the
per-case ``outcomes`` it did not keep (points written before token locality's were kept), and only
when the new scoring reproduced every recorded metric: a point's numbers never change, it gains
the detail a paired comparison needs. That writes results.json (out_dir held, as a run holds it);
the checkpoint's own copy stays as it was (its manifest covers it).

    python -m betaedit_plugin.run replay DIR --every-point --amend       # every recorded point on the way

``--every-point`` re-scores, as the journal is replayed, every earlier step results.json records a
point at (``on_point``), so that with ``--amend`` each of them gains its per-case outcomes: what the
paired differences at every point (`betaedit_plugin.eval.report.difference_series`) need. It costs a
replay plus one evaluation per point; with ``--amend`` the last point is not scored again where it
kept its outcomes already.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

from .config import validate_config
from .errors import ConfigError
from .identity import identity_difference
from .inputs import build_hparams, load_requests
from .journal import Journal, JournalError, compare_fingerprint
from .results import RunResults

logger = logging.getLogger(__name__)

__all__ = ["replay_run", "metric_differences", "save_weights", "amend_point", "add_outcomes"]

#: metrics compared between the recorded and the replayed final point (those that exist in both)
COMPARED = ("efficacy", "generality", "specificity", "rewrite_acc", "rephrase_acc", "locality_acc",
            "ppl", "fluency", "mmlu_acc", "rel_leakage", "perturbation")


def replay_run(src, *, save: Optional[str] = None, evaluate: bool = True, device: Optional[str] = None,
               from_checkpoint: bool = False, on_point: Optional[Callable[[Dict[str, Any]], None]] = None,
               at_steps: Optional[Iterable[int]] = None) -> Dict[str, Any]:
    """Replay the journal in ``src`` (an out_dir or a published results folder).

    Args:
        save: write the edited model there: a ``.safetensors`` file (the model's state dict) or a
            directory (``save_pretrained`` of the model and its tokenizer).
        evaluate: score the last journaled step and compare with the recorded point.
        device: run on this device instead of the run's ``hparams.device``.
        from_checkpoint: load the newest checkpoint in ``src`` (verified against the run's identity
            and its digests) instead of replaying the journal; its step is the one scored.
        on_point: while the journal is replayed, also score every earlier step at which results.json
            records an evaluation point (the unedited model's at 0 included, before the first edit) and
            call ``on_point(replayed point)`` there, before the replay goes on (e.g. to amend it:
            `amend_point`); not with ``from_checkpoint``.
        at_steps: with ``on_point``, only these of the recorded steps (e.g. the points that lack outcomes),
            the last one included: where it is not among them, it is not scored again (no "replayed"),
            and without ``save`` the replay stops after the last of them (``steps`` says where).
    Returns:
        {"steps" (edits replayed), "last_step" (the journal's), "replay_s", "fingerprints", "identical",
         "max_rel_diff", "recorded", "replayed", "differences": {metric: |recorded - replayed|}}.
    Raises:
        ConfigError: no results.json or journal, a journal of another run, or a replay that diverges
            (the step and layer named); with ``from_checkpoint``, no usable checkpoint.
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
    if on_point is not None and (from_checkpoint or not evaluate):
        raise ConfigError(f"replay {str(src)!r}: scoring every recorded point needs the journal replayed and evaluated; "
                          "drop --from-checkpoint and --no-eval")
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

    out: Dict[str, Any] = {"last_step": journal.last_step, "fingerprints": 0, "identical": 0, "max_rel_diff": 0.0}

    def check_fingerprint(record) -> None:
        try:
            got = compare_fingerprint(record.fingerprint, setup.fingerprint(), record.step)
        except JournalError as exc:
            raise ConfigError(f"replay {str(src)!r}: {exc}") from None
        out["fingerprints"] += 1
        out["identical"] += int(got["identical"])
        out["max_rel_diff"] = max(out["max_rel_diff"], got["max_rel_diff"])

    wanted = None if at_steps is None or on_point is None else set(at_steps)
    t0, step, stopped = time.perf_counter(), 0, False
    if from_checkpoint:
        step = _load_checkpoint(src, editor, results.identity or {})
        for record in journal.records:
            if record.step == step and record.fingerprint is not None:
                check_fingerprint(record)
    else:
        recorded_steps = {p.get("step") for p in results.evals} if on_point is not None else set()
        if wanted is not None:
            recorded_steps &= wanted
        # with the steps to score given and no model to save, the edits after the last of them are not replayed
        stop_at = max(wanted, default=0) if wanted is not None and not save else None

        def score(at: int) -> None:
            nonlocal t0
            t1 = time.perf_counter()
            on_point(setup.evaluator.evaluate(at, editor.weight_deltas))
            t0 += time.perf_counter() - t1  # replay_s counts the edits, not the scoring

        if 0 in recorded_steps:
            score(0)
        for record in journal.records:
            if stop_at is not None and step >= stop_at:
                stopped = True
                break
            editor.apply(requests[step: record.step], z_star=record.z_star)
            step = record.step
            if record.fingerprint is not None:
                check_fingerprint(record)
            if 0 < step < journal.last_step and step in recorded_steps:
                score(step)
    out["steps"] = step
    out["replay_s"] = time.perf_counter() - t0
    logger.info("%s %d edits in %.1f s", "loaded the checkpoint of" if from_checkpoint else "replayed", step, out["replay_s"])

    if evaluate and not stopped and (wanted is None or step in wanted):
        recorded = results.point(step)
        point = setup.evaluator.evaluate(step, editor.weight_deltas)
        out["replayed"] = point
        out["recorded"] = recorded
        out["differences"] = metric_differences(recorded, point) if recorded is not None else {}
    if save:
        out["saved"] = str(save_weights(setup.model, setup.tok, save))
    return out


def _load_checkpoint(src: Path, editor, identity) -> int:
    """Load the newest verified checkpoint of ``src`` into ``editor`` (weights included); its step."""
    from .._fileio import IntegrityError
    from .checkpoint import CheckpointError, latest_checkpoint

    try:
        ckpt = latest_checkpoint(src, identity)
    except CheckpointError as exc:
        raise ConfigError(f"replay {str(src)!r} --from-checkpoint: {exc}") from None
    if ckpt is None:
        raise ConfigError(f"replay {str(src)!r} --from-checkpoint: no checkpoint in {str(src / 'checkpoints')!r} "
                          "(checkpoints stay on the machine that wrote them)", fix="replay the journal: drop --from-checkpoint")
    try:
        ckpt.load_into(editor)
    except (IntegrityError, ValueError) as exc:
        raise ConfigError(f"replay {str(src)!r} --from-checkpoint: checkpoint {ckpt.path.name}: {exc}") from None
    return ckpt.step


#: how closely a re-scored point must reproduce the recorded one before `amend_point` adds to it:
#: shares of cases exactly (they are counts), the rest to float noise of another thread count
_REPRODUCED = {"efficacy": 0.0, "generality": 0.0, "specificity": 0.0, "rewrite_acc": 1e-9, "rephrase_acc": 1e-9,
               "locality_acc": 1e-9}
_REPRODUCED_REL = 1e-4


def amend_point(src, replayed: Dict[str, Any]) -> list:
    """Add to ``src``'s recorded point at ``replayed["step"]`` the ``outcomes`` it lacks, from ``replayed``
    (a re-scoring of the same model on the same cases: `replay_run`). Returns the outcomes added
    (empty: nothing to add, nothing written).

    A point written before points kept the digest of their cases (``scored_cases``) gains it too, where
    it scored as many cases and every metric was reproduced (the sample is a function of the step,
    the seed and the run's size: `eval_sample`): the paired differences need it.

    Raises:
        ConfigError: no recorded point at that step, other cases scored (or as many cases as the
            digest-less point had not), or a metric not reproduced (named with both values): then
            nothing is written.
    """
    from .._fileio import atomic_write_text
    from .experiment import _read_results
    from .paths import hold_out_dir

    src = Path(src)
    step = replayed["step"]
    with hold_out_dir(src):
        try:
            results = RunResults.from_json(_read_results(src / "results.json"))
        except ValueError as exc:
            raise ConfigError(f"replay --amend {str(src)!r}: {exc}") from None
        point = results.point(step)
        if point is None:
            raise ConfigError(f"replay --amend: {str(src)!r} records no evaluation at step {step}; nothing to amend")
        digest = point.get("scored_cases")
        if digest is None and point.get("n_scored") != replayed.get("n_scored"):
            raise ConfigError(f"replay --amend: the point at {step} scored {point.get('n_scored')!r} cases, the "
                              f"re-scoring {replayed.get('n_scored')!r}; nothing written")
        if digest is not None and digest != replayed.get("scored_cases"):
            raise ConfigError(f"replay --amend: the point at {step} scored other cases ({digest!r}, "
                              f"re-scored {replayed.get('scored_cases')!r}); nothing written")
        for key, diff in metric_differences(point, replayed).items():
            a = abs(float(point[key]))
            if diff > _REPRODUCED.get(key, _REPRODUCED_REL * max(a, 1e-12)):
                raise ConfigError(f"replay --amend: {key} at step {step} not reproduced (recorded {point[key]!r}, "
                                  f"re-scored {replayed[key]!r}); nothing written")
        added = add_outcomes(point.setdefault("outcomes", {}), replayed.get("outcomes") or {})
        if added and digest is None:  # a point from before the digest: the same sample (n_scored and every
            point["scored_cases"] = replayed["scored_cases"]  # metric reproduced) gains it, to pair with others
            added.append("scored_cases")
        if added:
            atomic_write_text(src / "results.json", results.dumps())
            logger.info("added %s to the point at step %d of %s", ", ".join(added), step, src / "results.json")
    return added


def add_outcomes(kept: Dict[str, Any], new: Dict[str, Any]) -> list:
    """Add to a point's ``kept`` outcomes each of ``new`` (a re-scoring on the same cases) it lacks, and
    ``groups`` (how many comparisons each request added) for every kept metric whose groups it lacks:
    a metric added later, or a point written before its groups were kept. Returns the keys added
    ("groups" where any group was)."""
    added = [k for k in new if k not in kept and k != "groups"]
    kept.update({k: new[k] for k in added})
    have = kept.get("groups") or {}
    groups = {m: g for m, g in (new.get("groups") or {}).items() if m in kept and m not in have}
    if groups:
        kept["groups"] = {**have, **groups}
        added.append("groups")
    return added


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
