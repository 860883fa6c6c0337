"""BetaEdit (IJCAI 2026), per edited layer l:

    Delta = R K^T P ((K K^T + H + lambda1 C0) P + lambda2 I)^-1

P starts from C0 like AlphaEdit's; every ``tau`` edits it is recomputed from the protected matrix
S = (H / t + lambda1 C0) / (lambda1 + 1) (t = edits so far), and the solver is rebuilt on the
new basis. lambda1 = 0 gives AlphaEdit until the first refresh (throughout, with no refresh); after
it S = H / t leaves C0 out of the projector too (the paper's ablation without the penalty).

``recollect_c0`` (not in the paper, off by default): at each refresh C0 itself is collected again,
from the edited model, and replaces the unedited model's in S, in the penalty and in the projector.
Edits at earlier layers move the keys a later layer reads (results/CAMPAIGN.md, "Where the
perplexity comes from"), so the unedited model's C0 protects keys the model no longer produces.
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
    recollect_c0: bool = _help(
        "At each refresh, collect C0 again from the edited model (the mom2_* corpus, not cached) and use it in "
        "place of the unedited model's; not in the paper. Costs one statistics pass per refresh.", default=False)

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
        if not isinstance(self.recollect_c0, bool):
            raise HyperParamsError(f"recollect_c0={self.recollect_c0!r}: expected true or false (collect C0 again from the "
                                   "edited model at each refresh)")


class BetaEditRule(UpdateRule):
    """Solver on the null-space basis of C0 with lambda1, lambda2; projector refresh every tau edits.

    ``last_refresh`` holds, after a refresh, how much each layer's projector changed:
    ``{layer: {"step", "rank_before", "rank_after", "max_angle_deg"}}`` (the largest principal angle
    between the old and the new null space, measured within the smaller of the two); with
    ``recollect_c0`` also ``"c0_change"``, ||C0_new - C0_old||_F / ||C0_old||_F.
    """

    last_refresh: dict = {}

    def solver_lambdas(self, layer: int) -> Tuple[float, float]:
        return float(self.hparams.lambda1), float(self.hparams.lambda2)

    def initial_basis(self, prior_cov):
        return checked_nullspace(prior_cov, self.hparams.nullspace_threshold, "C0")

    def after_commit(self, state, current_priors=None) -> bool:
        """Every ``tau`` edits: P from S = (H / t + lambda1 C0) / (lambda1 + 1), solvers rebuilt; with
        ``recollect_c0``, C0 from ``current_priors()`` ({layer: C0 of the model as edited so far})."""
        if state.step - state.last_refresh < self.hparams.tau:
            return False
        import torch  # on first use: `import betaedit_plugin` stays light

        from ..linalg import protected_cov

        hp = self.hparams
        priors = None
        if hp.recollect_c0:
            if current_priors is None:
                raise HyperParamsError("recollect_c0=true: the refresh needs the edited model's statistics; "
                                       "edit through BetaEditor, which passes them")
            priors = current_priors()
            for l, s in state.layers.items():
                if priors[l].shape != s.prior_cov.shape:
                    raise ValueError(f"recollect_c0: the key statistics of layer {l} have shape {tuple(priors[l].shape)}, "
                                     f"expected {tuple(s.prior_cov.shape)}")
                if not bool(torch.isfinite(priors[l]).all()):
                    raise ValueError(f"recollect_c0: the key statistics of the edited model at layer {l}, step {state.step}, "
                                     "are not finite; the step is taken back (the model's keys overflowed: check the edits "
                                     "so far, or edit with recollect_c0=false)")
        changes = {}
        for l, s in state.layers.items():
            C0 = s.prior_cov if priors is None else priors[l].to(s.prior_cov.device, s.prior_cov.dtype)
            S = protected_cov(s.hist_cov, state.step, C0, hp.lambda1)
            basis = checked_nullspace(S, hp.nullspace_threshold, f"the protected matrix S of layer {l} at step {state.step}")
            old = s.solver.basis
            changes[l] = {"step": state.step, "rank_before": None if old is None else int(old.shape[1]),
                          "rank_after": int(basis.shape[1]), "max_angle_deg": largest_principal_angle(old, basis)}
            if priors is not None:
                changes[l]["c0_change"] = float((C0 - s.prior_cov).norm() / s.prior_cov.norm())
            s.solver.refresh(basis, s.hist_cov, prior_cov=None if priors is None else C0)
            s.prior_cov = C0
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
