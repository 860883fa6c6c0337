"""Null-space projectors and BetaEdit's protected matrix."""

from __future__ import annotations

import torch

from ._checks import check_cov, check_scalar

__all__ = ["nullspace_basis", "nullspace_split", "nullspace_projector", "protected_cov", "energy_share"]


def nullspace_split(cov, threshold: float = 0.02) -> tuple:
    """(U, eigvals): `nullspace_basis` and every eigenvalue of ``cov`` (d_k,), ascending, float64."""
    check_cov("cov", cov)
    threshold = check_scalar("threshold", threshold, positive=True)
    eigvals, eigvecs = torch.linalg.eigh(cov.double())
    return eigvecs[:, eigvals < threshold].to(dtype=cov.dtype), eigvals


def nullspace_basis(cov, threshold: float = 0.02) -> torch.Tensor:
    """Orthonormal basis U (d_k, m) of the eigenvectors of ``cov`` with eigenvalue < threshold.

    Uses the symmetric eigendecomposition in float64. P = U U^T is the
    projector onto the (approximate) null space of ``cov``; m may be 0.
    Returned in ``cov``'s dtype, on its device.
    """
    return nullspace_split(cov, threshold)[0]


def nullspace_projector(cov, threshold: float = 0.02) -> torch.Tensor:
    """Projector P (d_k, d_k) onto the eigenvectors of ``cov`` with eigenvalue < threshold.

    P is symmetric and idempotent; its rank is the number of such eigenvalues.
    """
    U = nullspace_basis(cov, threshold).double()
    return (U @ U.T).to(dtype=cov.dtype)


def energy_share(basis, cov) -> float:
    """tr(U^T A U) / tr(A): the share of the energy of A (a covariance of keys) inside span(U), U an
    orthonormal basis (d_k, m): e.g. how much of the pre-trained keys a null-space projector lets through."""
    return float(torch.einsum("ij,ik,kj->", basis, cov, basis) / torch.trace(cov))


def protected_cov(hist_cov, n_edits: int, prior_cov, lambda1: float) -> torch.Tensor:
    """BetaEdit's protected matrix S = (H / t + lambda1 C0) / (lambda1 + 1).

    Args:
        hist_cov: (d_k, d_k) H, the sum of K K^T over the t edits written so far.
        n_edits: t >= 0; with t = 0 the history term is left out (H must then be 0).
        prior_cov: (d_k, d_k) C0.
        lambda1: weight of C0, >= 0.

    Returns:
        S (d_k, d_k) in ``prior_cov``'s dtype: a weighted mean of the per-edit
        key second moment H / t and C0, so its eigenvalues are on C0's scale and
        the same ``nullspace_threshold`` applies.
    """
    check_cov("prior_cov", prior_cov)
    check_cov("hist_cov", hist_cov, prior_cov.shape[0])
    if isinstance(n_edits, bool) or not isinstance(n_edits, int) or n_edits < 0:
        raise ValueError(f"n_edits={n_edits!r}: expected an int >= 0 (edits written so far)")
    lambda1 = check_scalar("lambda1", lambda1)
    C0 = prior_cov.double()
    H = hist_cov.to(C0.device, torch.float64)
    if n_edits == 0:
        if bool(H.abs().max() > 0):
            raise ValueError("n_edits=0 but hist_cov is non-zero: pass the number of edits that built hist_cov")
        hist_term = torch.zeros_like(C0)
    else:
        hist_term = H / n_edits
    if lambda1 == 0 and n_edits == 0:
        raise ValueError("lambda1=0 and n_edits=0: S would be zero; use lambda1 > 0 or at least one edit")
    return ((hist_term + lambda1 * C0) / (lambda1 + 1.0)).to(dtype=prior_cov.dtype)
