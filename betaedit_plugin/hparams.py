"""Hyperparameters of the editors, in EasyEdit's flat-YAML format.

The classes live with their methods (`betaedit_plugin.methods`): `MEMITHyperParams`,
`AlphaEditHyperParams`, `BetaEditHyperParams`, each a dataclass on this package's own
`HyperParams` base. This module is where a YAML becomes one of them::

    hp = load_hparams("hparams/BetaEdit/smollm2-135m.yaml")        # class picked by alg_name
    hp = BetaEditHyperParams.from_hparams("hparams/BetaEdit/smollm2-135m.yaml")

``alg_name`` may be any spelling of a registered method ('BetaEdit', 'AlphaEdit', 'alphaedit',
'BE-MEMIT', ...). The loaded object carries the name this package registers in EasyEdit's
``ALG_DICT`` ('BetaEdit', 'BE-AlphaEdit', 'BE-MEMIT'), so that ``BaseEditor`` dispatches to this
package's editor and not to EasyEdit's own AlphaEdit or MEMIT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from .methods import (
    AlphaEditHyperParams,
    BetaEditHyperParams,
    EditHyperParams,
    HyperParams,
    MEMITHyperParams,
    get_method,
)
from .methods.base import read_hparams_file
from .requests import FACT_TOKENS, FactToken

__all__ = [
    "HyperParams",
    "EditHyperParams",
    "BetaEditHyperParams",
    "AlphaEditHyperParams",
    "MEMITHyperParams",
    "FACT_TOKENS",
    "FactToken",
    "hparams_class_for",
    "load_hparams",
    "read_hparams_file",
]


def hparams_class_for(alg_name: str) -> type:
    """Hyperparameter class of the method called ``alg_name`` (any spelling).

    Raises:
        KeyError: unknown name, with "Did you mean" and the available methods.
    """
    return get_method(alg_name).hparams_class


def load_hparams(path: Union[str, Path]) -> EditHyperParams:
    """Read a YAML and build the class of its ``alg_name``.

    Raises:
        FileNotFoundError / ValueError: no such file, no mapping, no ``alg_name``, bad values.
        KeyError: unknown ``alg_name`` ("Did you mean").
    """
    config, path = read_hparams_file(path)
    if "alg_name" not in config:
        raise ValueError(f"hparams file {str(path)!r}: expected a mapping with an 'alg_name' field")
    return hparams_class_for(config["alg_name"]).from_dict(config, source=str(path))
