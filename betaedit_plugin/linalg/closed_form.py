"""Closed-form updates of MEMIT, AlphaEdit and BetaEdit for one edited layer.

Shapes follow ``nn.Linear``: the edited weight W is (d_v, d_k) and the
returned Delta, to be added to W, is (d_v, d_k) too.

- keys (d_k, n): inputs of the edited projection for the n edits of this step.
- resid (d_v, n): what the layer's output still has to move by for each edit.
- prior_cov (d_k, d_k): C0 = E[k k^T] over a text corpus.
- hist_cov (d_k, d_k): H = sum of K K^T over all edits already written.
- projector (d_k, d_k): P, orthogonal projector onto the protected null space.

All solves run in float64; results come back in ``resid``'s dtype, on its device.
"""

from __future__ import annotations

import torch

from ._checks import check_cov, check_keys_resid, check_scalar

__all__ = ["memit_delta", "alphaedit_delta", "betaedit_delta"]


def _history(hist_cov, d_k: int, like: torch.Tensor) -> torch.Tensor:
    if hist_cov is None:
        return torch.zeros(d_k, d_k, dtype=torch.float64, device=like.device)
    check_cov("hist_cov", hist_cov, d_k)
    return hist_cov.to(device=like.device, dtype=torch.float64)


def memit_delta(keys, resid, prior_cov, hist_cov=None, mom2_update_weight: float = 15000.0) -> torch.Tensor:
    """History-aware MEMIT: Delta = R K^T (K K^T + H + w C0)^-1.

    Args:
        keys: (d_k, n). resid: (d_v, n). prior_cov: (d_k, d_k) C0.
        hist_cov: (d_k, d_k) H, or None for no history.
        mom2_update_weight: w >= 0, weight of C0.

    Returns:
        Delta (d_v, d_k) in ``resid``'s dtype.
    """
    d_k, _, _ = check_keys_resid(keys, resid)
    check_cov("prior_cov", prior_cov, d_k)
    w = check_scalar("mom2_update_weight", mom2_update_weight)
    K, R = keys.double(), resid.double().to(keys.device)
    A = K @ K.T + _history(hist_cov, d_k, K) + w * prior_cov.to(K.device, torch.float64)
    # A is symmetric positive definite when C0 is: solve A X = K, then Delta = R X^T.
    chol, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        X = torch.linalg.solve(A, K)  # semi-definite corner cases: let LU report a singular matrix
    else:
        X = torch.cholesky_solve(K, chol)
    return (R @ X.T).to(dtype=resid.dtype, device=resid.device)


def alphaedit_delta(keys, resid, projector, hist_cov=None, l2: float = 10.0) -> torch.Tensor:
    """AlphaEdit: Delta = R K^T P ((K K^T + H) P + l2 I)^-1.

    Args:
        keys: (d_k, n). resid: (d_v, n). projector: (d_k, d_k) P.
        hist_cov: (d_k, d_k) H, or None. l2: ridge term >= 0.

    Returns:
        Delta (d_v, d_k); its rows lie in the range of P, so outputs on keys
        orthogonal to that range are left unchanged.
    """
    d_k, _, _ = check_keys_resid(keys, resid)
    check_cov("projector", projector, d_k)
    l2 = check_scalar("l2", l2)
    return _projected_solve(keys, resid, projector, _history(hist_cov, d_k, keys), l2)


def betaedit_delta(
    keys, resid, projector, prior_cov, hist_cov=None, lambda1: float = 3000.0, lambda2: float = 10.0
) -> torch.Tensor:
    """BetaEdit: Delta = R K^T P ((K K^T + H + lambda1 C0) P + lambda2 I)^-1.

    lambda1 = 0 gives AlphaEdit. The leakage penalty lambda1 C0 keeps the part
    of the update that does act on pre-trained keys (the null space is only
    approximate) small.

    Args:
        keys: (d_k, n). resid: (d_v, n). projector: (d_k, d_k) P.
        prior_cov: (d_k, d_k) C0. hist_cov: (d_k, d_k) H, or None.
        lambda1: leakage penalty >= 0. lambda2: ridge term >= 0.

    Returns:
        Delta (d_v, d_k) in ``resid``'s dtype.
    """
    d_k, _, _ = check_keys_resid(keys, resid)
    check_cov("projector", projector, d_k)
    check_cov("prior_cov", prior_cov, d_k)
    lambda1 = check_scalar("lambda1", lambda1)
    lambda2 = check_scalar("lambda2", lambda2)
    extra = _history(hist_cov, d_k, keys) + lambda1 * prior_cov.to(keys.device, torch.float64)
    return _projected_solve(keys, resid, projector, extra, lambda2)


def _projected_solve(keys, resid, projector, extra, ridge: float) -> torch.Tensor:
    """R K^T P ((K K^T + extra) P + ridge I)^-1, via the transposed system.

    With A = K K^T + extra (symmetric) and P symmetric,
    Delta^T = (P A + ridge I)^-1 P K R^T.
    """
    K = keys.double()
    R = resid.double().to(K.device)
    P = projector.to(K.device, torch.float64)
    A = K @ K.T + extra
    lhs = P @ A + ridge * torch.eye(A.shape[0], dtype=torch.float64, device=K.device)
    rhs = P @ K @ R.T
    return torch.linalg.solve(lhs, rhs).T.to(dtype=resid.dtype, device=resid.device)
