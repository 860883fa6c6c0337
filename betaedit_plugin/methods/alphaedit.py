"""AlphaEdit (Fang et al., ICLR 2025, arXiv:2410.02355), per edited layer l:

    Delta = R K^T P ((K K^T + H) P + L2 I)^-1

P projects onto the eigenvectors of C0 with eigenvalues below ``nullspace_threshold`` (fixed for
the whole run); H holds the keys of every earlier edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from ..errors import HyperParamsError
from .base import EditHyperParams, UpdateRule, _help, checked_nullspace
from .registry import Method, register_method

__all__ = ["AlphaEditHyperParams", "AlphaEditRule"]


@dataclass
class AlphaEditHyperParams(EditHyperParams):
    """AlphaEdit: ``alg_name: AlphaEdit`` in a YAML, stored as 'BE-AlphaEdit' (this package's ALG_DICT key)."""

    nullspace_threshold: float = _help("Eigenvalues of C0 below this span the protected null space.", default=2e-2)
    L2: float = _help("Ridge term lambda2 added to the projected normal matrix.", default=10.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_float("nullspace_threshold", positive=True)
        self._check_float("L2", positive=False)
        if self.L2 == 0:  # before the first edit H is 0: U^T K K^T U has rank n < the null space's
            raise HyperParamsError(
                "L2=0: AlphaEdit needs L2 > 0; the projected normal matrix U^T (K K^T + H) U is singular until "
                "H spans the null space; use e.g. 10 (the model files' value)"
            )


class AlphaEditRule(UpdateRule):
    """Solver on the null-space basis of C0, lambda1 = 0, lambda2 = L2."""

    def solver_lambdas(self, layer: int) -> Tuple[float, float]:
        return 0.0, float(self.hparams.L2)

    def initial_basis(self, prior_cov):
        return checked_nullspace(prior_cov, self.hparams.nullspace_threshold, "C0")


register_method(Method(
    name="AlphaEdit", easyedit_name="BE-AlphaEdit", hparams_class=AlphaEditHyperParams, rule_class=AlphaEditRule,
    summary="R K^T P ((K K^T + H) P + L2 I)^-1: projected into the null space of C0",
))
