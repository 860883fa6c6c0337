"""History bookkeeping and the incremental (Woodbury) solver for one layer.

The BetaEdit update with P = U U^T (U: d_k by m, orthonormal) has the exact
reduced form

    Delta = R K^T U (U^T A U + lambda2 I_m)^-1 U^T,   A = K K^T + H + lambda1 C0,

(proof: X = U (U^T A U + lambda2 I)^-1 U^T satisfies X (A P + lambda2 I) = P,
so X = P (A P + lambda2 I)^-1). Between two projector refreshes U is fixed and
G = U^T (H + lambda1 C0) U + lambda2 I only grows by B B^T with B = U^T K, so
``IncrementalSolver`` carries G^-1 and updates it with the Woodbury identity:

    (G + B B^T)^-1 B = W (I_n + B^T W)^-1,   W = G^-1 B,

which makes one edit O(d_k m n + m^2 n) instead of O(d_k^3).

The same object serves the three methods:
- BetaEdit: basis from ``nullspace_basis``, lambda1, lambda2;
- AlphaEdit: basis from C0, lambda1 = 0, lambda2 = L2;
- MEMIT with history: basis None (U = I), lambda1 = mom2_update_weight, lambda2 = 0.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._checks import check_cov, check_keys_resid, check_matrix, check_scalar

__all__ = ["add_keys", "IncrementalSolver"]


def add_keys(hist_cov, keys) -> torch.Tensor:
    """H + K K^T in ``hist_cov``'s dtype (accumulated in float64).

    Args:
        hist_cov: (d_k, d_k) H. keys: (d_k, n).
    """
    check_cov("hist_cov", hist_cov)
    check_matrix("keys", keys, rows=hist_cov.shape[0])
    K = keys.to(hist_cov.device, torch.float64)
    return (hist_cov.double() + K @ K.T).to(hist_cov.dtype)


class IncrementalSolver:
    """Carries G^-1 = (U^T (H + lambda1 C0) U + lambda2 I_m)^-1 for one layer, in float64.

    Args:
        prior_cov: (d_k, d_k) C0.
        basis: (d_k, m) orthonormal U, or None for U = I (no projection).
        hist_cov: (d_k, d_k) H at construction time, or None for zero.
        lambda1: weight of C0 (>= 0). lambda2: ridge (>= 0).

    Usage per edit: ``delta = solver.delta(K, R)`` (pure), write it, then
    ``solver.add_keys(K)``. At a projector refresh: ``solver.refresh(U, H)``.
    """

    def __init__(self, prior_cov, basis=None, hist_cov=None, lambda1: float = 0.0, lambda2: float = 0.0):
        check_cov("prior_cov", prior_cov)
        self.lambda1 = check_scalar("lambda1", lambda1)
        self.lambda2 = check_scalar("lambda2", lambda2)
        self.prior_cov = prior_cov.double()
        self.d_k = prior_cov.shape[0]
        self.basis: Optional[torch.Tensor] = None
        self.g_inv = torch.empty(0, 0, dtype=torch.float64, device=self.prior_cov.device)
        self.refresh(basis, hist_cov)

    # ------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """m, the dimension of the space updates live in."""
        return self.d_k if self.basis is None else self.basis.shape[1]

    def _project(self, keys: torch.Tensor) -> torch.Tensor:
        K = keys.to(self.prior_cov.device, torch.float64)
        return K if self.basis is None else self.basis.T @ K

    def refresh(self, basis=None, hist_cov=None) -> None:
        """Recompute G^-1 from scratch for a new basis U and history H (O(d_k^3))."""
        d = self.d_k
        if basis is not None:
            check_matrix("basis", basis, rows=d)
            if basis.shape[1] == 0:
                raise ValueError(
                    f"basis: shape {tuple(basis.shape)} has no columns, so no update is possible; "
                    "raise nullspace_threshold"
                )
            basis = basis.to(self.prior_cov.device, torch.float64).contiguous()
        if hist_cov is None:
            H = torch.zeros(d, d, dtype=torch.float64, device=self.prior_cov.device)
        else:
            check_cov("hist_cov", hist_cov, d)
            H = hist_cov.to(self.prior_cov.device, torch.float64)
        A = H + self.lambda1 * self.prior_cov
        G = A if basis is None else basis.T @ A @ basis
        G = G + self.lambda2 * torch.eye(G.shape[0], dtype=torch.float64, device=G.device)
        G = 0.5 * (G + G.T)
        chol, info = torch.linalg.cholesky_ex(G)
        if int(info) != 0:
            raise ValueError(
                "the projected normal matrix U^T (H + lambda1 C0) U + lambda2 I is not positive definite "
                f"(lambda1={self.lambda1}, lambda2={self.lambda2}, m={G.shape[0]}): use lambda2 > 0 "
                "or a positive definite prior_cov"
            )
        self.basis = basis
        self.g_inv = torch.cholesky_inverse(chol).contiguous()

    def _woodbury(self, keys):
        """B = U^T K, W = G^-1 B, and the Cholesky factor of S = I_n + B^T W."""
        B = self._project(keys)
        W = self.g_inv @ B
        S = torch.eye(B.shape[1], dtype=torch.float64, device=B.device) + B.T @ W
        return B, W, torch.linalg.cholesky(0.5 * (S + S.T))

    def delta(self, keys, resid) -> torch.Tensor:
        """Delta (d_v, d_k) = R K^T U (G + U^T K K^T U)^-1 U^T, without changing the solver."""
        d_k, _, _ = check_keys_resid(keys, resid)
        if d_k != self.d_k:
            raise ValueError(f"keys: expected {self.d_k} rows (d_k of prior_cov), got shape {tuple(keys.shape)}")
        _, W, chol = self._woodbury(keys)
        X = torch.cholesky_solve(W.T, chol)  # (n, m) = S^-1 W^T
        if self.basis is not None:
            X = X @ self.basis.T  # (n, d_k); keep the d_v factor out of the m-sized products
        R = resid.to(self.prior_cov.device, torch.float64)
        return (R @ X).to(dtype=resid.dtype, device=resid.device)

    def add_keys(self, keys) -> None:
        """G <- G + U^T K K^T U, applied to G^-1 with the Woodbury identity (O(m^2 n))."""
        check_matrix("keys", keys, rows=self.d_k)
        _, W, chol = self._woodbury(keys)
        g_inv = self.g_inv - W @ torch.cholesky_solve(W.T, chol)
        self.g_inv = (0.5 * (g_inv + g_inv.T)).contiguous()

    # ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors only (safetensors-friendly). The basis is empty (d_k, 0) for U = I."""
        basis = self.basis if self.basis is not None else torch.zeros(self.d_k, 0, dtype=torch.float64)
        return {
            "basis": basis.contiguous(),
            "g_inv": self.g_inv.contiguous(),
            "lambda1": torch.tensor(self.lambda1, dtype=torch.float64),
            "lambda2": torch.tensor(self.lambda2, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()``; checks shapes and that lambdas match."""
        for name in ("basis", "g_inv", "lambda1", "lambda2"):
            if name not in state:
                raise ValueError(f"solver state is missing {name!r}; expected keys basis, g_inv, lambda1, lambda2")
        for name in ("lambda1", "lambda2"):
            saved = float(state[name])
            if saved != getattr(self, name):
                raise ValueError(f"solver state has {name}={saved}, this solver has {getattr(self, name)}")
        basis = state["basis"]
        if basis.ndim != 2 or basis.shape[0] != self.d_k:
            raise ValueError(f"solver state basis has shape {tuple(basis.shape)}; expected ({self.d_k}, m)")
        m = self.d_k if basis.shape[1] == 0 else basis.shape[1]
        g_inv = state["g_inv"]
        if tuple(g_inv.shape) != (m, m) or not bool(torch.isfinite(g_inv).all()):
            raise ValueError(f"solver state g_inv has shape {tuple(g_inv.shape)} or non-finite values; expected ({m}, {m})")
        device = self.prior_cov.device
        self.basis = None if basis.shape[1] == 0 else basis.to(device, torch.float64).clone()
        self.g_inv = g_inv.to(device, torch.float64).clone()
