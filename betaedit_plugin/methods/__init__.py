"""The editing methods, one file each, and the registry that names them.

Each method file holds its hyperparameter dataclass, its `UpdateRule` and one
`register_method` call. Adding a method is one such file (imported below) plus its YAMLs in
``hparams/<Name>/``: hyperparameter loading, the EasyEdit adapter and the runner read the registry.

    from betaedit_plugin.methods import get_method
    get_method("alphaedit").hparams_class   # AlphaEditHyperParams; any spelling works
"""

from .base import EditHyperParams, HyperParams, UpdateRule
from .registry import METHODS, Method, Registry, get_method, method_names, method_of, register_method

# the shipped methods, in the order comparisons list them
from .memit import MEMITHyperParams, MEMITRule
from .alphaedit import AlphaEditHyperParams, AlphaEditRule
from .alphaedit_nohist import AlphaEditNoHistHyperParams, AlphaEditNoHistRule
from .betaedit import BetaEditHyperParams, BetaEditRule

__all__ = [
    "HyperParams",
    "EditHyperParams",
    "UpdateRule",
    "Method",
    "Registry",
    "METHODS",
    "register_method",
    "get_method",
    "method_of",
    "method_names",
    "MEMITHyperParams",
    "AlphaEditHyperParams",
    "AlphaEditNoHistHyperParams",
    "BetaEditHyperParams",
    "MEMITRule",
    "AlphaEditRule",
    "AlphaEditNoHistRule",
    "BetaEditRule",
]
