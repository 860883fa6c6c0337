"""The runner's configuration: typed, validated, and generated from the method registry.

`run_config_class()` builds the schema as dataclasses (OmegaConf structured configs):

- `RunFields`: the run's own keys (``num_edits``, ``eval.*``, ``out_dir`` ...), each with its
  default and help, checked in ``__post_init__``;
- ``method``: the runner's method group; `register_configs` stores one option per registered
  method (``method=betaedit``, ``method=alphaedit`` ...), so there is no ``conf/method/``;
- ``hparams``: one optional override per hyperparameter field of every registered method,
  generated from their dataclasses (``hparams.lambda1=1000``); ``null`` keeps the YAML's value.

``conf/config.yaml`` holds only the defaults list and Hydra's own settings; ``conf/model/`` and
``conf/data/`` hold the model and data options (checked against `ModelConfig` / `DataConfig`).

User errors raise `ConfigError` (`betaedit_plugin.runner.errors`) with the key as its ``field``.

The rest of what a configuration means lives beside this module: `betaedit_plugin.runner.identity`
(the keys that make a run, their hash) and `betaedit_plugin.runner.inputs` (hyperparameters merged
from their YAML file and overrides, the data, the MMLU probe); their names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .._suggest import did_you_mean
from .errors import ConfigError
from .identity import RUNTIME_KEYS, config_hash, identity_difference, run_identity
from .inputs import build_hparams, check_mmlu, hparams_file, load_requests

__all__ = [
    "ConfigError",
    "CONF_DIR",
    "GROUPS",
    "RUNTIME_KEYS",
    "RunFields",
    "EvalConfig",
    "MethodConfig",
    "ModelConfig",
    "DataConfig",
    "hparams_override_fields",
    "run_config_class",
    "register_configs",
    "group_options",
    "validate_config",
    "run_identity",
    "identity_difference",
    "config_hash",
    "hparams_file",
    "build_hparams",
    "load_requests",
    "check_mmlu",
]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("method", "model", "data")
MODES = ("edit", "bank")


def _int(key: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"expected an int >= {minimum}" + (" or null" if allow_none else ""), field=key, value=value)


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


# ============================================================================ schema
@dataclass
class MethodConfig:
    """An option of the ``method`` group (generated from the method registry)."""

    name: str = _help("The option's name, e.g. 'betaedit'; labels the run.")
    alg: str = _help("The method's name, e.g. 'BetaEdit': hparams come from hparams/<alg>/<model.hparams_file>.yaml.")

    def __post_init__(self) -> None:
        from ..methods import get_method

        try:
            get_method(self.alg)
        except KeyError as exc:
            raise ConfigError(exc.args[0], field="method.alg", value=self.alg) from None


@dataclass
class ModelConfig:
    """An option of the ``model`` group (``conf/model/<name>.yaml``)."""

    name: str = _help("Labels the run, e.g. 'smollm2-135m'.")
    path: Optional[str] = _help("Given to betaedit_plugin.models.load_model: a known name or a checkpoint directory.", default=None)
    hparams_file: str = _help("Stem of hparams/<Alg>/<hparams_file>.yaml.", default="")
    hparams_overrides: Dict[str, Any] = _help(
        "Hyperparameters set for this model on top of the file; fields a method lacks are skipped.", default_factory=dict
    )
    model_parallel: bool = _help("Split the model across the visible GPUs (then CPU RAM): device_map='auto'.", default=False)
    device_map: Optional[Any] = _help(
        "accelerate device map: 'auto', 'balanced', 'balanced_low_0', 'sequential' or {module: device}; "
        "null: the whole model on hparams.device.", default=None,
    )

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError(f"model={self.name} needs a local checkpoint directory", field="model.path", value=self.path,
                              fix="pass model.path=/path/to/checkpoint")
        strategies = ("auto", "balanced", "balanced_low_0", "sequential")
        if isinstance(self.device_map, str) and self.device_map not in strategies:
            raise ConfigError(f"expected one of {list(strategies)}, a dict or null", field="model.device_map",
                              value=self.device_map)


@dataclass
class DataConfig:
    """An option of the ``data`` group (``conf/data/<name>.yaml``)."""

    name: str = _help("Dataset: one of betaedit_plugin.data.DATASETS.")
    split: Optional[str] = _help("A bundled split of the dataset (e.g. 'edit', 'eval').", default=None)
    path: Optional[str] = _help("A file of the dataset's format, instead of the bundled split.", default=None)
    skip_invalid: bool = _help(
        "Leave out records that are not valid edits (subject not in its prompt, empty target, target equal "
        "to the true one ...) with a warning; the next records take their place and results.json lists the "
        "skipped ones. false: such a record among the first num_edits is an error that lists them.", default=False,
    )

    def __post_init__(self) -> None:
        from ..data import DATASETS

        if self.name not in DATASETS:
            raise ConfigError("unknown dataset." + did_you_mean(self.name, sorted(DATASETS)), field="data.name", value=self.name)


@dataclass
class EvalConfig:
    """What every evaluation point measures (``eval.*``)."""

    batch_size: int = _help("Sequences per forward pass.", default=16)
    max_cases: Optional[int] = _help(
        "Intermediate points score a fixed seeded sample of this many edits so far (null: all); the point "
        "before editing and the final point score every edit.", default=200,
    )
    fluency_prompts: int = _help("Greedy generations of this many edited prompts (0: skip fluency).", default=20)
    fluency_tokens: int = _help("New tokens per generation.", default=30)
    ppl_tokens: int = _help("First tokens of WikiText-2 test for perplexity (0: skip).", default=2048)
    ppl_window: int = _help("Tokens per perplexity window.", default=256)
    mmlu_n: int = _help("MMLU probe questions (0: skip); chance is 0.25.", default=40)
    sample_final: bool = _help(
        "The final point scores the same sample as the intermediate points (max_cases) instead of every edit: "
        "for screening runs, whose final point over every edit would cost more than their edits.", default=False,
    )

    def __post_init__(self) -> None:
        _int("eval.max_cases", self.max_cases, 1, allow_none=True)
        for key, minimum in (("batch_size", 1), ("fluency_prompts", 0), ("fluency_tokens", 1), ("ppl_tokens", 0),
                             ("ppl_window", 2), ("mmlu_n", 0)):
            _int(f"eval.{key}", getattr(self, key), minimum)
        if self.ppl_tokens == 1:
            raise ConfigError("expected 0 (skip) or at least 2 tokens", field="eval.ppl_tokens", value=1)


@dataclass
class RunFields:
    """The run's own settings (the groups and ``hparams`` are added by `run_config_class`)."""

    method: MethodConfig = _help("Method group: method=betaedit | alphaedit | memit | ...", default=dataclasses.MISSING)
    model: ModelConfig = _help("Model group: conf/model/<name>.yaml.", default=dataclasses.MISSING)
    data: DataConfig = _help("Data group: conf/data/<name>.yaml.", default=dataclasses.MISSING)
    num_edits: int = _help("Edits written one step after another (the first num_edits records of the data).", default=20)
    batch_size: int = _help("Edits per step.", default=1)
    eval_every: int = _help("Evaluate the edits so far every this many edits (and at 0 and at the end).", default=10)
    checkpoint_every: int = _help("Save the editor state and results every this many edits (0: never).", default=10)
    keep_checkpoints: int = _help("Checkpoints kept on disk (newest).", default=1)
    resume: bool = _help("Continue from the last checkpoint in out_dir.", default=False)
    stop_after: Optional[int] = _help(
        "Stop (with a checkpoint) after this many edits; resume later with resume=true.", default=None
    )
    seed: int = _help("Seed of torch and random, and of the evaluation sample.", default=0)
    progress: bool = _help("tqdm progress bar on stderr.", default=True)
    hparams_dir: Optional[str] = _help(
        "Where <Alg>/<model>.yaml live (default: the package's hparams, then ./hparams).", default=None
    )
    run_root: str = _help("A multirun writes comparison.md here.", default="runs/${model.name}_${data.name}_n${num_edits}")
    out_dir: str = _help("Where this run writes.", default="${run_root}/${method.name}")
    eval: EvalConfig = _help("Evaluation settings.", default_factory=EvalConfig)
    mode: str = _help(
        "'edit': sequential editing. 'bank': only compute z* of each record on the unedited model and journal "
        "it (a target bank for targets=...; `python -m betaedit_plugin.run bank ...`).", default="edit",
    )
    targets: Optional[str] = _help(
        "Fixed targets: read each request's z* from this journal or bank (an out_dir or results folder) instead of "
        "optimising it on the edited model; keys, residuals and updates are still computed on this run's weights. "
        "Not the sequential protocol: results say so.", default=None,
    )
    targets_wait: bool = _help(
        "With targets: a record the targets do not hold yet (a bank still being computed) stops the run with a "
        "checkpoint (status 'stopped') instead of an error; resume=true continues once they hold it.", default=False,
    )
    journal_chunk: int = _help("Journaled steps per sealed chunk file of out_dir/journal.", default=50)
    baseline_cache: bool = _help(
        "Reuse the unedited model's evaluation (locality reference and the step-0 point) from $BETAEDIT_CACHE/baseline "
        "when a run computed it for the same weights, requests, eval settings and scoring code (runner/baseline.py).",
        default=True,
    )

    def __post_init__(self) -> None:
        _int("num_edits", self.num_edits, 1)
        _int("journal_chunk", self.journal_chunk, 1)
        if self.mode not in MODES:
            raise ConfigError(f"expected one of {list(MODES)}", field="mode", value=self.mode)
        if self.targets_wait and not self.targets:
            raise ConfigError("waits for fixed targets, but none are given", field="targets_wait", value=True,
                              fix="set targets=PATH, or drop targets_wait")
        if self.mode == "bank" and self.targets:
            raise ConfigError("a bank computes targets", field="targets", value=self.targets, fix="drop targets for mode=bank")
        _int("batch_size", self.batch_size, 1)
        _int("eval_every", self.eval_every, 1)
        _int("checkpoint_every", self.checkpoint_every, 0)
        _int("keep_checkpoints", self.keep_checkpoints, 1)
        _int("seed", self.seed, 0)
        _int("stop_after", self.stop_after, 1, allow_none=True)
        if self.stop_after is not None and self.stop_after >= self.num_edits:
            raise ConfigError(f"must be below num_edits={self.num_edits} (or null to run to the end)", field="stop_after",
                              value=self.stop_after)
        if not self.out_dir:
            raise ConfigError("expected a directory path", field="out_dir", value=self.out_dir)


def _override_type(annotation: Any) -> Any:
    """OmegaConf type of a ``hparams.X`` override for a hyperparameter field's annotation (always Optional)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _override_type(inner[0]) if len(inner) == 1 else Optional[Any]
    if annotation in (int, float, str, bool):
        return Optional[annotation]
    if annotation is list or origin is list:
        return Optional[List[Any]]
    if origin is typing.Literal:
        return Optional[str]  # the hparams class checks the choice and names the allowed values
    return Optional[Any]


def hparams_override_fields() -> Dict[str, Any]:
    """{field: OmegaConf type} of every ``hparams.X`` override: the fields of every registered method's
    hyperparameters, except those the runner sets itself (``alg_name``, ``model_name``, ``batch_size`` ...)."""
    from ..methods import METHODS, get_method

    get_method("BetaEdit")  # loads the shipped methods
    out: Dict[str, Any] = {}
    for method in METHODS:
        hints = typing.get_type_hints(method.hparams_class)
        for f in dataclasses.fields(method.hparams_class):
            if f.metadata.get("runner", True) and f.name not in out:
                out[f.name] = _override_type(hints[f.name])
    return out


def run_config_class() -> type:
    """The structured config of a run: `RunFields` plus ``hparams`` (one optional override per
    hyperparameter field of the registered methods; null keeps the YAML's value)."""
    overrides = dataclasses.make_dataclass(
        "HparamsOverrides",
        [(name, typ, field(default=None)) for name, typ in hparams_override_fields().items()],
    )
    return dataclasses.make_dataclass(
        "RunConfig",
        [("hparams", overrides, field(default_factory=overrides, metadata={"help": "hparams.X=value overrides."}))],
        bases=(RunFields,),
    )


def register_configs() -> None:
    """Store the run schema and one ``method`` option per registered method in Hydra's ConfigStore.

    Called by the command line before Hydra composes (not at import); storing again replaces.
    """
    from hydra.core.config_store import ConfigStore

    from ..methods import METHODS, get_method

    get_method("BetaEdit")  # loads the shipped methods
    store = ConfigStore.instance()
    store.store(name="run_schema", node=run_config_class())
    for method in METHODS:
        store.store(group="method", name=method.cli_name, node=MethodConfig(name=method.cli_name, alg=method.name))


def group_options(group: str) -> List[str]:
    """The options of a config group: registered methods for ``method``, YAML files for the others."""
    if group == "method":
        from ..methods import METHODS, get_method

        get_method("BetaEdit")
        return sorted(m.cli_name for m in METHODS)
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# ============================================================================ validation
def _as_dict(cfg: Any) -> dict:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return json.loads(json.dumps(dict(cfg), default=str))


def validate_config(cfg: Any) -> dict:
    """Check a composed configuration against the schema; returns it as a plain, resolved dict.

    Args:
        cfg: a Hydra ``DictConfig`` or a mapping with the keys of `run_config_class` (e.g. a
            results.json's ``config``).
    Raises:
        ConfigError: a missing group, an unknown key, a value of the wrong type or out of range.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    plain = _as_dict(cfg)
    plain.pop("hydra", None)
    for group in GROUPS:
        node = plain.get(group)
        if not isinstance(node, Mapping) or "name" not in node:
            raise ConfigError(f"expected a {group} config group." + did_you_mean("", group_options(group)), field=group, value=node)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(run_config_class()), plain)
        OmegaConf.to_object(merged)  # runs the dataclasses' __post_init__ checks
    except OmegaConfBaseException as exc:
        raise omegaconf_error(exc) from None
    return OmegaConf.to_container(merged, resolve=True)


def omegaconf_error(exc: Exception) -> ConfigError:
    """An OmegaConf error as a ConfigError whose field is the error's key (its first line the problem)."""
    if isinstance(exc, ConfigError):  # raised by a schema class's __post_init__
        return exc
    cause = exc.__cause__
    if isinstance(cause, ConfigError):
        return cause
    key = getattr(exc, "full_key", None) or None
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ConfigError(first, field=key)


