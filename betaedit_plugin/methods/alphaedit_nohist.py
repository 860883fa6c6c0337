"""AlphaEdit without history, the sequential-editing baseline, per edited layer l:

    Delta = R K^T P (K K^T P + L2 I)^-1

AlphaEdit with H = 0: each edit is projected into the null space of C0 like AlphaEdit's, but
solves for its own keys only, so nothing holds earlier edits in place except the projection.
Side by side with AlphaEdit it shows what the history term H buys over thousands of edits.
The editor still accumulates H in its state (for the diagnostics); the solver never takes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .alphaedit import AlphaEditHyperParams, AlphaEditRule
from .registry import Method, register_method

__all__ = ["AlphaEditNoHistHyperParams", "AlphaEditNoHistRule"]


@dataclass
class AlphaEditNoHistHyperParams(AlphaEditHyperParams):
    """AlphaEdit's fields (``nullspace_threshold``, ``L2``); ``alg_name: AlphaEdit-NoHist`` in a YAML."""


class AlphaEditNoHistRule(AlphaEditRule):
    """AlphaEdit's solver (null-space basis of C0, lambda1 = 0, lambda2 = L2) without the history."""

    uses_history = False


register_method(Method(
    name="AlphaEdit-NoHist", easyedit_name="BE-AlphaEdit-NoHist", hparams_class=AlphaEditNoHistHyperParams,
    rule_class=AlphaEditNoHistRule,
    summary="R K^T P (K K^T P + L2 I)^-1: AlphaEdit without the history of earlier edits (baseline)",
))
