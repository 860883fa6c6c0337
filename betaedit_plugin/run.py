"""Benchmark runner: MEMIT, AlphaEdit and BetaEdit side by side on thousands of sequential edits.

Command line (a Hydra application; configuration in ``betaedit_plugin/conf/``)::

    python -m betaedit_plugin.run method=betaedit model=smollm2-135m data=counterfact num_edits=20 eval_every=10
    python -m betaedit_plugin.run -m method=memit,alphaedit,betaedit num_edits=200 eval_every=50
    python -m betaedit_plugin.run method=betaedit hparams.lambda1=1000 hparams.layers=[4,5,6]
    python -m betaedit_plugin.run ... resume=true            # continue from the last checkpoint
    python -m betaedit_plugin.run compare runs/a/memit runs/a/betaedit --out runs/a

The command line is a thin shell over :func:`run_experiment`, which does the work and returns the
results as a dict. A run writes into ``out_dir``:

* ``results.json``: resolved config, hyperparameters, every evaluation point, per-edit log, timing;
* ``metrics.csv``: one row per evaluation point;
* ``*.png``: efficacy, specificity, capability, leakage and perturbation against the number of edits;
* ``report.md``: a before/after table;
* ``checkpoints/step-<t>/``: atomic checkpoints (see :mod:`betaedit_plugin.eval.checkpoint`).

Runs whose ``out_dir`` lies in ``run_root`` (the default; a multirun over methods shares it) update
``<run_root>/comparison.md`` and comparison plots with one line per method.

User errors (unknown method/model/data, bad numbers, unreadable data, an ``out_dir`` holding another
run's checkpoint) raise :class:`ConfigError`; the command line prints it as one line and exits with
status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

logger = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent / "conf"
REPO_HPARAMS = Path(__file__).resolve().parent.parent / "hparams"
RESULTS_FORMAT = 1
GROUPS = ("method", "model", "data")
# config keys that do not change a run's results (left out of its identity / checkpoint hash)
RUNTIME_KEYS = ("resume", "out_dir", "run_root", "stop_after", "checkpoint_every", "keep_checkpoints", "progress", "hparams_dir")


class ConfigError(ValueError):
    """A user error in the run configuration; the message names the key, the value and a fix."""


# ============================================================================ configuration
def _options(group: str) -> list:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _did_you_mean(value: Any, options: Sequence[str]) -> str:
    hint = difflib.get_close_matches(str(value), list(options), n=1)
    return (f" Did you mean {hint[0]!r}?" if hint else "") + f" Available: {', '.join(options)}"


def _as_dict(cfg: Any) -> dict:
    """Plain, resolved dict of a DictConfig or mapping."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return json.loads(json.dumps(dict(cfg), default=str))


def _int(cfg: Mapping, key: str, minimum: int, allow_none: bool = False) -> Optional[int]:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if node is None and allow_none:
        return None
    if not isinstance(node, int) or isinstance(node, bool) or node < minimum:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{key}={node!r}: expected an int >= {minimum}{extra}")
    return node


def validate_config(cfg: Mapping) -> None:
    """Cheap checks of a resolved config (no file or model is read). Raises :class:`ConfigError`."""
    for group in GROUPS:
        node = cfg.get(group)
        if not isinstance(node, Mapping) or "name" not in node:
            raise ConfigError(f"{group}={node!r}: expected a {group} config group;{_did_you_mean('', _options(group))}")
    method = cfg["method"]
    if method.get("alg") not in ("MEMIT", "AlphaEdit", "BetaEdit"):
        raise ConfigError(f"method.alg={method.get('alg')!r}: expected MEMIT, AlphaEdit or BetaEdit")
    from .data import DATASETS

    if cfg["data"]["name"] not in DATASETS:
        raise ConfigError(f"data.name={cfg['data']['name']!r}: unknown dataset.{_did_you_mean(cfg['data']['name'], sorted(DATASETS))}")
    if not cfg["model"].get("path"):
        raise ConfigError(
            f"model.path={cfg['model'].get('path')!r}: model={cfg['model']['name']} needs a local checkpoint directory; "
            "pass model.path=/path/to/checkpoint"
        )
    _int(cfg, "num_edits", 1)
    _int(cfg, "batch_size", 1)
    _int(cfg, "eval_every", 1)
    _int(cfg, "checkpoint_every", 0)
    _int(cfg, "keep_checkpoints", 1)
    _int(cfg, "seed", 0)
    stop = _int(cfg, "stop_after", 1, allow_none=True)
    if stop is not None and stop >= cfg["num_edits"]:
        raise ConfigError(f"stop_after={stop}: must be below num_edits={cfg['num_edits']} (or null to run to the end)")
    _int(cfg, "eval.max_cases", 1, allow_none=True)
    for key, minimum in (("batch_size", 1), ("fluency_prompts", 0), ("fluency_tokens", 1), ("ppl_tokens", 0), ("ppl_window", 2), ("mmlu_n", 0)):
        _int(cfg, f"eval.{key}", minimum)
    if cfg["eval"]["ppl_tokens"] == 1:
        raise ConfigError("eval.ppl_tokens=1: expected 0 (skip) or at least 2 tokens")
    if not isinstance(cfg.get("resume"), bool):
        raise ConfigError(f"resume={cfg.get('resume')!r}: expected true or false")
    if not cfg.get("out_dir"):
        raise ConfigError(f"out_dir={cfg.get('out_dir')!r}: expected a directory path")


def run_identity(cfg: Mapping) -> dict:
    """The config keys that change a run's results (everything but where/how it runs)."""
    return {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS and k != "hydra"}


def hparams_path(cfg: Mapping) -> Path:
    """``<hparams_dir>/<method.alg>/<model.hparams_file>.yaml``, searched in hparams_dir, the repo, ./hparams."""
    alg, stem = cfg["method"]["alg"], cfg["model"]["hparams_file"]
    roots = [Path(cfg["hparams_dir"])] if cfg.get("hparams_dir") else [REPO_HPARAMS, Path.cwd() / "hparams"]
    for root in roots:
        path = root / alg / f"{stem}.yaml"
        if path.is_file():
            return path
    raise ConfigError(
        f"model.hparams_file={stem!r}: no {alg}/{stem}.yaml under {', '.join(str(r) for r in roots)}; "
        "add one or set hparams_dir=/dir/with/<Alg>/<model>.yaml"
    )


def build_hparams(cfg: Mapping):
    """Hyperparameters: the YAML file, then ``model.hparams_overrides``, then the user's ``hparams.*``.

    Model overrides for fields a method lacks (e.g. ``nullspace_threshold`` for MEMIT) are skipped;
    a user override that the method lacks is an error.
    """
    import dataclasses

    import yaml

    from .hparams import hparams_class_for

    path = hparams_path(cfg)
    with open(path, "r") as stream:
        raw = yaml.safe_load(stream)
    cls = hparams_class_for(raw.get("alg_name", cfg["method"]["alg"]))
    fields = {f.name for f in dataclasses.fields(cls)}
    merged = dict(raw)
    for key, value in (cfg["model"].get("hparams_overrides") or {}).items():
        if key in fields:
            merged[key] = value
    for key, value in (cfg.get("hparams") or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError(
                f"hparams.{key}={value!r}: method={cfg['method']['name']} ({cls.__name__}) has no field {key!r}; "
                "drop it for this method"
            )
        merged[key] = value
    merged["batch_size"] = cfg["batch_size"]
    merged.setdefault("model_name", cfg["model"]["path"])
    try:
        return cls.from_dict(merged, source=str(path))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"hparams ({path.name} + overrides): {exc}") from None


def load_requests(cfg: Mapping) -> list:
    """The first ``num_edits`` requests of the configured dataset."""
    import warnings

    from .data import DatasetError, load_dataset

    data, n = cfg["data"], cfg["num_edits"]
    source = data.get("path") or data.get("split")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped invalid records are reported by n, below
            requests = load_dataset(data["name"], n=None, split=source)
    except DatasetError as exc:
        key = "data.path" if data.get("path") else "data.split"
        raise ConfigError(f"{key}={source!r}: {exc}") from None
    except KeyError as exc:
        raise ConfigError(f"data.split={source!r}: {exc.args[0]}") from None
    if n > len(requests):
        raise ConfigError(f"num_edits={n}: data={data['name']} ({source}) has only {len(requests)} edits; ask for at most {len(requests)}")
    return requests[:n]


def _check_mmlu(cfg: Mapping) -> None:
    from .eval.capability import load_mmlu

    if cfg["eval"]["mmlu_n"]:
        try:
            load_mmlu(cfg["eval"]["mmlu_n"])
        except ValueError as exc:
            raise ConfigError(f"eval.mmlu_n={cfg['eval']['mmlu_n']}: {exc}") from None


# ============================================================================ the run
@dataclass
class _Run:
    """Everything one run holds while it edits and evaluates."""

    cfg: dict
    model: Any
    tok: Any
    editor: Any
    requests: list
    prior_covs: dict
    base_weights: dict
    locality_ref: list
    heldout: Any
    mmlu: Optional[list]
    results: dict
    timing: dict = field(default_factory=dict)


def _check_out_dir(cfg: dict, identity: dict, verify_files: bool = True):
    """Verify what ``out_dir`` holds; returns the checkpoint to resume from (or None).

    ``verify_files=False`` checks the manifest and config hash only (the CLI pre-check).

    Raises:
        ConfigError: a checkpoint or results.json of a run with another config, or a corrupt checkpoint.
    """
    from .eval.checkpoint import CheckpointError, config_hash, first_difference, latest_checkpoint

    out_dir = Path(cfg["out_dir"])
    try:
        ckpt = latest_checkpoint(out_dir, identity, verify_files)
    except CheckpointError as exc:
        raise ConfigError(f"out_dir={str(out_dir)!r}: {exc}") from None
    results_file = out_dir / "results.json"
    if results_file.is_file():
        try:
            previous = json.loads(results_file.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
        if previous.get("config_hash") not in (None, config_hash(identity)):
            key, theirs, ours = first_difference(previous.get("identity", {}), identity)
            raise ConfigError(
                f"out_dir={str(out_dir)!r} holds results of another run ({key}={theirs!r} there, {ours!r} here); "
                "use another out_dir or delete it"
            )
    return ckpt if cfg["resume"] else None


@contextlib.contextmanager
def _timed(timing: dict, key: str):
    """Add the wall time of the block to ``timing[key]`` (seconds)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0


def evaluate(run: _Run, step: int) -> dict:
    """One evaluation point over all edits so far (before any edit: over all requests to be edited).

    Returns:
        flat dict: ``step``, edit metrics, fluency, ``ppl``, ``mmlu_acc`` (+ chance), leakage and
        perturbation (totals and per layer), and ``eval_s`` (seconds).
    """
    from .eval.capability import mmlu_accuracy, perplexity
    from .eval.metrics import edit_metrics, fluency, weight_diagnostics

    ev = run.cfg["eval"]
    t0 = time.perf_counter()
    final = step == 0 or step >= run.cfg["num_edits"]
    idx = eval_sample(step if step > 0 else len(run.requests), ev.get("max_cases"), run.cfg["seed"], len(run.requests), final)
    reqs = [run.requests[i] for i in idx]
    point: dict = {"step": step, "n_scored": len(reqs), "sampled": len(reqs) < (step or len(run.requests))}
    point.update(edit_metrics(run.model, run.tok, reqs, locality_ref=[run.locality_ref[i] for i in idx], batch_size=ev["batch_size"]))
    if ev["fluency_prompts"]:
        prompts = [r.filled_prompt for r in reqs[: ev["fluency_prompts"]]]
        flu = fluency(run.model, run.tok, prompts, max_new_tokens=ev["fluency_tokens"], batch_size=ev["batch_size"])
        point["fluency"] = flu["fluency"]
        point["fluency_sample"] = flu["sample"]
    if run.heldout is not None:
        ppl = perplexity(run.model, run.heldout, window=ev["ppl_window"], batch_size=max(1, ev["batch_size"] // 4))
        point.update({"ppl": ppl["ppl"], "ppl_tokens": ppl["n_tokens"]})
    if run.mmlu is not None:
        point.update(mmlu_accuracy(run.model, run.tok, len(run.mmlu), records=run.mmlu, batch_size=ev["batch_size"]))
    point.update(weight_diagnostics(run.editor.weight_deltas(), run.prior_covs, run.base_weights))
    point["eval_s"] = time.perf_counter() - t0
    return point


def eval_sample(n_done: int, max_cases: Optional[int], seed: int, n_total: int, final: bool) -> list:
    """Indices of the edits an evaluation point scores: all of the first ``n_done`` at the final
    point (and before editing) or when ``max_cases`` is None, else the first ``max_cases`` of them
    in one seeded permutation of all ``n_total`` edits (so successive points share their sample)."""
    if final or max_cases is None or n_done <= max_cases:
        return list(range(n_done))
    import torch

    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted([i for i in perm if i < n_done][:max_cases])


def _setup(cfg: dict, identity: dict) -> tuple:
    """Validate everything that can be validated before loading the model; returns (hparams, requests, ckpt)."""
    validate_config(cfg)
    hparams = build_hparams(cfg)
    requests = load_requests(cfg)
    _check_mmlu(cfg)
    ckpt = _check_out_dir(cfg, identity)
    return hparams, requests, ckpt


def _load_model(cfg: dict, hparams):
    import torch

    from .models import load_model

    try:
        model, tok = load_model(cfg["model"]["path"])
    except KeyError as exc:
        raise ConfigError(f"model.path={cfg['model']['path']!r}: {exc.args[0]}") from None
    device = hparams.device
    device = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return model.to(device).eval(), tok


def _save_outputs(run: _Run, final: bool) -> None:
    from .eval.checkpoint import atomic_write_text
    from .eval.plots import plot_runs
    from .eval.report import before_after_table, write_metrics_csv

    out_dir = Path(run.cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(run.results, indent=1, default=str))
    write_metrics_csv(run.results["evals"], out_dir / "metrics.csv")
    if final:
        label = run.cfg["method"]["name"]
        run.results["plots"] = [p.name for p in plot_runs({label: run.results["evals"]}, out_dir)]
        atomic_write_text(out_dir / "results.json", json.dumps(run.results, indent=1, default=str))
        atomic_write_text(
            out_dir / "report.md",
            f"# {label} on {run.cfg['model']['name']}, {run.cfg['data']['name']}, {run.results['edits_done']} edits\n\n"
            + before_after_table(run.results["evals"]) + "\n",
        )


def _checkpoint(run: _Run, step: int) -> None:
    from .eval.checkpoint import write_checkpoint

    layout = run.editor.layout
    write_checkpoint(
        Path(run.cfg["out_dir"]),
        step,
        identity=run.results["identity"],
        weights={l: layout.read_weight(run.model, l) for l in run.editor.hparams.layers},
        deltas=run.editor.weight_deltas(),
        save_editor_state=lambda path: run.editor.save_state(path),
        results=run.results,
        keep=run.cfg["keep_checkpoints"],
    )


def _resume(run: _Run, ckpt) -> int:
    """Load a verified checkpoint into the editor and the results; returns its step."""
    import torch

    from .eval.checkpoint import load_tensors

    run.editor.load_state(ckpt.file("editor_state.safetensors"), restore_weights=True)
    saved = load_tensors(ckpt.file("weights.safetensors"))
    for layer, w in saved.items():
        if not torch.equal(run.editor.layout.read_weight(run.model, layer), w.to(run.base_weights[layer].dtype)):
            raise ConfigError(f"out_dir={run.cfg['out_dir']!r}: checkpoint {ckpt.path.name} is inconsistent (layer {layer}); delete it")
    previous = json.loads(ckpt.file("results.json").read_text(encoding="utf-8"))
    run.results["evals"] = previous["evals"]
    run.results["edits"] = previous["edits"]
    run.results["resumed_from"] = ckpt.step
    logger.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
    return ckpt.step


def _postfix(point: Mapping) -> dict:
    keys = (("efficacy", "eff"), ("generality", "gen"), ("specificity", "spec"), ("ppl", "ppl"))
    return {short: f"{point[k]:.3g}" for k, short in keys if isinstance(point.get(k), float) and math.isfinite(point[k])}


def run_experiment(cfg: Any) -> dict:
    """Run one method on one model and dataset for ``num_edits`` sequential edits.

    Args:
        cfg: the composed configuration (a Hydra ``DictConfig`` or a plain mapping with the keys of
            ``betaedit_plugin/conf/config.yaml`` and the groups ``method``, ``model``, ``data``).

    Returns:
        the results dict also written to ``<out_dir>/results.json``: ``config``, ``identity``,
        ``config_hash``, ``hparams``, ``evals`` (evaluation points at step 0, every ``eval_every``
        edits and at the end, each over all edits so far), ``edits`` (per-edit log), ``timing``
        (seconds per phase), ``status`` ("complete" or "stopped"), ``edits_done``.

    Raises:
        ConfigError: bad configuration or data, or an out_dir that holds another run; raised before
            anything is written.
    """
    import torch
    from tqdm.auto import tqdm

    from .editor import BetaEditor
    from .eval.capability import heldout_token_ids, load_mmlu
    from .eval.checkpoint import config_hash, list_checkpoints
    from .eval.metrics import locality_reference
    from .plumbing.layout import ModelLayout
    from .plumbing.stats import stats_for_hparams

    cfg = _as_dict(cfg)
    identity = run_identity(cfg)
    hparams, requests, ckpt = _setup(cfg, identity)
    out_dir = Path(cfg["out_dir"])
    random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])

    timing: dict = {}
    with _timed(timing, "load_model_s"):
        model, tok = _load_model(cfg, hparams)
    layout = ModelLayout.from_model(model, hparams)
    bad = [l for l in hparams.layers if l >= layout.n_layers]
    if bad:
        raise ConfigError(f"hparams.layers={hparams.layers}: model {cfg['model']['name']} has {layout.n_layers} layers (0..{layout.n_layers - 1})")
    with _timed(timing, "statistics_s"):
        prior_covs = stats_for_hparams(model, tok, hparams, layout, progress=cfg["progress"])
    base_weights = {l: layout.read_weight(model, l) for l in hparams.layers}
    ev = cfg["eval"]
    locality_ref = locality_reference(model, tok, requests, batch_size=ev["batch_size"])
    try:
        heldout = heldout_token_ids(tok, ev["ppl_tokens"]) if ev["ppl_tokens"] else None
    except ValueError as exc:
        raise ConfigError(f"eval.ppl_tokens={ev['ppl_tokens']}: {exc}") from None
    mmlu = load_mmlu(ev["mmlu_n"]) if ev["mmlu_n"] else None

    editor = BetaEditor(model, tok, hparams, prior_covs=prior_covs, keep_undo=False)
    results = {
        "format": RESULTS_FORMAT,
        "method": cfg["method"]["name"],
        "alg_name": hparams.alg_name,
        "model": cfg["model"]["name"],
        "data": cfg["data"]["name"],
        "config": cfg,
        "identity": identity,
        "config_hash": config_hash(identity),
        "hparams": hparams.to_dict(),
        "evals": [],
        "edits": [],
        "status": "running",
        "edits_done": 0,
    }
    run = _Run(cfg, model, tok, editor, requests, prior_covs, base_weights, locality_ref, heldout, mmlu, results, timing)
    if ckpt is not None:
        start = _resume(run, ckpt)
    else:
        if list_checkpoints(out_dir):
            logger.warning("out_dir %s holds checkpoints of this config; starting over (resume=false)", out_dir)
            shutil.rmtree(out_dir / "checkpoints")
        start = 0
        with _timed(timing, "projector_s"):  # projector from C0 and the context templates
            editor.context_templates
    if start == 0:
        with _timed(timing, "eval_total_s"):
            results["evals"].append(evaluate(run, 0))

    n, bs, every = cfg["num_edits"], cfg["batch_size"], cfg["eval_every"]
    stop = cfg["stop_after"] or n
    bar = tqdm(total=n, initial=start, desc=cfg["method"]["name"], disable=not cfg["progress"], unit="edit")
    if results["evals"]:
        bar.set_postfix(_postfix(results["evals"][-1]))
    step = start
    try:
        while step < min(n, stop):
            batch = requests[step: min(step + bs, n, stop)]
            t0 = time.perf_counter()
            info = editor.apply(batch)
            seconds = time.perf_counter() - t0
            prev, step = step, step + len(batch)
            results["edits"].append({"step": step, "case_ids": [r.case_id for r in batch], "seconds": seconds,
                                     "delta_norm": {str(k): v for k, v in info["delta_norm"].items()},
                                     "refreshed": bool(info.get("refreshed"))})
            results["edits_done"] = step
            if step // every > prev // every or step == n:
                with _timed(timing, "eval_total_s"):
                    results["evals"].append(evaluate(run, step))
                bar.set_postfix(_postfix(results["evals"][-1]))
                _finish_timing(run)
                _save_outputs(run, final=False)  # results.json / metrics.csv readable while the run goes on
            bar.update(len(batch))
            ck = cfg["checkpoint_every"]
            if (ck and step // ck > prev // ck) or (step >= stop and step < n):
                _finish_timing(run)
                _checkpoint(run, step)
    finally:
        bar.close()
    results["status"] = "complete" if step >= n else "stopped"
    results["edits_done"] = step
    _finish_timing(run)
    _save_outputs(run, final=True)
    _update_comparison(cfg)
    return results


def _finish_timing(run: _Run) -> None:
    edits = run.results["edits"]
    seconds = [e["seconds"] for e in edits]
    per_edit = sum(seconds) / max(1, sum(len(e["case_ids"]) for e in edits)) if edits else float("nan")
    run.results["timing"] = {
        **run.timing,
        "edit_total_s": sum(seconds),
        "edit_mean_s": per_edit,
        "eval_points_s": sum(p.get("eval_s", 0.0) for p in run.results["evals"]),
    }
    run.results["edits_done"] = edits[-1]["step"] if edits else 0


# ============================================================================ comparison
def _update_comparison(cfg: Mapping) -> Optional[Path]:
    """Refresh ``<run_root>/comparison.md`` from every run directory under run_root."""
    root, out_dir = Path(cfg["run_root"]).resolve(), Path(cfg["out_dir"]).resolve()
    if out_dir.parent != root:
        return None
    dirs = sorted(p for p in root.iterdir() if (p / "results.json").is_file())
    return compare(dirs, root)


def compare(out_dirs: Sequence[Any], dest: Any) -> Path:
    """Build ``comparison.md`` and comparison plots in ``dest`` from several runs' out_dirs.

    Returns:
        the path of comparison.md.
    """
    from .eval.report import load_results, write_comparison

    order = {"memit": 0, "alphaedit": 1, "betaedit": 2}
    loaded = []
    for d in out_dirs:
        loaded.append((Path(d), load_results(Path(d))))
    loaded.sort(key=lambda item: (order.get(str(item[1].get("method")), len(order)), str(item[0])))
    runs: dict = {}
    for d, res in loaded:
        label = str(res.get("method", Path(d).name))
        if label in runs:
            label = f"{label} ({Path(d).name})"
        runs[label] = res
    return write_comparison(runs, Path(dest))


# ============================================================================ command line
def _fail(message: str) -> None:
    sys.stderr.write(f"betaedit-run: error: {message.splitlines()[0] if message else 'unknown error'}\n")
    sys.exit(2)


def _expand_overrides(args: Sequence[str]) -> list:
    """Override lists to compose for the pre-check: each value of each sweep, others at their first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("hydra.")])
    base, sweeps = [], []
    for o in parsed:
        if o.is_sweep_override():
            sweeps.append((o.get_key_element(), list(o.sweep_string_iterator())))
        else:
            base.append(o.input_line)
    if not sweeps:
        return [base]
    firsts = [f"{k}={vals[0]}" for k, vals in sweeps]
    out = []
    for i, (key, values) in enumerate(sweeps):
        for v in values:
            out.append(base + firsts[:i] + [f"{key}={v}"] + firsts[i + 1:])
    return out


def precheck(args: Sequence[str]) -> None:
    """Compose the configuration the way Hydra will and validate it; raises :class:`ConfigError`.

    Runs every check that needs no model (config values, hyperparameters, data, what out_dir
    holds), so that these errors stop the command before Hydra creates any directory.

    Unknown group options and unknown keys get "Did you mean"; other composition errors are
    reported with their first line.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        combos = _expand_overrides(args)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot parse the overrides {list(args)}: {str(exc).splitlines()[0]}") from None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        top = set(compose(config_name="config"))
        for overrides in combos:
            for item in overrides:
                key, _, value = item.lstrip("+~").partition("=")
                if key in GROUPS and value not in _options(key):
                    raise ConfigError(f"{key}={value!r}: unknown {key}.{_did_you_mean(value, _options(key))}")
                head = key.split(".")[0].split("@")[0]
                if not item.startswith(("+", "~")) and head not in top:
                    raise ConfigError(f"{key}={value!r}: unknown config key {head!r}.{_did_you_mean(head, sorted(top))}")
            try:
                cfg = compose(config_name="config", overrides=list(overrides))
                resolved = OmegaConf.to_container(cfg, resolve=True)
            except (HydraException, OmegaConfBaseException) as exc:
                groups_only = [o for o in overrides if o.partition("=")[0] in GROUPS]
                _unknown_nested_key(compose(config_name="config", overrides=groups_only), overrides)
                cause = exc.__cause__ or exc
                raise ConfigError(f"{' '.join(overrides)}: {str(cause).splitlines()[0]}") from None
            validate_config(resolved)
            build_hparams(resolved)
            load_requests(resolved)
            _check_mmlu(resolved)
            _check_out_dir(resolved, run_identity(resolved), verify_files=False)


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
                    f"{key}={value!r}: {where} has no key {part!r}.{_did_you_mean(part, siblings)}"
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


def _task(cfg) -> None:
    """Hydra task: run, then print the before/after table and where the outputs are."""
    from .eval.report import before_after_table

    logging.getLogger("betaedit_plugin").setLevel(logging.INFO)
    try:
        results = run_experiment(cfg)
    except ConfigError as exc:
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

    ``compare DIR... [--out DEST]`` builds a comparison from finished runs; anything else is a Hydra
    command line (overrides, ``-m`` for a multirun).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        return _compare_cli(args[1:])
    flags = [a for a in args if a.startswith("-")]
    if all(f in ("-m", "--multirun") for f in flags):
        try:
            precheck([a for a in args if not a.startswith("-")])
        except ConfigError as exc:
            _fail(str(exc))
    import hydra

    sys.argv = [sys.argv[0]] + args
    hydra.main(version_base=None, config_path="conf", config_name="config")(_task)()
    return 0


if __name__ == "__main__":
    main()
