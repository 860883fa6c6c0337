"""MEMIT with history (Meng et al., 2023, arXiv:2210.07229), per edited layer l:

    Delta = R K^T (K K^T + H + w C0)^-1,   w = ``mom2_update_weight`` (one value, or one per layer)

No projection; H (the keys of every earlier edit) keeps earlier edits in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from ..errors import HyperParamsError
from .base import EditHyperParams, UpdateRule
from .registry import Method, register_method

__all__ = ["MEMITHyperParams", "MEMITRule"]


@dataclass
class MEMITHyperParams(EditHyperParams):
    """MEMIT with history: ``alg_name: MEMIT`` in a YAML, stored as 'BE-MEMIT' (this package's ALG_DICT key).

    Uses the shared fields only; ``mom2_update_weight`` is w, which must be positive: before the
    first edit H is 0, so with w = 0 the normal matrix K K^T + H + w C0 is singular.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        weights = self.mom2_update_weight if isinstance(self.mom2_update_weight, list) else [self.mom2_update_weight]
        if any(w <= 0 for w in weights):
            raise HyperParamsError(
                f"mom2_update_weight={self.mom2_update_weight!r}: MEMIT needs w > 0 (every layer): the weight of C0 in "
                "K K^T + H + w C0 keeps the first edits' solve well posed; use e.g. 15000 (the model files' value)"
            )


class MEMITRule(UpdateRule):
    """Solver U = I, lambda1 = w of the layer, lambda2 = 0."""

    def solver_lambdas(self, layer: int) -> Tuple[float, float]:
        return self.hparams.update_weight(layer), 0.0


register_method(Method(
    name="MEMIT", easyedit_name="BE-MEMIT", hparams_class=MEMITHyperParams, rule_class=MEMITRule,
    summary="R K^T (K K^T + H + w C0)^-1: least squares with history, no projection",
))
