"""One run: a method on a model and a dataset for ``num_edits`` sequential edits.

`run_experiment(cfg)` validates the configuration (`betaedit_plugin.runner.config`), loads the
model and the statistics, edits step by step with a `BetaEditor`, evaluates every ``eval_every``
edits (`Evaluator`), checkpoints every ``checkpoint_every`` edits and resumes from the last
checkpoint with ``resume=true`` (`betaedit_plugin.runner.checkpoint`). It writes into ``out_dir``:

* ``results.json``: resolved config, hyperparameters, every evaluation point, per-edit log, timing;
* ``metrics.csv``: one row per evaluation point;
* ``*.png``: efficacy, specificity, capability, leakage and perturbation against the number of edits;
* ``report.md``: a before/after table;
* ``checkpoints/step-<t>/``: atomic checkpoints, also where a run stops early (``stop_after``, a
  signal: `betaedit_plugin.runner.stopping`);
* ``.betaedit-run.lock`` / ``.betaedit-run.pid`` while the run holds ``out_dir``, taken before
  anything is written there (`betaedit_plugin.runner.paths`): a second run on it is refused with
  the holder's pid and touches nothing of it; the OS releases the lock if the holder dies.

Runs whose ``out_dir`` lies in ``run_root`` (the default; a multirun over methods shares it) update
``<run_root>/comparison.md`` and comparison plots with one line per method (`compare`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from .._fileio import IntegrityError
from .checkpoint import CheckpointError, atomic_write_text, latest_checkpoint, list_checkpoints, write_checkpoint
from .baseline import default_baseline_dir
from .compare import update_comparison
from .config import validate_config
from .errors import ConfigError
from .evaluation import Evaluator
from .identity import config_hash, identity_difference, run_identity
from .inputs import build_hparams, check_mmlu, data_key, hparams_file, load_requests
from .journal import (Journal, JournalError, StepRecord, TargetSource, compare_fingerprint, request_fields, target_fields,
                      weights_fingerprint)
from .paths import RUN_LOCK, RUN_PID, check_cache_dirs, check_out_dir_path, hold_out_dir, remove_stale_temporaries  # noqa: F401
from .results import RESULTS_FORMAT, RunResults
from .stopping import RunInterrupted, signal_name, stop_between_edits

logger = logging.getLogger(__name__)

__all__ = ["run_experiment", "check_run", "check_out_dir", "RESULTS_FORMAT", "RunResults", "EditSetup", "set_up_editing"]


@dataclass
class EditSetup:
    """A run's model made ready to edit (`set_up_editing`): shared by a run and by `replay_run`."""

    model: Any
    tok: Any
    layout: Any
    prior_covs: Any
    base_weights: dict
    editor: Any
    evaluator: Optional[Evaluator]

    def fingerprint(self) -> dict:
        """The edited layers' fingerprint against their weights before editing."""
        weights = {l: self.layout.read_weight(self.model, l) for l in self.base_weights}
        return weights_fingerprint(weights, self.base_weights)


def set_up_editing(cfg: Mapping, hparams, requests, *, evaluate: bool, context_templates=None,
                   timing: Optional[dict] = None, progress: bool = False) -> EditSetup:
    """Load the model, check ``hparams.layers`` against it, collect (or load) the statistics, note the
    edited layers' weights and build the evaluator (``evaluate``) and the editor.

    ``context_templates``: those of the run's journal (or targets), or None to sample them;
    ``timing``: gets ``load_model_s`` and ``statistics_s``.
    """
    from ..covariance import stats_for_hparams
    from ..editor import BetaEditor
    from ..models.layout import ModelLayout

    timing = {} if timing is None else timing
    with _timed(timing, "load_model_s"):
        model, tok = _load_model(cfg, hparams)
    layout = ModelLayout.from_model(model, hparams)
    try:
        layout.check_layers(hparams.layers, hparams.v_loss_layer)
    except ValueError as exc:
        raise ConfigError.inside("hparams", exc, f" (model {cfg['model']['name']})") from None
    with _timed(timing, "statistics_s"):
        prior_covs = stats_for_hparams(model, tok, hparams, layout, progress=progress)
    base_weights = {l: layout.read_weight(model, l) for l in hparams.layers}
    evaluator = None
    if evaluate:
        cache_dir = default_baseline_dir() if cfg.get("baseline_cache", True) else None
        evaluator = Evaluator.build(model, tok, requests, cfg, prior_covs, base_weights, cache_dir=cache_dir)
    editor = BetaEditor(model, tok, hparams, prior_covs=prior_covs, context_templates=context_templates)
    return EditSetup(model, tok, layout, prior_covs, base_weights, editor, evaluator)


@dataclass
class _Run:
    """Everything one run holds while it edits and evaluates."""

    cfg: dict
    setup: EditSetup
    results: RunResults
    timing: dict = field(default_factory=dict)
    journal: Optional[Journal] = None
    targets: Optional[TargetSource] = None

    @property
    def editor(self):
        return self.setup.editor

    @property
    def evaluator(self) -> Optional[Evaluator]:
        return self.setup.evaluator

    def evaluate(self, step: int) -> dict:
        point = self.evaluator.evaluate(step, self.editor.weight_deltas)
        if step > 0 and self.journal is not None:
            self.journal.add_fingerprint(self.fingerprint())
        return point

    def fingerprint(self) -> dict:
        return self.setup.fingerprint()


# ============================================================================ checks before any work
def check_out_dir(cfg: Mapping, identity: Mapping, verify_files: bool = True, hparams=None):
    """Verify what ``out_dir`` holds; returns the checkpoint to resume from (or None).

    ``verify_files=False`` checks the manifest and identity only (the command line's pre-check).
    With ``hparams`` (the resolved hyperparameters) and ``resume=true``, the run found there must
    have begun with the same ones: its identity holds the config's ``hparams.X`` overrides only,
    not what the YAML said, and a YAML edited since would otherwise go on silently with other
    settings (a checkpoint refuses that, a replay of the journal would only diverge later).

    Raises:
        ConfigError: out_dir is not a directory, a checkpoint or results.json of a run with another
            config, an unreadable results.json, a corrupt checkpoint, or (resuming) a run begun
            with other resolved hyperparameters.
    """
    out_dir = Path(cfg["out_dir"])
    check_out_dir_path(out_dir)  # a file, a link loop, a dangling link
    try:
        ckpt = latest_checkpoint(out_dir, identity, verify_files)
    except CheckpointError as exc:
        raise ConfigError.about("out_dir", str(out_dir), exc) from None
    results_file = out_dir / "results.json"
    if results_file.is_file():
        previous = _read_results(results_file)
        diff = identity_difference(previous.get("identity", {}), identity) if "identity" in previous else None
        if diff is not None:
            key, theirs, ours = diff
            raise ConfigError(f"holds results of another run ({key}={theirs!r} there, {ours!r} here)", field="out_dir",
                              value=str(out_dir), fix="use another out_dir or delete it", sep=" ")
        if hparams is not None and cfg["resume"]:
            _check_resolved_hparams(cfg, previous.get("hparams"), hparams, "results.json")
    if Journal.exists(out_dir):
        journal = _check_journal(out_dir, identity, cfg)
        if journal is not None and hparams is not None:
            _check_resolved_hparams(cfg, journal.header.get("hparams"), hparams, "journal")
    return ckpt if cfg["resume"] else None


def _check_resolved_hparams(cfg: Mapping, saved: Any, hparams, where: str) -> None:
    """The hyperparameters a run in ``cfg["out_dir"]`` began with (``saved``: its results.json's, or its
    journal header's) against this config's resolved ones, on the settings that change an edit
    (`EditHyperParams.fingerprint`: not the device, nor the statistics folder). Nothing to compare
    when ``saved`` is absent (a journal written before headers held them). A target bank edits
    nothing: only the settings its z* depend on (`target_fields`) count."""
    if not isinstance(saved, Mapping):
        return
    here = target_fields(hparams) if cfg["mode"] == "bank" else hparams.fingerprint()
    here = json.loads(json.dumps(here, default=str))
    saved = json.loads(json.dumps({k: saved[k] for k in here if k in saved}, default=str))
    for key in sorted(here, key=str):
        if key in saved and saved[key] != here[key]:
            raise ConfigError(
                f"holds a run begun with hparams.{key}={saved[key]!r} (its {where}); this configuration resolves it to "
                f"{here[key]!r} (was {str(hparams_file(cfg))!r} changed since?)", field="out_dir",
                value=str(cfg["out_dir"]), sep=" ",
                fix=f"continue it with the YAML it began with (hparams_dir=<a folder with <Alg>/<model>.yaml as it was>, "
                    f"e.g. from `git show`), or use another out_dir")


def _check_journal(out_dir: Path, identity: Mapping, cfg: Mapping) -> Optional[Journal]:
    """The journal in ``out_dir``, verified and of this run (ConfigError naming the field otherwise);
    None when it holds no step yet."""
    try:
        journal = Journal.open(out_dir, chunk_size=cfg.get("journal_chunk", 50))
    except JournalError as exc:
        raise ConfigError.about("out_dir", str(out_dir), exc) from None
    if not journal.records:
        return None  # a header alone (a run stopped by a user error before its first edit): it is started again
    diff = identity_difference(journal.header.get("identity", {}), identity)
    if diff is not None:
        key, theirs, ours = diff
        raise ConfigError(f"holds the journal of another run ({key}={theirs!r} there, {ours!r} here)", field="out_dir",
                          value=str(out_dir), fix="use another out_dir, or the same settings to continue it", sep=" ")
    if not cfg["resume"]:
        raise ConfigError(
            f"holds the journal of {journal.last_step} edits of this run", field="out_dir", value=str(out_dir), sep=" ",
            fix=f"resume=true continues it (it is replayed if no checkpoint is left); to start over delete "
                f"{str(out_dir / 'journal')!r}",
        )
    return journal


def _read_results(path: Path) -> dict:
    """A results.json as a dict; ConfigError naming the file when it is not one (truncated, edited).
    (A mapping, not `RunResults`: a results.json of another run is read for its identity only.)"""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"{str(path)!r} is unreadable ({type(exc).__name__}: {exc}); it is not results.json of a run this "
            "can continue: delete it (a checkpoint holds the results up to its step) or use another out_dir"
        ) from None
    if not isinstance(results, dict):
        raise ConfigError(f"{str(path)!r} holds a {type(results).__name__}, not a run's results; delete it or use another out_dir")
    return results


def check_run(cfg: Any, verify_files: bool = True) -> tuple:
    """Every check that needs no model: config, hyperparameters, data, MMLU probe, what out_dir holds.

    Returns:
        (plain config dict, identity, hparams, requests, checkpoint to resume from or None).
    Raises:
        ConfigError: naming the key, the value and a fix.
    """
    cfg = validate_config(cfg)
    identity = run_identity(cfg)
    hparams = build_hparams(cfg)
    if cfg.get("targets"):
        identity["targets"] = _open_targets(cfg, hparams).header["config_hash"]  # where they lie is no part of the run
    _check_device(hparams)
    check_cache_dirs(hparams)
    requests = load_requests(cfg)
    check_mmlu(cfg)
    ckpt = check_out_dir(cfg, identity, verify_files=verify_files, hparams=hparams)
    return cfg, identity, hparams, requests, ckpt


def _open_targets(cfg: Mapping, hparams) -> TargetSource:
    """The run's fixed targets, checked against its model and the settings z* depends on."""
    try:
        source = TargetSource.open(cfg["targets"])
        source.check_compatible(cfg["model"], target_fields(hparams))
    except JournalError as exc:
        raise ConfigError.naming("targets", exc) from None
    return source


def _check_device(hparams) -> None:
    """The device of ``hparams.device`` exists here (ConfigError otherwise)."""
    from ..models.devices import resolve_device
    from ..errors import DeviceError

    try:
        resolve_device(hparams.device, "hparams.device")
    except DeviceError as exc:
        raise ConfigError.naming("hparams.device", exc) from None


@contextlib.contextmanager
def _timed(timing: dict, key: str):
    """Add the wall time of the block to ``timing[key]`` (seconds)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0


def _load_model(cfg: dict, hparams):
    from ..models import load_model
    from ..models.devices import place_model

    try:
        model, tok = load_model(cfg["model"]["path"])
    except KeyError as exc:
        raise ConfigError(exc.args[0], field="model.path", value=cfg["model"]["path"]) from None
    device_map = cfg["model"].get("device_map")
    if device_map is None and (cfg["model"].get("model_parallel") or hparams.model_parallel):
        device_map = "auto"
    return place_model(model, hparams.device, device_map=device_map).eval(), tok


# ============================================================================ the run
def run_experiment(cfg: Any) -> dict:
    """Run one method on one model and dataset for ``num_edits`` sequential edits.

    Args:
        cfg: the composed configuration (a Hydra ``DictConfig`` or a plain mapping with the keys of
            `betaedit_plugin.runner.config.run_config_class` and the groups ``method``, ``model``, ``data``).

    Returns:
        the results also written to ``<out_dir>/results.json`` (`RunResults.to_json`): ``config``, ``identity``,
        ``config_hash``, ``hparams``, ``evals`` (evaluation points at step 0, every ``eval_every``
        edits and at the end), ``edits`` (per-edit log), ``timing`` (seconds per phase),
        ``status`` ("complete" or "stopped"), ``edits_done``.

    Raises:
        ConfigError: bad configuration or data, or an out_dir that holds another run; raised before
            anything is written. Also when another live process runs in ``out_dir`` (its pid named).
        RunInterrupted: a SIGINT or SIGTERM stopped the edit loop after an edit (`stopping`), once the
            stopped run's checkpoint and results were written; a KeyboardInterrupt (also a
            RunInterrupted, for SIGTERM) when a second signal, or one outside the loop, stopped it at once.
    """
    cfg, identity, hparams, requests, _ = check_run(cfg, verify_files=False)
    with hold_out_dir(cfg["out_dir"]):  # before anything is written; a user error puts out_dir back
        ckpt = check_out_dir(cfg, identity, hparams=hparams)  # what out_dir holds now that no other run can change it
        remove_stale_temporaries(cfg["out_dir"])
        return _run_locked(cfg, identity, hparams, requests, ckpt)


def _run_locked(cfg: dict, identity: Mapping, hparams, requests, ckpt) -> dict:
    """`run_experiment` after its checks, with ``out_dir`` held; returns `RunResults.to_json`."""
    import torch

    out_dir = Path(cfg["out_dir"])
    random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    bank = cfg["mode"] == "bank"
    journal = _check_journal(out_dir, identity, cfg) if Journal.exists(out_dir) else None
    targets = _open_targets(cfg, hparams) if cfg.get("targets") else None

    # the journal's (or the targets') context templates: they were sampled from the model once
    templates = journal.header["context_templates"] if journal is not None else None
    if templates is None and targets is not None:
        templates = targets.context_templates
    timing: dict = {}
    setup = set_up_editing(cfg, hparams, requests, evaluate=not bank, context_templates=templates, timing=timing,
                           progress=cfg["progress"])
    editor = setup.editor
    results = RunResults(
        protocol=_protocol(cfg) if (bank or targets is not None) else None,
        method=cfg["method"]["name"],
        alg_name=hparams.alg_name,
        model=cfg["model"]["name"],
        data=cfg["data"]["name"],
        config=cfg,
        identity=identity,
        config_hash=config_hash(identity),
        hparams=hparams.to_dict(),
        skipped_invalid=[asdict(b) for b in getattr(requests, "skipped", [])],
    )
    run = _Run(cfg, setup, results, timing, journal, targets)
    if ckpt is not None:
        start = _resume(run, ckpt)
    else:
        if cfg["resume"] and journal is None:
            logger.warning("resume=true but no checkpoint or journal in %s: starting from edit 0", out_dir)
        if list_checkpoints(out_dir):
            logger.warning("out_dir %s holds checkpoints of this config; starting over (resume=false)", out_dir)
            shutil.rmtree(out_dir / "checkpoints")
        start = 0
        with _timed(timing, "projector_s"), _user_errors(cfg):  # projector from C0 and the context templates
            editor.prepare()
    with _user_errors(cfg):
        editor.check_requests(requests)  # before any weight changes: every case fits the model
    if journal is None and start == 0:
        run.journal = Journal.create(
            out_dir, kind="bank" if bank else "run", identity=identity, config_hash=config_hash(identity),
            context_templates=editor.context_templates, target_fields=target_fields(hparams),
            hparams=hparams.fingerprint(), chunk_size=cfg["journal_chunk"],
        )
    elif journal is None:
        logger.warning("%s has no journal (the run started before journals existed): it is not journaled", out_dir)
    if run.journal is not None and run.journal.last_step > start:
        start = _replay(run, requests, start)
    if start == 0 and not bank and not results.has_point(0):
        with _timed(timing, "eval_total_s"):
            results.add_point(run.evaluate(0))
    stopped_by = _edit_loop(run, requests, start)
    if run.journal is not None and results.complete:
        run.journal.seal()  # a finished run's journal is chunks only: nothing in it changes again
    _finish_timing(run)
    _save_outputs(run, final=True)
    if not bank:
        update_comparison(cfg)
    if stopped_by is not None:  # after everything a stopped run writes: resume=true continues from here
        raise RunInterrupted(stopped_by, step=results.edits_done, out_dir=str(out_dir))
    return results.to_json()


def _protocol(cfg: Mapping) -> str:
    """First line of a run's results that is not the sequential protocol."""
    if cfg["mode"] == "bank":
        return "target bank: z* of each record computed on the unedited model (MEMIT's mass-editing targets); nothing is edited"
    return (f"fixed targets from {cfg['targets']}: z* read from there, not re-optimised on the edited model "
            "(screening, not the sequential protocol)")


def _edit_loop(run: _Run, requests, start: int) -> Optional[int]:
    """Steps ``start ..`` to ``num_edits`` (or ``stop_after``): edit (or, for a bank, compute z*), journal,
    evaluate every ``eval_every`` edits, checkpoint every ``checkpoint_every`` and where the loop stops
    early. A SIGINT or SIGTERM stops it after the edit in progress (`stopping`): returns that signal's
    number (None when the loop ran to its end)."""
    from tqdm.auto import tqdm

    cfg, results, editor, timing = run.cfg, run.results, run.editor, run.timing
    bank = cfg["mode"] == "bank"
    out_dir = Path(cfg["out_dir"])
    n, bs, every, ck = cfg["num_edits"], cfg["batch_size"], cfg["eval_every"], cfg["checkpoint_every"]
    stop = cfg["stop_after"] or n
    bar = tqdm(total=n, initial=start, desc=cfg["method"]["name"], disable=not cfg["progress"], unit="edit")
    if results.evals:
        bar.set_postfix(_postfix(results.last_point))
    step = checkpointed = start

    def checkpoint() -> None:
        nonlocal checkpointed
        _finish_timing(run)
        write_checkpoint(out_dir, step, identity=results.identity, save_editor_state=editor.save_state,
                         results=results.to_json(), keep=cfg["keep_checkpoints"])
        checkpointed = step

    with stop_between_edits(lambda: f"edit {step + 1} of {n}") as stop_request:
        try:
            while step < min(n, stop) and not stop_request:
                batch = requests[step: min(step + bs, n, stop)]
                if cfg.get("targets_wait") and not run.targets.holds(batch):
                    logger.warning("targets=%s hold no z* for edit %d (case_id %s) yet: stopping here; resume=true "
                                   "continues once they do", cfg["targets"], step + 1, [r.case_id for r in batch])
                    break
                t0 = time.perf_counter()
                with _user_errors(cfg, f"the batch of edits {step + 1}-{step + len(batch)}: "):
                    if bank:
                        info = {"z_star": editor.compute_targets(batch).detach().to("cpu"), "delta_norm": {}}
                    else:
                        z_star = _fixed_targets(run, batch) if run.targets is not None else None
                        info = editor.apply(batch, z_star=z_star)
                seconds = time.perf_counter() - t0
                prev, step = step, step + len(batch)
                if run.journal is not None:
                    run.journal.append(StepRecord(step, [request_fields(r) for r in batch], info["z_star"]))
                results.log_edit(step, [r.case_id for r in batch], seconds, info)
                if not bank and (step // every > prev // every or step == n):
                    with _timed(timing, "eval_total_s"):
                        results.add_point(run.evaluate(step))
                    bar.set_postfix(_postfix(results.last_point))
                if run.journal is not None:
                    run.journal.maybe_seal()
                if step // every > prev // every or step == n:
                    _finish_timing(run)
                    _save_outputs(run, final=False)  # results.json / metrics.csv readable while the run goes on
                bar.update(len(batch))
                if not bank and ck and step // ck > prev // ck:
                    checkpoint()
            if not bank and start < step < n and step != checkpointed:  # stopped early: resume here, not by a replay
                checkpoint()
        finally:
            bar.close()
    results.finish(step, n)
    if stop_request and step >= n:
        logger.warning("%s came during the last edit: the run is complete", signal_name(stop_request.signum))
        return None
    return stop_request.signum


def _fixed_targets(run: _Run, batch):
    try:
        return run.targets.lookup(batch)
    except JournalError as exc:
        raise ConfigError.naming("targets", exc) from None


def _replay(run: _Run, requests, start: int) -> int:
    """Write the journaled steps after ``start`` from their journaled z* (no value optimisation), checking
    the weights' fingerprints on the way; evaluation points missing from the results are evaluated.
    Returns the step reached (the journal's last)."""
    cfg, journal, results = run.cfg, run.journal, run.results
    last = journal.last_step
    try:
        journal.check_requests(requests, last)
    except JournalError as exc:
        raise ConfigError.about("out_dir", cfg["out_dir"], exc) from None
    # results of the run up to the journal's last step (results.json is written at evaluation points)
    previous = _previous_results(Path(cfg["out_dir"]), results.identity)
    if previous is not None and len(previous.edits) >= len(results.edits):
        results.take_history(previous)
    results.truncate(last)
    logged = results.logged_steps()
    bank = cfg["mode"] == "bank"
    if start == 0 and not bank and not results.has_point(0):
        with _timed(run.timing, "eval_total_s"):
            results.add_point(run.evaluate(0))
    every, n = cfg["eval_every"], cfg["num_edits"]
    logger.info("replaying steps %d-%d of the journal (z* journaled, not optimised)", start + 1, last)
    t_all = time.perf_counter()
    checked = {"fingerprints": 0, "identical": 0, "max_rel_diff": 0.0}
    step = start
    for record in journal.records:
        if record.step <= start:
            continue
        batch = requests[step: record.step]
        t0 = time.perf_counter()
        if bank:
            info = {"delta_norm": {}}
        else:
            with _user_errors(cfg, f"replaying the batch of edits {step + 1}-{record.step}: "):
                info = run.editor.apply(batch, z_star=record.z_star)
        prev, step = step, record.step
        if step not in logged:  # the edit log of results.json keeps the seconds the edit first took
            results.log_edit(step, [r.case_id for r in batch], time.perf_counter() - t0, info, replayed=True)
        if record.fingerprint is not None and not bank:
            try:
                got = compare_fingerprint(record.fingerprint, run.fingerprint(), step)
            except JournalError as exc:
                raise ConfigError.about("out_dir", cfg["out_dir"], exc) from None
            checked["fingerprints"] += 1
            checked["identical"] += int(got["identical"])
            checked["max_rel_diff"] = max(checked["max_rel_diff"], got["max_rel_diff"])
        due = step // every > prev // every or step == n
        if not bank and due and not results.has_point(step):
            with _timed(run.timing, "eval_total_s"):
                point = run.evaluator.evaluate(step, run.editor.weight_deltas)
            results.add_point(point)
    run.timing["replay_s"] = run.timing.get("replay_s", 0.0) + time.perf_counter() - t_all
    results.replayed = {"from_step": start, "to_step": last, **checked}
    logger.info("replayed %d edits in %.1f s; %d fingerprints checked (%d bit-identical, max relative ||D|| difference %.3g)",
                last - start, run.timing["replay_s"], checked["fingerprints"], checked["identical"], checked["max_rel_diff"])
    return last


def _previous_results(out_dir: Path, identity: Mapping) -> Optional[RunResults]:
    """``out_dir/results.json`` of this run, or None (missing, or of another run: check_out_dir refused that)."""
    path = out_dir / "results.json"
    if not path.is_file():
        return None
    previous = _read_results(path)
    if identity_difference(previous.get("identity", {}), identity) is not None:
        return None
    if not isinstance(previous.get("evals"), list) or not isinstance(previous.get("edits"), list):
        return None
    return RunResults.from_json(previous)


@contextlib.contextmanager
def _user_errors(cfg: Mapping, where: str = ""):
    """Hyperparameters that do not work on this model, and requests it cannot take, as ConfigError
    naming the key (``hparams.<field>``, ``data.<path|split>``)."""
    from ..errors import HyperParamsError, RequestError

    try:
        yield
    except HyperParamsError as exc:
        raise ConfigError.inside("hparams", exc) from None
    except RequestError as exc:
        data = cfg["data"]
        raise ConfigError(f"{where}{exc}", field=data_key(data), value=data.get("path") or data.get("split"),
                          sep=", ") from None


def _resume(run: _Run, ckpt) -> int:
    """Load a verified checkpoint into the editor (its weights included) and the results; returns its step."""
    previous = _read_results(ckpt.file("results.json"))
    if not isinstance(previous.get("evals"), list) or not isinstance(previous.get("edits"), list):
        raise ConfigError(f"{str(ckpt.file('results.json'))!r} lacks 'evals' or 'edits'",
                          fix=f"delete checkpoint {ckpt.path.name}")
    try:
        ckpt.load_into(run.editor)
    except IntegrityError as exc:
        raise ConfigError(f"checkpoint {ckpt.path.name}: {exc}", field="out_dir", value=run.cfg["out_dir"]) from None
    except ValueError as exc:
        raise ConfigError(f"checkpoint {ckpt.path.name} does not fit this run ({exc})", field="out_dir",
                          value=run.cfg["out_dir"], fix="delete it") from None
    run.results.take_history(RunResults.from_json(previous))
    run.results.resumed_from = ckpt.step
    logger.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
    return ckpt.step


def _save_outputs(run: _Run, final: bool) -> None:
    from ..eval.plots import plot_runs
    from ..eval.report import before_after_table, write_metrics_csv

    out_dir = Path(run.cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    results = run.results
    atomic_write_text(out_dir / "results.json", results.dumps())
    if run.cfg["mode"] == "bank":
        return  # no evaluation points
    write_metrics_csv(results.evals, out_dir / "metrics.csv")
    if final:
        label = run.cfg["method"]["name"]
        results.plots = [p.name for p in plot_runs({label: results.evals}, out_dir)]
        atomic_write_text(out_dir / "results.json", results.dumps())
        first = f"> {results.protocol}\n\n" if results.protocol is not None else ""
        atomic_write_text(
            out_dir / "report.md",
            first + f"# {label} on {run.cfg['model']['name']}, {run.cfg['data']['name']}, {results.edits_done} edits\n\n"
            + before_after_table(results.evals) + "\n",
        )


def _postfix(point: Mapping) -> dict:
    keys = (("efficacy", "eff"), ("generality", "gen"), ("specificity", "spec"), ("ppl", "ppl"))
    return {short: f"{point[k]:.3g}" for k, short in keys if isinstance(point.get(k), float) and math.isfinite(point[k])}


def _finish_timing(run: _Run) -> None:
    run.results.finish_timing(run.timing)
