"""BetaEdit (IJCAI 2026), per edited layer l:

    Delta = R K^T P ((K K^T + H + lambda1 C0) P + lambda2 I)^-1

P starts from C0 like AlphaEdit's; every ``tau`` edits it is recomputed from the protected matrix
S = (H / t + lambda1 C0) / (lambda1 + 1) (t = edits so far), and the solver is rebuilt on the
new basis. lambda1 = 0 gives AlphaEdit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Tuple

from ..errors import HyperParamsError
from .base import EditHyperParams, UpdateRule, _help, checked_nullspace
from .registry import Method, register_method

logger = logging.getLogger(__name__)

__all__ = ["BetaEditHyperParams", "BetaEditRule"]


@dataclass
class BetaEditHyperParams(EditHyperParams):
    """BetaEdit: leakage-penalised, history-aware null-space editing (``alg_name: BetaEdit``).

    Delta = R K^T P ((K K^T + H + lambda1 C0) P + lambda2 I)^-1, with P refreshed
    every ``tau`` edits from S = (H / t + lambda1 C0) / (lambda1 + 1).
    """

    nullspace_threshold: float = _help("Eigenvalues of the protected matrix below this span the projector.", default=2e-2)
    lambda1: float = _help("Leakage penalty: weight of C0 inside the solve and in the protected matrix S.", default=3000.0)
    lambda2: float = _help("Ridge term added to the projected normal matrix.", default=10.0)
    tau: int = _help("Refresh the projector from pre-trained plus edited keys every tau edits.", default=1000)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_float("nullspace_threshold", positive=True)
        self._check_float("lambda1", positive=False)
        self._check_float("lambda2", positive=False)
        if self.lambda1 == 0 and self.lambda2 == 0:
            raise HyperParamsError(
                "lambda1=0 and lambda2=0: BetaEdit needs one of them > 0; without them the projected normal matrix "
                "U^T (K K^T + H) U is singular until H spans the null space; use e.g. lambda2=10"
            )
        if not isinstance(self.tau, int) or isinstance(self.tau, bool) or self.tau < 1:
            raise HyperParamsError(f"tau={self.tau!r}: expected an int >= 1 (edits between projector refreshes)")


class BetaEditRule(UpdateRule):
    """Solver on the null-space basis of C0 with lambda1, lambda2; projector refresh every tau edits.

    ``last_refresh`` holds, after a refresh, how much each layer's projector changed:
    ``{layer: {"step", "rank_before", "rank_after", "max_angle_deg"}}`` (the largest principal angle
    between the old and the new null space, measured within the smaller of the two).
    """

    last_refresh: dict = {}

    def solver_lambdas(self, layer: int) -> Tuple[float, float]:
        return float(self.hparams.lambda1), float(self.hparams.lambda2)

    def initial_basis(self, prior_cov):
        return checked_nullspace(prior_cov, self.hparams.nullspace_threshold, "C0")

    def after_commit(self, state) -> bool:
        """Every ``tau`` edits: P from S = (H / t + lambda1 C0) / (lambda1 + 1), solvers rebuilt."""
        if state.step - state.last_refresh < self.hparams.tau:
            return False
        from ..linalg import protected_cov  # torch on first use: `import betaedit_plugin` stays light

        hp = self.hparams
        changes = {}
        for l, s in state.layers.items():
            S = protected_cov(s.hist_cov, state.step, s.prior_cov, hp.lambda1)
            basis = checked_nullspace(S, hp.nullspace_threshold, f"the protected matrix S of layer {l} at step {state.step}")
            old = s.solver.basis
            changes[l] = {"step": state.step, "rank_before": None if old is None else int(old.shape[1]),
                          "rank_after": int(basis.shape[1]), "max_angle_deg": largest_principal_angle(old, basis)}
            s.solver.refresh(basis, s.hist_cov)
            logger.info("step %d, layer %d: projector refreshed, rank %s -> %d, largest principal angle %.3g deg",
                        state.step, l, changes[l]["rank_before"], basis.shape[1], changes[l]["max_angle_deg"])
        state.last_refresh = state.step
        self.last_refresh = changes
        return True


def largest_principal_angle(a, b) -> float:
    """Largest principal angle (degrees) between span(a) and span(b), orthonormal columns, within the
    smaller of the two subspaces: 0 when one contains the other, 90 when some direction of the smaller
    one is orthogonal to the larger. NaN when either is missing or empty."""
    import math

    import torch

    if a is None or b is None or a.shape[1] == 0 or b.shape[1] == 0:
        return float("nan")
    small, large = (a, b) if a.shape[1] <= b.shape[1] else (b, a)
    cosines = torch.linalg.svdvals(small.double().T @ large.to(small.device).double())
    return math.degrees(math.acos(min(1.0, float(cosines.min()))))


register_method(Method(
    name="BetaEdit", hparams_class=BetaEditHyperParams, rule_class=BetaEditRule,
    summary="R K^T P ((K K^T + H + lambda1 C0) P + lambda2 I)^-1, P refreshed from H and C0 every tau edits",
))
