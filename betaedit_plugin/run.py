"""Command line of the benchmark runner: a thin Hydra shell over `betaedit_plugin.runner`.

    python -m betaedit_plugin.run method=betaedit model=smollm2-135m data=counterfact num_edits=20 eval_every=10
    python -m betaedit_plugin.run -m method=memit,alphaedit,betaedit num_edits=200 eval_every=50
    python -m betaedit_plugin.run method=betaedit hparams.lambda1=1000 hparams.layers=[4,5,6]
    python -m betaedit_plugin.run ... resume=true            # continue from the last checkpoint
    python -m betaedit_plugin.run compare runs/a/memit runs/a/betaedit --out runs/a
    python -m betaedit_plugin.run screening runs/screen/*/ --out runs/screen   # fixed-target runs side by side
    python -m betaedit_plugin.run bank data=counterfact num_edits=1000     # z* of each record on the unedited model
    python -m betaedit_plugin.run method=memit targets=runs/bank/smollm2-135m_counterfact_n1000 ...  # fixed targets
    python -m betaedit_plugin.run replay results/smollm2-counterfact-n1000/betaedit [--save edited.safetensors]

Every run is `betaedit_plugin.runner.run_experiment(cfg)`; the keys are documented in
`betaedit_plugin.runner.config`. The overrides are Hydra's: its `OverridesParser` reads them and
its sweeper's expansion (`BasicSweeper.split_arguments`) gives the jobs of a multirun. Before
Hydra creates any directory, every job's configuration is composed with Hydra and checked with
everything that needs no model; a user error prints one line naming the key (`ConfigError`) and
exits with status 2. Sweeps over ``glob(...)`` and intervals are left to Hydra: such keys are
checked when each job starts.

A single run is composed once: that configuration is checked, then handed to Hydra's `run_job`
(its output directory, logging and callbacks, as ``@hydra.main`` does). A multirun, and Hydra's
own flags (``--help``, ``--cfg`` ...), go through ``hydra.main``, whose launcher composes each job
again.

Then, still before Hydra, the command line takes its hold on every job's ``out_dir``
(`betaedit_plugin.runner.paths`): when another live run holds one, this one is refused (exit 2,
the holder's pid named) having written and removed nothing there. A user error found once a job
runs (one that needs the model: an empty null space, a prompt longer than the model's context
...) is reported the same way, and the job's ``out_dir`` is put back as it was when the hold was
taken: Hydra's log file and the directories made for it are removed.

A SIGINT (Ctrl-C) or SIGTERM stops a run after the edit in progress, journaled and checkpointed; a
second one stops it at once (`betaedit_plugin.runner.stopping`). Either way the command line says
in one line where the run stopped and exits with status 128 + the signal's number (130, 143);
``resume=true`` continues it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

from ._suggest import did_you_mean
from .errors import BetaEditError
from .runner import CONF_DIR, ConfigError, compare, load_requests, run_experiment, screening  # noqa: F401  (library entry points)
from .runner.config import GROUPS, group_options, omegaconf_error, register_configs, run_config_class
from .runner.paths import held_out_dir, hold_out_dir
from .runner.stopping import RunInterrupted, run_state, signal_name, terminate_as_interrupt

__all__ = ["main", "precheck", "parse_overrides", "job_overrides", "expand_overrides", "run_experiment", "compare", "screening",
           "ConfigError", "CONF_DIR"]

#: the job name Hydra gives a run (its log file is <out_dir>/run.log), as ``@hydra.main`` names it from this module
JOB_NAME = "run"


def _fail(message: str) -> None:
    sys.stderr.write(f"betaedit-run: error: {message.splitlines()[0] if message else 'unknown error'}\n")
    sys.exit(2)


# ============================================================================ overrides: Hydra's grammar
def parse_overrides(args: Sequence[str]) -> list:
    """``args`` as Hydra's `Override` objects (its own grammar); ConfigError naming an unparsable one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    try:
        return parser.parse_overrides(list(args))
    except OverrideParseException as exc:
        raise _unparsable_override(parser, args, exc) from None


def _unparsable_override(parser, args: Sequence[str], exc: Exception) -> ConfigError:
    """The override Hydra's grammar rejects (spaces, non-ASCII letters, ...) with its key, its value and
    the override quoted as Hydra takes it."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for item in args:
        try:
            parser.parse_overrides([item])
        except Exception:
            break
    else:
        return ConfigError(first)
    key, eq, value = item.partition("=")
    if not eq:
        return ConfigError(f"Hydra cannot parse this override ({first})", field=repr(item), fix="overrides are key=value")
    if "'" in value and '"' not in value:
        hint = f"'{key}=\"{value}\"'"
    else:
        hint = "\"" + key + "='" + value.replace("'", "\\'") + "'\""
    return ConfigError(f"Hydra's override grammar does not take this value unquoted ({first})", field=key, value=value,
                       fix=f"quote it: {hint}")


def _left_to_hydra(override) -> bool:
    """Overrides the pre-check does not compose: Hydra's own settings, and sweeps over a glob or an interval."""
    from hydra.core.override_parser.types import ValueType

    return (override.key_or_group.startswith(("hydra.", "hydra/")) or override.key_or_group == "hydra"
            or override.value_type in (ValueType.GLOB_CHOICE_SWEEP, ValueType.INTERVAL_SWEEP))


def job_overrides(args: Sequence[str], multirun: bool = True) -> List[List[str]]:
    """The override lists of the jobs Hydra will run (its sweeper's expansion of every sweep), less
    what `_left_to_hydra`.

    Raises:
        ConfigError: an override Hydra cannot parse; a sweep without ``-m`` (Hydra would refuse it).
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.types import ValueType

    checked = [o for o in parse_overrides(args) if not _left_to_hydra(o)]
    for o in checked:
        if o.is_sweep_override() and not multirun:
            what = "a comma-separated list" if o.value_type == ValueType.SIMPLE_CHOICE_SWEEP else "a sweep function"
            raise ConfigError(f"{what} is a sweep", field=o.input_line, fix="add -m to run one job per value")
    return BasicSweeper.split_arguments(checked, None)[0]


expand_overrides = job_overrides  # the name of earlier versions


# ============================================================================ composition and checks
def _top_keys() -> List[str]:
    """The configuration's top-level keys (the run schema's fields: the groups, ``hparams`` and the run's own)."""
    return sorted(f.name for f in dataclasses.fields(run_config_class()))


def _check_keys(overrides, top: Sequence[str]) -> None:
    """An unknown group option or top-level key: ConfigError with "Did you mean"."""
    for o in overrides:
        key = o.key_or_group
        if o.is_delete() or key.startswith("hydra"):
            continue
        value = o.get_value_element_as_str()
        if key in GROUPS and value not in group_options(key):
            raise ConfigError(f"unknown {key}." + did_you_mean(value, group_options(key)), field=key, value=value)
        head = key.split(".")[0]
        if not (o.is_add() or o.is_force_add()) and head not in top:
            raise ConfigError(f"unknown config key {head!r}." + did_you_mean(head, top), field=key, value=value)


def _compose(app, overrides: Sequence[str], top: Sequence[str]):
    """One job's configuration as Hydra composes it for a run (with its ``hydra`` node); ConfigError
    naming the key when it cannot be composed."""
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    parsed = parse_overrides(overrides)
    _check_keys(parsed, top)
    try:
        return app.compose_config(config_name="config", overrides=list(overrides), run_mode=RunMode.RUN)
    except (HydraException, OmegaConfBaseException) as exc:
        groups_only = [o.input_line for o in parsed if o.key_or_group in GROUPS]
        plain = app.compose_config(config_name="config", overrides=groups_only, run_mode=RunMode.RUN)
        _unknown_nested_key(plain, parsed)
        cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
        raise omegaconf_error(cause) from None


def _job_config(cfg):
    """A composed configuration without its ``hydra`` node: what the job gets."""
    from omegaconf import open_dict, read_write

    job = copy.deepcopy(cfg)
    with read_write(job), open_dict(job):
        job.pop("hydra", None)
    return job


def _check(cfg) -> str:
    """`check_run` on a composed configuration (no warnings: the job itself warns); returns its out_dir."""
    from .runner import check_run

    job = _job_config(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_run(job, verify_files=False)
    return str(job.out_dir)


@contextlib.contextmanager
def _hydra_app():
    """Hydra initialised on the package's config directory, as ``@hydra.main`` does for this module."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None, job_name=JOB_NAME):
        yield GlobalHydra.instance().hydra


def precheck(args: Sequence[str], multirun: bool = True) -> List[str]:
    """Compose every job's configuration as Hydra will and run `check_run` on it; raises `ConfigError`.

    Returns the ``out_dir`` of every job checked.
    """
    top = _top_keys()
    with _hydra_app() as app:
        return [_check(_compose(app, overrides, top)) for overrides in job_overrides(args, multirun)]


def _unknown_nested_key(cfg, overrides) -> None:
    """ConfigError with "Did you mean" for the first override whose dotted key is not in ``cfg``."""
    for o in overrides:
        if o.is_add() or o.is_force_add() or o.is_delete():
            continue
        key, value = o.key_or_group, o.get_value_element_as_str()
        node, path = cfg, []
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                siblings = sorted(str(k) for k in node.keys()) if hasattr(node, "keys") else []
                where = ".".join(path) or "the config"
                raise ConfigError(
                    f"{where} has no key {part!r}." + did_you_mean(part, siblings)
                    + ("" if siblings else " (add it with +key=value)"), field=key, value=value,
                )
            node, path = node[part], path + [part]


# ============================================================================ sub-commands
def _compare_cli(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="betaedit-run compare", description="Comparison table and plots from several run out_dirs.")
    parser.add_argument("out_dirs", nargs="+", help="run directories holding results.json")
    parser.add_argument("--out", default=None, help="where comparison.md and the plots go (default: the first dir's parent)")
    ns = parser.parse_args(list(args))
    try:
        path = compare(ns.out_dirs, ns.out or Path(ns.out_dirs[0]).resolve().parent)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    print(f"comparison written to {path}")
    return 0


def _screening_cli(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="betaedit-run screening",
        description="Screening table, choice of settings and figures from fixed-target run out_dirs (a bank among them is left out).")
    parser.add_argument("out_dirs", nargs="+", help="run directories holding results.json")
    parser.add_argument("--out", default=None, help="where screening.md and the figures go (default: the first dir's parent)")
    parser.add_argument("--choose-step", type=int, default=250, help="the evaluation step the choice reads (default 250)")
    parser.add_argument("--min-efficacy", type=float, default=0.95, help="efficacy a chosen setting keeps (default 0.95)")
    ns = parser.parse_args(list(args))
    try:
        path = screening(ns.out_dirs, ns.out or Path(ns.out_dirs[0]).resolve().parent,
                         choose_step=ns.choose_step, min_efficacy=ns.min_efficacy)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    print(f"screening written to {path}")
    return 0


def _replay_cli(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="betaedit-run replay",
        description="Rebuild a run's edited model from its journal (or load its newest checkpoint), re-score the "
                    "last journaled step and compare with the recorded metrics (nothing in DIR is written but with --amend).")
    parser.add_argument("dir", help="a run's out_dir or a published results folder (results.json + journal/)")
    parser.add_argument("--save", default=None, help="write the edited model: a .safetensors file or a directory (save_pretrained)")
    parser.add_argument("--no-eval", action="store_true", help="only rebuild (and check the journal's fingerprints)")
    parser.add_argument("--device", default=None, help="replay on this device instead of the run's hparams.device")
    parser.add_argument("--from-checkpoint", action="store_true",
                        help="load the newest checkpoint in DIR instead of replaying the journal, and score its step")
    parser.add_argument("--amend", action="store_true",
                        help="then add to the recorded point the per-case outcomes it lacks, if every recorded metric "
                             "was reproduced (writes DIR/results.json)")
    parser.add_argument("--every-point", action="store_true",
                        help="also re-score every earlier step results.json records a point at, as the journal is replayed "
                             "(with --amend only the points that lack a per-case outcome, and each gains what it lacks)")
    ns = parser.parse_args(list(args))
    if ns.amend and ns.no_eval:
        parser.error("--amend needs the evaluation: drop --no-eval")
    if ns.every_point and (ns.from_checkpoint or ns.no_eval):
        parser.error("--every-point re-scores the points on the way as the journal is replayed: drop --from-checkpoint and --no-eval")
    from .eval.report import lacks_outcomes, load_results
    from .runner.replay import amend_point, metric_differences, replay_run

    def each_point(replayed) -> None:
        """--every-point: how the re-scored point compares with the recorded one, amended with --amend."""
        step = replayed["step"]
        recorded = next(p for p in load_results(Path(ns.dir))["evals"] if p.get("step") == step)
        worst = max(metric_differences(recorded, replayed).items(), key=lambda kv: kv[1], default=("-", 0.0))
        print(f"step {step}: " + ", ".join(f"{k}={replayed[k]:.4g}" for k in ("efficacy", "generality", "specificity") if k in replayed)
              + f"; largest |recorded - replayed| {worst[1]:.3g} ({worst[0]})", flush=True)
        if ns.amend:
            try:
                added = amend_point(ns.dir, replayed)
            except BetaEditError as exc:  # this point stays as it was; the replay goes on to the others
                not_amended.append(step)
                print(f"  not amended: {exc}", flush=True)
                return
            print(f"  added {', '.join(added)}" if added else "  kept every outcome already: nothing written", flush=True)

    not_amended: List[int] = []
    at_steps = None
    if ns.every_point and ns.amend:  # only the points that lack a per-case outcome (a stopped amend goes on where it was)
        try:
            at_steps = [p["step"] for p in load_results(Path(ns.dir))["evals"] if lacks_outcomes(p)]
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = replay_run(ns.dir, save=ns.save, evaluate=not ns.no_eval, device=ns.device, from_checkpoint=ns.from_checkpoint,
                         on_point=each_point if ns.every_point else None, at_steps=at_steps)
    except BetaEditError as exc:
        _fail(str(exc))
    how = "loaded the checkpoint of" if ns.from_checkpoint else "replayed"
    edits = f"{out['steps']} edits"
    if out["steps"] < out["last_step"] and not ns.from_checkpoint:
        edits = f"{out['steps']} of {out['last_step']} journaled edits (up to the last point that lacked outcomes)"
    print(f"{how} {edits} in {out['replay_s']:.1f} s; {out['fingerprints']} weight fingerprints checked, "
          f"{out['identical']} bit-identical, largest relative ||W_t - W_0|| difference {out['max_rel_diff']:.3g}")
    if out.get("recorded") is not None:
        print(f"{'metric':<14} {'recorded':>12} {'replayed':>12} {'|diff|':>10}")
        for key, d in out["differences"].items():
            print(f"{key:<14} {out['recorded'][key]:>12.6g} {out['replayed'][key]:>12.6g} {d:>10.3g}")
    elif "replayed" in out:
        print(f"results.json records no evaluation at step {out['steps']}; replayed point: "
              + ", ".join(f"{k}={out['replayed'][k]:.4g}" for k in ("efficacy", "generality", "specificity") if k in out["replayed"]))
    if out.get("saved"):
        print(f"edited model written to {out['saved']}")
    if "replayed" not in out and not ns.no_eval:
        print(f"the point at step {out['last_step']} kept every outcome already: not scored again")
    elif ns.amend:
        try:
            added = amend_point(ns.dir, out["replayed"])
        except BetaEditError as exc:
            _fail(str(exc))
        print(f"added {', '.join(added)} to the point at step {out['steps']}" if added else
              f"the point at step {out['steps']} kept every outcome already: nothing written")
    if not_amended:
        _fail(f"the points at steps {', '.join(map(str, not_amended))} were not amended (not reproduced: see above); "
              "the others were")
    return 0


def _bank_args(args: Sequence[str]) -> List[str]:
    """``bank ...`` as a run: mode=bank, and out_dir runs/bank/<model>_<data>_n<N> unless given."""
    args = [a for a in args]
    keys = {a.partition("=")[0] for a in args}
    if "mode" in keys:
        raise ConfigError("bank: mode is set by the bank command; drop mode=...")
    args.append("mode=bank")
    if "out_dir" not in keys:
        args.append("out_dir=runs/bank/${model.name}_${data.name}_n${num_edits}")
    return args


def _task(cfg) -> None:
    """Hydra task: run, then print the before/after table and where the outputs are.

    After a user error, out_dir is put back as it was when this process took its hold on it
    (`main`, before Hydra made the directory and its log).
    """
    from .eval.report import before_after_table

    logging.getLogger("betaedit_plugin").setLevel(logging.INFO)
    try:
        results = run_experiment(cfg)
    except BetaEditError as exc:
        hold = held_out_dir(cfg.out_dir)
        if hold is not None:
            hold.release(undo=True)
        _fail(str(exc))
        return
    out_dir = Path(cfg.out_dir)
    print(f"\n{results['method']} ({results['alg_name']}) on {results['model']}, {results['data']}: "
          f"{results['edits_done']} edits, status {results['status']}")
    print(before_after_table(results["evals"]))
    t = results.get("timing", {})
    print(f"time: statistics {t.get('statistics_s', 0):.1f} s, projector {t.get('projector_s', 0):.1f} s, "
          f"{t.get('edit_mean_s', float('nan')):.2f} s/edit, evaluation {t.get('eval_total_s', 0):.1f} s")
    print(f"results: {out_dir / 'results.json'}, {out_dir / 'metrics.csv'}, report {out_dir / 'report.md'}")
    print(f"plots:   {', '.join(str(out_dir / p) for p in results.get('plots', []))}")
    root = Path(cfg.run_root)
    if (root / "comparison.md").is_file():
        print(f"comparison of the methods in {root}: {root / 'comparison.md'}")


def _launch(app, cfg) -> None:
    """Run ``_task`` on the composed ``cfg`` as Hydra runs a job: its output directory, logging and
    callbacks (what ``Hydra.run`` does after composing)."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext, RunMode
    from omegaconf import open_dict, read_write

    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        if cfg.hydra.mode is None:
            cfg.hydra.mode = RunMode.RUN
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name="config")
    ret = run_job(hydra_context=HydraContext(config_loader=app.config_loader, callbacks=callbacks), task_function=_task,
                  config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None, configure_logging=True)
    callbacks.on_run_end(config=cfg, config_name="config", job_return=ret)
    _ = ret.return_value  # raises the job's exception, if any


def _run_one(overrides: Sequence[str]) -> int:
    """One run: composed once, checked, out_dir held, then launched."""
    with _hydra_app() as app, contextlib.ExitStack() as hold:
        try:
            job_overrides(overrides, multirun=False)  # a sweep needs -m
            cfg = _compose(app, overrides, _top_keys())
            hold.enter_context(hold_out_dir(_check(cfg)))  # before Hydra writes anything there
        except ConfigError as exc:
            hold.close()
            _fail(str(exc))
        try:
            with terminate_as_interrupt():
                _launch(app, cfg)
        except KeyboardInterrupt as exc:
            hold.close()  # out_dir released before the message says it can be resumed
            return _interrupted(exc, str(cfg.out_dir))
    return 0


def _interrupted(exc: KeyboardInterrupt, out_dir: Optional[str] = None) -> int:
    """One line on stderr for a run a signal stopped (where it stopped, how to go on); its exit status."""
    stop = exc if isinstance(exc, RunInterrupted) else RunInterrupted(signal.SIGINT)  # a plain Ctrl-C
    out_dir = stop.out_dir or out_dir
    how = f"stopped after edit {stop.step}" if stop.step is not None else "interrupted"
    state = f": {run_state(out_dir)}" if out_dir is not None else ""
    sys.stderr.write(f"betaedit-run: {how} by {signal_name(stop.signum)}{state}; the same command with resume=true continues it\n")
    return stop.exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``betaedit-run`` / ``python -m betaedit_plugin.run``; returns the exit status.

    ``compare DIR... [--out DEST]`` builds a comparison from finished runs; ``screening DIR...``
    the screening of fixed-target runs; ``replay DIR [--save PATH]``
    rebuilds a run's edited model from its journal; ``bank <overrides>`` computes a target bank;
    anything else is a Hydra command line (overrides, ``-m`` for a multirun). A signal that stops
    a run: one line and status 128 + its number (`_interrupted`).
    """
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:  # a multirun's job, a replay, or before a run held its out_dir
        return _interrupted(exc)


def _main(argv: Optional[Sequence[str]]) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        return _compare_cli(args[1:])
    if args and args[0] == "replay":
        return _replay_cli(args[1:])
    if args and args[0] == "screening":
        return _screening_cli(args[1:])
    if args and args[0] == "bank":
        try:
            args = _bank_args(args[1:])
        except ConfigError as exc:
            _fail(str(exc))
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    if not flags:
        return _run_one(overrides)
    with contextlib.ExitStack() as holds:
        if all(f in ("-m", "--multirun") for f in flags):
            try:
                for out_dir in dict.fromkeys(precheck(overrides, multirun=True)):  # before Hydra writes anything there
                    holds.enter_context(hold_out_dir(out_dir))
            except ConfigError as exc:
                holds.close()
                _fail(str(exc))
        else:
            register_configs()  # --help, --cfg job, ...: Hydra reads the configuration itself
        import hydra

        sys.argv = [sys.argv[0]] + args
        hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")(_task)()  # absolute: also from betaedit-run
    return 0


if __name__ == "__main__":
    sys.exit(main())
