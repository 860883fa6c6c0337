"""Where the shipped hyperparameter YAMLs are: ``hparams/<Alg>/<model>.yaml``.

The YAMLs have one source, the top-level ``hparams/`` directory of the repository (EasyEdit users
pass paths into it). The package reaches it as ``betaedit_plugin/_hparams``: in a checkout that is
a symbolic link to ``../hparams``; a wheel (``pip install .``) holds copies made when the wheel is
built, as package data. So the same call works in both::

    from betaedit_plugin import hparams_path, load_hparams
    hp = load_hparams(hparams_path("BetaEdit", "llama3-8b-instruct"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from ._suggest import did_you_mean
from .methods import get_method

__all__ = ["hparams_dir", "hparams_path", "available_hparams"]

_PACKAGE = Path(__file__).resolve().parent


def hparams_dir() -> Path:
    """The directory holding ``<Alg>/<model>.yaml`` (package data, or the checkout's ``hparams/``).

    Raises:
        FileNotFoundError: neither exists (a broken install).
    """
    for candidate in (_PACKAGE / "_hparams", _PACKAGE.parent / "hparams"):
        if candidate.is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        f"no hyperparameter YAMLs under {_PACKAGE / '_hparams'} or {_PACKAGE.parent / 'hparams'}; "
        "reinstall the package (`pip install .` from a checkout ships them as package data)"
    )


def available_hparams() -> Dict[str, List[str]]:
    """``{alg directory: [model names]}`` of the shipped YAMLs, e.g. ``{"BetaEdit": ["gpt2-xl", ...]}``."""
    root = hparams_dir()
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith((".", "_"))
    }


def _alg_dir(alg: str) -> str:
    """The YAML directory of an algorithm name (any spelling: 'BE-AlphaEdit', 'alphaedit' -> 'AlphaEdit')."""
    return get_method(alg).name  # KeyError with "Did you mean" for unknown names


def hparams_path(alg: str, model: str) -> Path:
    """Path of the shipped YAML for ``alg`` ('BetaEdit', 'AlphaEdit', 'MEMIT') and ``model``.

    Args:
        alg: algorithm name; 'BE-AlphaEdit' / 'BE-MEMIT' are accepted too.
        model: the file's stem, e.g. 'llama3-8b-instruct', 'smollm2-135m' (``.yaml`` may be given).

    Raises:
        KeyError: unknown algorithm, or no YAML for this model (the message lists close matches
            and the models available for ``alg``).
    """
    folder = _alg_dir(alg)
    stem = model[: -len(".yaml")] if model.endswith(".yaml") else model
    path = hparams_dir() / folder / f"{stem}.yaml"
    if path.is_file():
        return path
    raise KeyError(
        f"No {folder} hyperparameters for model {model!r}." + did_you_mean(stem, available_hparams().get(folder, []))
        + "; or pass the path of a YAML of your own to from_hparams()"
    )
