"""Command line of the benchmark runner: a thin Hydra shell over `betaedit_plugin.runner`.

    python -m betaedit_plugin.run method=betaedit model=smollm2-135m data=counterfact num_edits=20 eval_every=10
    python -m betaedit_plugin.run -m method=memit,alphaedit,betaedit num_edits=200 eval_every=50
    python -m betaedit_plugin.run method=betaedit hparams.lambda1=1000 hparams.layers=[4,5,6]
    python -m betaedit_plugin.run ... resume=true            # continue from the last checkpoint
    python -m betaedit_plugin.run compare runs/a/memit runs/a/betaedit --out runs/a
    python -m betaedit_plugin.run bank data=counterfact num_edits=1000     # z* of each record on the unedited model
    python -m betaedit_plugin.run method=memit targets=runs/bank/smollm2-135m_counterfact_n1000 ...  # fixed targets
    python -m betaedit_plugin.run replay results/smollm2-counterfact-n1000/betaedit [--save edited.safetensors]

Every run is `betaedit_plugin.runner.run_experiment(cfg)`; the keys are documented in
`betaedit_plugin.runner.config`. Before Hydra creates any directory, the command line composes
the configuration of every job (each value of a comma sweep such as ``method=memit,betaedit``)
with Hydra's compose API and runs every check that needs no model; a user error prints one line
naming the key and exits with status 2. Sweep functions (``range(...)``, ``choice(...)``,
``glob(...)``) are expanded by Hydra alone: such keys are checked when each job starts.

Then, still before Hydra, the command line takes its hold on every job's ``out_dir``
(`betaedit_plugin.runner.paths`): when another live run holds one, this one is refused (exit 2,
the holder's pid named) having written and removed nothing there. A user error found once a job
runs (one that needs the model: an empty null space, a prompt longer than the model's context
...) is reported the same way, and the job's ``out_dir`` is put back as it was when the hold was
taken: Hydra's log file and the directories made for it are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

from ._suggest import did_you_mean
from .errors import BetaEditError
from .runner import CONF_DIR, ConfigError, compare, load_requests, run_experiment  # noqa: F401  (library entry points)
from .runner.config import GROUPS, group_options, register_configs
from .runner.paths import held_out_dir, hold_out_dir

__all__ = ["main", "precheck", "expand_overrides", "run_experiment", "compare", "ConfigError", "CONF_DIR"]

_SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(", "tag(", "sort(", "shuffle(")


def _fail(message: str) -> None:
    sys.stderr.write(f"betaedit-run: error: {message.splitlines()[0] if message else 'unknown error'}\n")
    sys.exit(2)


def _split_top_level(value: str) -> List[str]:
    """``value`` split at commas outside brackets and quotes ('a,b' -> ['a', 'b']; '[1,2]' stays whole)."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    return parts + [current]


def expand_overrides(args: Sequence[str], multirun: bool = True) -> List[List[str]]:
    """The override lists of the jobs to check: each value of each comma sweep, the other sweeps at
    their first value. ``hydra.*`` overrides and sweep functions are left to Hydra.

    Raises:
        ConfigError: a comma sweep without ``-m`` (Hydra would refuse it).
    """
    base, sweeps = [], []
    for item in args:
        key, eq, value = item.partition("=")
        if item.startswith("hydra.") or (eq and value.strip().startswith(_SWEEP_FUNCTIONS)):
            continue
        parts = _split_top_level(value) if eq else [value]
        if len(parts) > 1:
            if not multirun:
                raise ConfigError(f"{item}: a comma-separated list is a sweep; add -m to run one job per value")
            sweeps.append((key, parts))
        else:
            base.append(item)
    if not sweeps:
        return [base]
    firsts = [f"{k}={vals[0]}" for k, vals in sweeps]
    out = []
    for i, (key, values) in enumerate(sweeps):
        for v in values:
            out.append(base + firsts[:i] + [f"{key}={v}"] + firsts[i + 1:])
    return out


def precheck(args: Sequence[str], multirun: bool = True) -> List[str]:
    """Compose every job's configuration as Hydra will and run `check_run` on it; raises `ConfigError`.

    Returns the ``out_dir`` of every job checked.

    Unknown group options and unknown keys get "Did you mean"; other composition errors are
    reported with their key and first line.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from .runner import check_run
    from .runner.config import _omegaconf_message

    register_configs()
    combos = expand_overrides(args, multirun)
    out_dirs = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        top = sorted(compose(config_name="config"))
        for overrides in combos:
            for item in overrides:
                key, _, value = item.lstrip("+~").partition("=")
                if key in GROUPS and value not in group_options(key):
                    raise ConfigError(f"{key}={value!r}: unknown {key}." + did_you_mean(value, group_options(key)))
                head = key.split(".")[0].split("@")[0]
                if not item.startswith(("+", "~")) and head not in top:
                    raise ConfigError(f"{key}={value!r}: unknown config key {head!r}." + did_you_mean(head, top))
            try:
                cfg = compose(config_name="config", overrides=list(overrides))
            except OverrideParseException as exc:
                raise ConfigError(_unparsable_override(overrides, exc)) from None
            except (HydraException, OmegaConfBaseException) as exc:
                groups_only = [o for o in overrides if o.partition("=")[0] in GROUPS]
                _unknown_nested_key(compose(config_name="config", overrides=groups_only), overrides)
                cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
                raise ConfigError(_omegaconf_message(cause)) from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the job itself warns when it runs
                check_run(cfg, verify_files=False)
            out_dirs.append(str(cfg.out_dir))
    return out_dirs


def _unparsable_override(overrides: Sequence[str], exc: Exception) -> str:
    """One line for an override Hydra's grammar rejects (spaces, non-ASCII letters, ...): the key,
    the value, and the override quoted as Hydra takes it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    parser = OverridesParser.create()
    for item in overrides:
        try:
            parser.parse_overrides([item])
        except Exception:
            break
    else:
        return first
    key, eq, value = item.partition("=")
    if not eq:
        return f"{item!r}: Hydra cannot parse this override ({first}); overrides are key=value"
    if "'" in value and '"' not in value:
        hint = f"'{key}=\"{value}\"'"
    else:
        hint = "\"" + key + "='" + value.replace("'", "\\'") + "'\""
    return (f"{key}={value!r}: Hydra's override grammar does not take this value unquoted ({first}); "
            f"quote it: {hint}")


def _unknown_nested_key(cfg, overrides: Sequence[str]) -> None:
    """Raise ConfigError with "Did you mean" for the first override whose dotted key is not in ``cfg``."""
    for item in overrides:
        if item.startswith(("+", "~")):
            continue
        key, _, value = item.partition("=")
        node, path = cfg, []
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                siblings = sorted(str(k) for k in node.keys()) if hasattr(node, "keys") else []
                where = ".".join(path) or "the config"
                raise ConfigError(
                    f"{key}={value!r}: {where} has no key {part!r}." + did_you_mean(part, siblings)
                    + ("" if siblings else " (add it with +key=value)")
                )
            node, path = node[part], path + [part]


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


def _replay_cli(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="betaedit-run replay",
        description="Rebuild a run's edited model from its journal, re-score the last journaled step and compare "
                    "with the recorded metrics (nothing in DIR is written).")
    parser.add_argument("dir", help="a run's out_dir or a published results folder (results.json + journal/)")
    parser.add_argument("--save", default=None, help="write the edited model: a .safetensors file or a directory (save_pretrained)")
    parser.add_argument("--no-eval", action="store_true", help="only rebuild (and check the journal's fingerprints)")
    parser.add_argument("--device", default=None, help="replay on this device instead of the run's hparams.device")
    ns = parser.parse_args(list(args))
    from .runner.replay import replay_run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = replay_run(ns.dir, save=ns.save, evaluate=not ns.no_eval, device=ns.device)
    except BetaEditError as exc:
        _fail(str(exc))
    print(f"replayed {out['steps']} edits in {out['replay_s']:.1f} s; {out['fingerprints']} weight fingerprints checked, "
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``betaedit-run`` / ``python -m betaedit_plugin.run``.

    ``compare DIR... [--out DEST]`` builds a comparison from finished runs; ``replay DIR [--save PATH]``
    rebuilds a run's edited model from its journal; ``bank <overrides>`` computes a target bank;
    anything else is a Hydra command line (overrides, ``-m`` for a multirun).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        return _compare_cli(args[1:])
    if args and args[0] == "replay":
        return _replay_cli(args[1:])
    if args and args[0] == "bank":
        try:
            args = _bank_args(args[1:])
        except ConfigError as exc:
            _fail(str(exc))
    flags = [a for a in args if a.startswith("-")]
    with contextlib.ExitStack() as holds:
        if all(f in ("-m", "--multirun") for f in flags):
            try:
                out_dirs = precheck([a for a in args if not a.startswith("-")], multirun=bool(flags))
                for out_dir in dict.fromkeys(out_dirs):  # before Hydra writes anything there
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
    main()
