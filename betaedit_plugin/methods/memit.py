"""MEMIT with history (Meng et al., 2023, arXiv:2210.07229), per edited layer l:

    Delta = R K^T (K K^T + H + w C0)^-1,   w = ``mom2_update_weight`` (one value, or one per layer)

No projection; H (the keys of every earlier edit) keeps earlier edits in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .base import EditHyperParams, UpdateRule
from .registry import Method, register_method

__all__ = ["MEMITHyperParams", "MEMITRule"]


@dataclass
class MEMITHyperParams(EditHyperParams):
    """MEMIT with history: ``alg_name: MEMIT`` in a YAML, stored as 'BE-MEMIT' (this package's ALG_DICT key).

    Uses the shared fields only; ``mom2_update_weight`` is w.
    """


class MEMITRule(UpdateRule):
    """Solver U = I, lambda1 = w of the layer, lambda2 = 0."""

    def solver_lambdas(self, layer: int) -> Tuple[float, float]:
        return self.hparams.update_weight(layer), 0.0


register_method(Method(
    name="MEMIT", easyedit_name="BE-MEMIT", hparams_class=MEMITHyperParams, rule_class=MEMITRule,
    summary="R K^T (K K^T + H + w C0)^-1: least squares with history, no projection",
))
