"""The incremental (Woodbury) solver of one layer, in its two inverse forms.

The BetaEdit update with P = U U^T (U: d_k by m, orthonormal) has the exact
reduced form

    Delta = R K^T U (U^T A U + lambda2 I_m)^-1 U^T,   A = K K^T + H + lambda1 C0,

(proof: X = U (U^T A U + lambda2 I)^-1 U^T satisfies X (A P + lambda2 I) = P,
so X = P (A P + lambda2 I)^-1). Between two projector refreshes U is fixed and
G = U^T (H + lambda1 C0) U + lambda2 I only grows by B B^T with B = U^T K, so a
solver carries G^-1 and updates it with the Woodbury identity:

    (G + B B^T)^-1 B = W (I_n + B^T W)^-1,   W = G^-1 B,

which makes one edit O(d_k m n + m^2 n) instead of O(d_k^3).

The same solver serves the three methods:
- BetaEdit: basis from ``nullspace_basis``, lambda1, lambda2;
- AlphaEdit: basis from C0, lambda1 = 0, lambda2 = L2;
- MEMIT with history: basis None (U = I), lambda1 = mom2_update_weight, lambda2 = 0.

Two forms of the carried inverse, both exact, one class each:

- `FactoredSolver`: U (d_k, m) and G^-1 (m, m); one edit reads d_k m + m^2 numbers.
- `DenseSolver`: M = U G^-1 U^T (d_k, d_k) and no basis on the compute device;
  Delta = R S^-1 (M K)^T with S = I_n + K^T M K (the same algebra with U folded in),
  and the Woodbury step updates M instead of G^-1. One edit reads d_k^2 numbers,
  fewer than the factored form when m > 0.618 d_k (m^2 + d_k m > d_k^2).

With U = I (basis None) the two coincide (M = G^-1) and both report the form 'factored'.
Choosing between them ('auto', again at each refresh since m changes) is
`incremental.IncrementalSolver`'s job.

Where the tensors live is a `Placement` (storage: float64 C0, U and every recomputation;
compute: what each edit reads, float64 or float32). By default everything is float64 on
C0's device and the inverse is updated in full after every edit. With ``refresh_every``
set (required for float32) the Woodbury steps since the last recomputation are kept as a
`LowRankFactor` F instead: the carried inverse is ``base - F F^T``, the new columns being
V = W L^-T where S = I_n + B^T W = L L^T (so V V^T = W S^-1 W^T). The `add_keys` call that
brings F to ``refresh_every`` columns recomputes the base in float64 on the storage device
from H, C0 and U instead, and empties F. The small n-by-n system S is formed and solved
in float64 in every mode. How far float32 drifts from float64 over 1000 edits, and what a
recomputation costs in time, are measured by ``benchmarks/bench_state_memory.py`` and
``benchmarks/bench_linalg.py`` (figures in the README).

Cost of one recomputation (float64, storage device), for m = d_k = d: U^T A U is 4 d^3
flops, the Cholesky factor d^3 / 3, then either the inverse (about d^3; factored) or
L^-1 U^T and its Gram product (3 d^3; dense): 5.3 d^3 to 7.3 d^3 flops (16 to 22 TFLOP at
d = 14336), with up to four d^2 float64 temporaries (6.6 GB at d = 14336). BetaEdit's
projector refresh every ``tau`` edits (an eigendecomposition of S, about 9 d^3, plus
this) restarts the ``refresh_every`` count.

Snapshots and offloading: with the compute device different from the storage device,
a recomputation first parks the inverse it replaces on the storage device (a snapshot
may still refer to it; `restore` moves it back), so the compute device never holds two
inverses.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Protocol, runtime_checkable

import torch

from ._checks import check_cov, check_keys_resid, check_matrix, check_scalar
from .lowrank import LowRankFactor
from .placement import Held, Placement

__all__ = ["Solver", "FormSolver", "FactoredSolver", "DenseSolver", "DEFAULT_REFRESH_EVERY_FLOAT32"]

#: ``refresh_every`` used when ``compute_dtype`` is float32 and none is given: keys between
#: two float64 recomputations of the inverse (BetaEdit's default ``tau``, whose projector
#: refresh recomputes anyway). The float32 deviation at this period is measured by
#: ``benchmarks/bench_state_memory.py``; the README states the figure.
DEFAULT_REFRESH_EVERY_FLOAT32 = 1000


@runtime_checkable
class Solver(Protocol):
    """What the editor, its state and the methods use of a layer's solver."""

    d_k: int
    lambda1: float
    lambda2: float
    refresh_every: Optional[int]
    prior_cov: torch.Tensor

    @property
    def basis(self) -> Optional[torch.Tensor]: ...
    @property
    def form(self) -> str: ...
    @property
    def keys_since_refresh(self) -> int: ...
    @property
    def g_inv(self) -> torch.Tensor: ...

    def delta(self, keys, resid) -> torch.Tensor: ...
    def add_keys(self, keys, hist_cov=None) -> None: ...
    def refresh(self, basis=None, hist_cov=None, prior_cov=None) -> None: ...
    def refresh_inverse(self, hist_cov) -> None: ...
    def snapshot(self) -> Any: ...
    def restore(self, snap) -> None: ...
    def state_dict(self) -> Dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: Mapping[str, Any], hist_cov=None) -> None: ...
    def tensors(self) -> List[torch.Tensor]: ...
    def device_bytes(self) -> int: ...


def check_refresh_every(value, compute_dtype: torch.dtype) -> Optional[int]:
    """None (float64 full updates) or an int >= 1; float32 defaults to `DEFAULT_REFRESH_EVERY_FLOAT32`."""
    if value is None and compute_dtype != torch.float64:
        value = DEFAULT_REFRESH_EVERY_FLOAT32
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            f"refresh_every={value!r}: expected None or an int >= 1 (keys between two float64 "
            f"recomputations of the inverse; {DEFAULT_REFRESH_EVERY_FLOAT32} is the float32 default)"
        )
    return value


def check_basis(basis, d_k: int, placement: Placement) -> Optional[torch.Tensor]:
    """U (d_k, m >= 1) as float64 on the storage device, or None."""
    if basis is None:
        return None
    check_matrix("basis", basis, rows=d_k)
    if basis.shape[1] == 0:
        raise ValueError(
            f"basis: shape {tuple(basis.shape)} has no columns, so no update is possible; raise nullspace_threshold"
        )
    return basis.to(placement.storage_device, torch.float64).contiguous()


class SavedState(NamedTuple):
    """A checked ``state_dict()``: basis (float64 on storage, None for U = I), the form it was
    saved in, the carried base inverse and the low-rank factor (None without one)."""

    basis: Optional[torch.Tensor]
    form: str
    inv: torch.Tensor
    factor: Optional[torch.Tensor]

    @classmethod
    def read(cls, state: Mapping[str, Any], solver: "FormSolver") -> "SavedState":
        """Check ``state`` against ``solver`` (lambdas, d_k, shapes, finiteness); nothing is changed."""
        inv_key = "m_inv" if "m_inv" in state else "g_inv"
        for name in ("basis", inv_key, "lambda1", "lambda2"):
            if name not in state:
                raise ValueError(
                    f"solver state is missing {name!r}; expected keys basis, g_inv (or m_inv), lambda1, lambda2"
                )
        for name in ("lambda1", "lambda2"):
            saved = float(state[name])
            if saved != getattr(solver, name):
                raise ValueError(f"solver state has {name}={saved}, this solver has {getattr(solver, name)}")
        basis, d_k = state["basis"], solver.d_k
        if basis.ndim != 2 or basis.shape[0] != d_k:
            raise ValueError(f"solver state basis has shape {tuple(basis.shape)}; expected ({d_k}, m)")
        form = "dense" if inv_key == "m_inv" and basis.shape[1] else "factored"
        rows = d_k if inv_key == "m_inv" or basis.shape[1] == 0 else basis.shape[1]
        inv = state[inv_key]
        if tuple(inv.shape) != (rows, rows) or not bool(torch.isfinite(inv).all()):
            raise ValueError(
                f"solver state {inv_key} has shape {tuple(inv.shape)} or non-finite values; expected ({rows}, {rows})"
            )
        factor = state.get("factor")
        if factor is not None and (factor.ndim != 2 or factor.shape[0] != rows or not bool(torch.isfinite(factor).all())):
            raise ValueError(
                f"solver state factor has shape {tuple(factor.shape)} or non-finite values; expected ({rows}, j)"
            )
        basis64 = None if basis.shape[1] == 0 else basis.to(solver.placement.storage_device, torch.float64).clone()
        return cls(basis64, form, inv, factor)

    @property
    def columns(self) -> int:
        return 0 if self.factor is None else self.factor.shape[1]

    def effective64(self, device: torch.device) -> torch.Tensor:
        """The saved inverse, base - F F^T, in float64 on ``device``."""
        eff = self.inv.to(device, torch.float64)
        if self.columns:
            F = self.factor.to(device, torch.float64)
            eff = eff - F @ F.T
        return eff


class FormSolver:
    """What both forms share: C0 and the lambdas, the placement, the refresh schedule, the
    Woodbury step, snapshots and (de)serialisation. A subclass supplies its form's base
    inverse (`_solve_base`), how keys reach it (`_project`, `_lift`) and `g_inv`.

    Args:
        prior_cov: (d_k, d_k) C0 (kept in float64 on the storage device).
        basis: (d_k, m) orthonormal U, or None for U = I (no projection).
        hist_cov: (d_k, d_k) H at construction time, or None for zero.
        lambda1: weight of C0 (>= 0). lambda2: ridge (>= 0).
        placement: storage device, compute device and compute dtype (default: float64 on
            ``prior_cov``'s device).
        refresh_every: None (float64: the inverse is updated in full after every edit and only
            recomputed at `refresh`), or a number of keys after which the inverse is recomputed
            in float64 from H, the updates in between being carried as a `LowRankFactor`.
            float32 requires it; default `DEFAULT_REFRESH_EVERY_FLOAT32`. With it set,
            `add_keys` needs ``hist_cov``.

    Usage per edit: ``delta = solver.delta(K, R)`` (pure), write it, then
    ``solver.add_keys(K)`` (``solver.add_keys(K, hist_cov=H)`` with H including K when
    ``refresh_every`` is set). At a projector refresh: ``solver.refresh(U, H)``.
    Undo: ``snap = solver.snapshot()`` ... ``solver.restore(snap)``.
    """

    inverse_form: str  # 'factored' or 'dense'
    _state_key: str  # the state_dict name of the carried base when U is not I

    def __init__(
        self,
        prior_cov,
        basis=None,
        hist_cov=None,
        lambda1: float = 0.0,
        lambda2: float = 0.0,
        *,
        placement: Optional[Placement] = None,
        refresh_every: Optional[int] = None,
    ):
        check_cov("prior_cov", prior_cov)
        self.lambda1 = check_scalar("lambda1", lambda1)
        self.lambda2 = check_scalar("lambda2", lambda2)
        self.placement = placement if placement is not None else Placement.resolve(prior_cov)
        self.refresh_every: Optional[int] = check_refresh_every(refresh_every, self.placement.compute_dtype)
        self.prior_cov = prior_cov.to(self.placement.storage_device, torch.float64)
        self.d_k = prior_cov.shape[0]
        self._basis64: Optional[torch.Tensor] = None  # master U, float64 on storage
        self._held = Held(torch.empty(0, 0, dtype=self.compute_dtype, device=self.compute_device))
        self._factor = self._new_factor()
        self.refresh(basis, hist_cov)

    def _new_factor(self) -> LowRankFactor:
        cap = self.refresh_every - 1 if self.refresh_every else 0
        return LowRankFactor(cap, self.compute_dtype, self.compute_device)

    def _sibling(self, cls: type) -> "FormSolver":
        """A solver of form ``cls`` sharing this one's C0, lambdas, placement and carried inverse
        (so its first recomputation parks this one's inverse); it has no basis yet."""
        other = cls.__new__(cls)
        other.lambda1, other.lambda2, other.placement = self.lambda1, self.lambda2, self.placement
        other.refresh_every, other.prior_cov, other.d_k = self.refresh_every, self.prior_cov, self.d_k
        other._basis64, other._held, other._factor = None, self._held, other._new_factor()
        other._set_basis(None)
        return other

    # ------------------------------------------------------------------ properties
    @property
    def storage_device(self) -> torch.device:
        return self.placement.storage_device

    @property
    def compute_device(self) -> torch.device:
        return self.placement.compute_device

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.placement.compute_dtype

    @property
    def basis(self) -> Optional[torch.Tensor]:
        """U (d_k, m), float64 on the storage device, or None for U = I."""
        return self._basis64

    @property
    def rank(self) -> int:
        """m, the dimension of the space updates live in."""
        return self.d_k if self._basis64 is None else self._basis64.shape[1]

    @property
    def form(self) -> str:
        """'factored' or 'dense'; 'factored' for U = I, where the two coincide."""
        return "factored" if self._basis64 is None else self.inverse_form

    @property
    def keys_since_refresh(self) -> int:
        """Keys added since the inverse was last recomputed (0 without ``refresh_every``)."""
        return self._factor.columns

    @property
    def _deferred(self) -> bool:
        return self.refresh_every is not None

    def _compute_basis(self) -> Optional[torch.Tensor]:
        """U on the compute device, where the form keeps one (factored)."""
        return None

    def tensors(self) -> List[torch.Tensor]:
        """Every tensor the solver holds (C0, U, its compute copy, the inverse, the factor buffer)."""
        out = [self.prior_cov, self._basis64, self._compute_basis(), self._held.tensor, *self._factor.tensors()]
        return [t for t in out if t is not None]

    def device_bytes(self) -> int:
        """Bytes of the per-edit tensors on the compute device (inverse, U copy, factor buffer)."""
        n = self._held.tensor.numel() * self._held.tensor.element_size()
        basis_c = self._compute_basis()
        if basis_c is not None:
            n += basis_c.numel() * basis_c.element_size()
        return n + self._factor.nbytes()

    def _assembled64(self) -> torch.Tensor:
        """The carried inverse (base - F F^T) in float64 on the storage device."""
        inv = self.placement.to_storage64(self._held.tensor)
        return self._factor.subtract_from64(inv, self.storage_device)

    # ------------------------------------------------------------------ form hooks
    def _set_basis(self, basis64: Optional[torch.Tensor]) -> None:
        self._basis64 = basis64

    def _solve_base(self, basis, H) -> torch.Tensor:
        """float64 on storage: the form's base inverse for basis U and history H."""
        raise NotImplementedError

    def _project(self, keys) -> torch.Tensor:
        """B: the keys as the carried inverse takes them (compute placement)."""
        return keys.to(self.compute_device, self.compute_dtype)

    def _lift(self, X: torch.Tensor) -> torch.Tensor:
        """S^-1 W^T (n, rows) to the (n, d_k) right factor of Delta."""
        return X

    def _from_saved(self, saved: SavedState) -> torch.Tensor:
        """A saved inverse of the other form (or precision), converted through U, float64 on storage."""
        raise NotImplementedError

    # ------------------------------------------------------------------ recomputation
    def _cholesky(self, basis, H) -> torch.Tensor:
        """Lower Cholesky factor of G = U^T (H + lambda1 C0) U + lambda2 I (float64, storage)."""
        A = self.lambda1 * self.prior_cov
        A.add_(H)  # H + lambda1 C0
        if basis is None:
            G = A
        else:
            G = basis.T @ A @ basis
            del A
        G.diagonal().add_(self.lambda2)
        S = G + G.T
        del G
        S.mul_(0.5)
        chol, info = torch.linalg.cholesky_ex(S)
        if int(info) != 0:
            raise ValueError(
                "the projected normal matrix U^T (H + lambda1 C0) U + lambda2 I is not positive definite "
                f"(lambda1={self.lambda1}, lambda2={self.lambda2}, m={S.shape[0]}): use lambda2 > 0 "
                "or a positive definite prior_cov"
            )
        return chol

    def _history(self, hist_cov) -> torch.Tensor:
        if hist_cov is None:
            return torch.zeros(self.d_k, self.d_k, dtype=torch.float64, device=self.storage_device)
        check_cov("hist_cov", hist_cov, self.d_k)
        return hist_cov.to(self.storage_device, torch.float64)

    def refresh(self, basis=None, hist_cov=None, prior_cov=None) -> None:
        """New basis U (None: U = I) and history H (and, given, a new C0): recompute the inverse from
        scratch in float64."""
        self._refresh(check_basis(basis, self.d_k, self.placement), hist_cov, prior_cov=prior_cov)

    def _refresh(self, basis64: Optional[torch.Tensor], hist_cov, replacing: Optional["FormSolver"] = None,
                 prior_cov=None) -> None:
        """``replacing``: the solver of the other form this one takes over from ('auto')."""
        old_prior = self.prior_cov
        if prior_cov is not None:
            check_cov("prior_cov", prior_cov, self.d_k)
            self.prior_cov = prior_cov.to(self.storage_device, torch.float64)
        try:
            inv = self._solve_base(basis64, self._history(hist_cov))  # raises before anything else changes
        except BaseException:
            self.prior_cov = old_prior
            raise
        if replacing is not None:
            replacing._release()
        self._set_basis(basis64)
        self._set_base(inv)

    def refresh_inverse(self, hist_cov) -> None:
        """Recompute the inverse in float64 for the current basis from H (the periodic refresh)."""
        self._set_base(self._solve_base(self._basis64, self._history(hist_cov)))

    def _set_base(self, inv64: torch.Tensor) -> None:
        """Install a freshly computed float64 base and empty the low-rank factor."""
        self.placement.park(self._held)
        self._held = self.placement.compute_from64(inv64)
        self._factor.clear()

    # ------------------------------------------------------------------ per edit
    def _woodbury(self, keys):
        """B = U^T K, W = G^-1 B, and the Cholesky factor of S = I_n + B^T W (float64)."""
        B = self._project(keys)
        W = self._factor.correct(self._held.tensor @ B, B)
        B64, W64 = B.double(), W.double()
        S = torch.eye(B.shape[1], dtype=torch.float64, device=B.device) + B64.T @ W64
        return B, W64, torch.linalg.cholesky(0.5 * (S + S.T))

    def delta(self, keys, resid) -> torch.Tensor:
        """Delta (d_v, d_k) = R K^T U (G + U^T K K^T U)^-1 U^T, without changing the solver."""
        d_k, _, _ = check_keys_resid(keys, resid)
        if d_k != self.d_k:
            raise ValueError(f"keys: expected {self.d_k} rows (d_k of prior_cov), got shape {tuple(keys.shape)}")
        _, W, chol = self._woodbury(keys)
        X = torch.cholesky_solve(W.T, chol).to(self.compute_dtype)  # (n, rows) = S^-1 W^T
        X = self._lift(X)  # keep the d_v factor out of the m-sized products
        R = resid.to(self.compute_device, self.compute_dtype)
        return (R @ X).to(dtype=resid.dtype, device=resid.device)

    def add_keys(self, keys, hist_cov=None) -> None:
        """G <- G + U^T K K^T U (Woodbury).

        Args:
            keys: (d_k, n) K of the edits just written.
            hist_cov: (d_k, d_k) H including ``keys``; required when ``refresh_every`` is
                set (every ``refresh_every`` keys the inverse is recomputed from it).
        """
        check_matrix("keys", keys, rows=self.d_k)
        if self._deferred:
            if hist_cov is None:
                raise ValueError(
                    f"add_keys: hist_cov=None, but refresh_every={self.refresh_every} recomputes the inverse "
                    "from H; pass hist_cov=H (the history including these keys)"
                )
            if not isinstance(hist_cov, torch.Tensor) or tuple(hist_cov.shape) != (self.d_k, self.d_k):
                raise ValueError(
                    f"add_keys: hist_cov has shape {tuple(getattr(hist_cov, 'shape', ()))}; "
                    f"expected ({self.d_k}, {self.d_k}), H including these keys"
                )
            if self._factor.columns + keys.shape[1] >= self.refresh_every:
                self.refresh_inverse(hist_cov)  # H includes these keys; nothing changes if it raises
                return
        _, W, chol = self._woodbury(keys)
        if self._deferred:
            self._factor.append(torch.linalg.solve_triangular(chol, W.T, upper=False).T)  # V = W L^-T
            return
        inv = self._held.tensor - W @ torch.cholesky_solve(W.T, chol)
        self._held = Held((0.5 * (inv + inv.T)).contiguous())

    # ------------------------------------------------------------------ undo
    def snapshot(self) -> Dict[str, Any]:
        """References to everything `add_keys` and `refresh` change; no tensor is copied."""
        return {"basis": self._basis64, "inv": self._held, "factor": self._factor.snapshot(), "prior": self.prior_cov}

    def restore(self, snap: Mapping[str, Any]) -> None:
        """Return to a `snapshot` of this solver."""
        held: Held = snap["inv"]
        if held.tensor.device != self.compute_device:
            if held is not self._held:
                self.placement.park(self._held)
            held.tensor = held.tensor.to(self.compute_device)
        if snap["basis"] is not self._basis64 or self._needs_basis_copy():
            self._set_basis(snap["basis"])
        self._held = held
        self._factor.restore(snap["factor"])
        self.prior_cov = snap["prior"]

    def _needs_basis_copy(self) -> bool:
        return False

    def _release(self) -> None:
        """Another solver takes over ('auto' switching form): drop compute-only copies."""

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Tensors only (safetensors-friendly).

        ``basis``: float64 U, empty (d_k, 0) for U = I; ``g_inv`` (m, m) or, in the dense
        form, ``m_inv`` (d_k, d_k): the carried base in the compute dtype; with
        ``refresh_every``, ``factor`` (rows, j): the low-rank correction. Nothing is copied.
        """
        basis = self._basis64 if self._basis64 is not None else torch.zeros(self.d_k, 0, dtype=torch.float64)
        out = {
            "basis": basis,
            (self._state_key if self._basis64 is not None else "g_inv"): self._held.tensor,
            "lambda1": torch.tensor(self.lambda1, dtype=torch.float64),
            "lambda2": torch.tensor(self.lambda2, dtype=torch.float64),
        }
        if self._deferred:
            out["factor"] = self._factor.saved(rows=self._held.tensor.shape[0])
        return out

    def load_state_dict(self, state: Mapping[str, Any], hist_cov=None) -> None:
        """Restore from ``state_dict()`` of a solver with the same lambdas, in any form, placement
        or precision.

        A state saved in this solver's form, at this or a higher precision, with a factor this
        solver can carry, is taken as is (cast and moved): a resumed run continues exactly.
        Otherwise the inverse is recomputed in float64 from ``hist_cov`` when given, else
        converted through U (carrying the saved precision).
        """
        self._load(SavedState.read(state, self), hist_cov)

    def _load(self, saved: SavedState, hist_cov, replacing: Optional["FormSolver"] = None) -> None:
        fits = saved.columns < self.refresh_every if self._deferred else saved.columns == 0
        if saved.form == self._form_for(saved.basis) and saved.inv.dtype in (torch.float64, self.compute_dtype) and fits:
            base, factor = saved.inv, saved.factor
        elif hist_cov is not None:
            base, factor = self._solve_base(saved.basis, self._history(hist_cov)), None
        else:
            if saved.inv.dtype != torch.float64 and self.compute_dtype == torch.float64:
                warnings.warn(
                    f"loading a {saved.inv.dtype} solver state into a float64 solver without hist_cov: the inverse "
                    "keeps float32 rounding until the next refresh; pass hist_cov to recompute it",
                    stacklevel=3,
                )
            eff = self._from_saved(saved)
            base, factor = 0.5 * (eff + eff.T), None
        if replacing is not None:
            replacing._release()
        self._set_basis(saved.basis)
        self.placement.park(self._held)
        x = base.to(dtype=self.compute_dtype).to(self.compute_device).contiguous()  # cast where it lies
        self._held = Held(x.clone() if x.data_ptr() == base.data_ptr() else x)
        self._factor.clear()
        if factor is not None and factor.shape[1]:
            self._factor.append(factor.to(self.compute_device, self.compute_dtype))

    def _form_for(self, basis64: Optional[torch.Tensor]) -> str:
        return "factored" if basis64 is None else self.inverse_form


class FactoredSolver(FormSolver):
    """Carries U (d_k, m; a compute copy) and G^-1 = (U^T (H + lambda1 C0) U + lambda2 I_m)^-1.

    One edit reads d_k m + m^2 numbers. ``state_dict`` names the base ``g_inv``.
    """

    inverse_form = "factored"
    _state_key = "g_inv"

    def _set_basis(self, basis64):
        self._basis64 = basis64
        self._basis_c = None if basis64 is None else self.placement.to_compute(basis64)

    def _compute_basis(self):
        return self._basis_c

    def _needs_basis_copy(self) -> bool:
        return self._basis64 is not None and self._basis_c is None

    def _release(self) -> None:
        self._basis_c = None  # `restore` makes it again

    def _solve_base(self, basis, H):
        return torch.cholesky_inverse(self._cholesky(basis, H))

    def _project(self, keys):
        K = keys.to(self.compute_device, self.compute_dtype)
        return K if self._basis_c is None else self._basis_c.T @ K

    def _lift(self, X):
        return X if self._basis_c is None else X @ self._basis_c.T

    def _from_saved(self, saved):
        eff = saved.effective64(self.storage_device)
        return saved.basis.T @ eff @ saved.basis if saved.form == "dense" else eff

    @property
    def g_inv(self) -> torch.Tensor:
        """G^-1 (m, m). Without ``refresh_every``: the carried tensor itself; otherwise
        assembled in float64 on the storage device (base minus the low-rank factor)."""
        return self._assembled64() if self._deferred else self._held.tensor


class DenseSolver(FormSolver):
    """Carries M = U G^-1 U^T (d_k, d_k) and no basis on the compute device.

    One edit reads d_k^2 numbers. ``state_dict`` names the base ``m_inv`` (``g_inv`` for
    U = I, where M = G^-1).
    """

    inverse_form = "dense"
    _state_key = "m_inv"

    def _solve_base(self, basis, H):
        chol = self._cholesky(basis, H)
        if basis is None:
            return torch.cholesky_inverse(chol)
        Y = torch.linalg.solve_triangular(chol, basis.T, upper=False)  # L^-1 U^T (m, d_k)
        del chol
        return Y.T @ Y  # U G^-1 U^T

    def _from_saved(self, saved):
        eff = saved.effective64(self.storage_device)
        return saved.basis @ eff @ saved.basis.T if saved.form == "factored" and saved.basis is not None else eff

    @property
    def g_inv(self) -> torch.Tensor:
        """G^-1 (m, m), assembled in float64 on the storage device as U^T M U (M itself for
        U = I without ``refresh_every``)."""
        if not self._deferred and self._basis64 is None:
            return self._held.tensor
        inv = self._assembled64()
        return inv if self._basis64 is None else self._basis64.T @ inv @ self._basis64
