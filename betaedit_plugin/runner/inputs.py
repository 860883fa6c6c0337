"""What a validated configuration names: the hyperparameters (its YAML file merged with the
model's and the user's overrides), the edit requests of its dataset, and the MMLU probe set.

Each raises `ConfigError` with the key at fault as its ``field``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from .errors import ConfigError

__all__ = ["hparams_file", "build_hparams", "load_requests", "check_mmlu"]


def hparams_file(cfg: Mapping) -> Path:
    """``<hparams dir>/<Alg>/<model.hparams_file>.yaml``: from ``hparams_dir`` if set, else the package's
    YAMLs, then ``./hparams``."""
    from ..hparams_files import hparams_dir
    from ..methods import get_method

    alg, stem = get_method(cfg["method"]["alg"]).name, cfg["model"]["hparams_file"]
    if cfg.get("hparams_dir"):
        roots = [Path(cfg["hparams_dir"])]
    else:
        roots = [Path.cwd() / "hparams"]
        try:
            roots.insert(0, hparams_dir())
        except FileNotFoundError:
            pass
    for root in roots:
        path = root / alg / f"{stem}.yaml"
        if path.is_file():
            return path
    raise ConfigError(
        f"no {alg}/{stem}.yaml under {', '.join(str(r) for r in roots)}", field="model.hparams_file", value=stem,
        fix="add one or set hparams_dir=/dir/with/<Alg>/<model>.yaml",
    )


def build_hparams(cfg: Mapping):
    """Hyperparameters: the YAML file, then ``model.hparams_overrides``, then the user's ``hparams.*``.

    Model overrides for fields a method lacks (e.g. ``nullspace_threshold`` for MEMIT) are skipped;
    a user override that the method lacks is an error.
    """
    from ..methods import get_method
    from ..methods.base import read_hparams_file

    path = hparams_file(cfg)
    raw, _ = read_hparams_file(path)
    cls = get_method(raw.get("alg_name", cfg["method"]["alg"])).hparams_class
    fields = {f.name for f in dataclasses.fields(cls)}
    merged = dict(raw)
    for key, value in (cfg["model"].get("hparams_overrides") or {}).items():
        if key in fields:
            merged[key] = value
    for key, value in (cfg.get("hparams") or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError(f"method={cfg['method']['name']} ({cls.__name__}) has no field {key!r}",
                              field=f"hparams.{key}", value=value, fix="drop it for this method")
        merged[key] = value
    merged["batch_size"] = cfg["batch_size"]
    merged.setdefault("model_name", cfg["model"]["path"])
    try:
        return cls.from_dict(merged, source=str(path))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), field=f"hparams ({path.name} + overrides)") from None


def load_requests(cfg: Mapping) -> list:
    """The first ``num_edits`` requests of the configured dataset, an `EditList` whose ``skipped``
    names the invalid records left out (``data.skip_invalid=true``; otherwise they are an error)."""
    from ..data import DatasetError, TooFewRecords, load_dataset

    data, n = cfg["data"], cfg["num_edits"]
    source = data.get("path") or data.get("split")
    try:
        return load_dataset(data["name"], n=n, split=source, skip_invalid=bool(data.get("skip_invalid")))
    except TooFewRecords as exc:
        valid = "valid " if data.get("skip_invalid") else ""
        raise ConfigError(f"data={data['name']} ({source}) has only {exc.available} {valid}edits", field="num_edits",
                          value=n, fix=f"ask for at most {exc.available}") from None
    except DatasetError as exc:
        raise ConfigError.about(data_key(data), source, exc) from None
    except KeyError as exc:
        raise ConfigError(exc.args[0], field="data.split", value=source) from None


def data_key(data: Mapping) -> str:
    """The key that names a run's data: ``data.path`` when set, else ``data.split``."""
    return "data.path" if data.get("path") else "data.split"


def check_mmlu(cfg: Mapping) -> None:
    """The MMLU probe set has ``eval.mmlu_n`` questions (ConfigError otherwise)."""
    from ..eval.capability import load_mmlu

    if cfg["eval"]["mmlu_n"]:
        try:
            load_mmlu(cfg["eval"]["mmlu_n"])
        except ValueError as exc:
            raise ConfigError.about("eval.mmlu_n", cfg["eval"]["mmlu_n"], exc) from None
