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

Placement and precision (large models)
--------------------------------------
By default everything is float64 on ``prior_cov``'s device and G^-1 is updated
in full after every edit. For a model whose float64 state does not fit next to
it (LLaMA-3-8B: d_k = 14336, one d_k^2 float64 matrix is 1.64 GB) the solver
splits its tensors:

- *storage* (``storage_device``, float64, CPU is fine): C0, the basis U, and
  every from-scratch recomputation of the inverse. H stays with the caller
  (``LayerState.hist_cov``, kept where C0 is) and is passed in when needed.
- *compute* (``compute_device``, ``compute_dtype`` float64 or float32): what
  every edit reads, namely the inverse and, in the factored form, a copy of U.

Two forms of the carried inverse (``inverse_form``), both exact:

- ``"factored"``: U (d_k, m) and G^-1 (m, m); one edit reads d_k m + m^2 numbers.
- ``"dense"``: M = U G^-1 U^T (d_k, d_k) and no basis; Delta = R S^-1 (M K)^T
  with S = I_n + K^T M K (the same algebra with U folded in), and the
  Woodbury step updates M instead of G^-1. One edit reads d_k^2 numbers, which
  is fewer than the factored form when m > 0.618 d_k (m^2 + d_k m > d_k^2).
- ``"auto"``: whichever holds fewer numbers for the current m, the low-rank
  factor below at its largest included (chosen again at each refresh, since m
  changes).

With ``refresh_every`` set (always, for float32), the Woodbury steps since the
last recomputation are kept as a low-rank factor instead of being written into
the inverse: the carried inverse is ``base - F F^T`` with F (m or d_k rows, j
columns), one column per key since the last recomputation, the new columns
being V = W L^-T where S = I_n + B^T W = L L^T (so V V^T = W S^-1 W^T). Per edit
this costs O(rows j n) extra and never rewrites the d_k^2 (or m^2) base, and an
undo snapshot costs nothing (the base is never modified; F is only appended to).
The `add_keys` call that brings j to ``refresh_every`` recomputes the base in
float64 on the storage device from H, C0 and U instead, and empties F. The
small n-by-n system S is formed and solved in float64 in every mode.

float32 against float64 (benchmarks/bench_state_memory.py: SmolLM2's real C0 at
d_k 1536, 1000 sequential edits, BetaEdit / AlphaEdit / MEMIT with SmolLM2's
settings): the relative deviation of Delta is 0.5e-6 to 1.6e-6 with keys
distributed like C0's, and 0.9e-5 to 3e-5 with keys around 50 repeated subjects
(cond(G) up to 1.6e3). It is set mostly by cond(G) times float32's rounding, from
the first edits on; without a recomputation it grows up to 3x over 1000 keys.
Hence `DEFAULT_REFRESH_EVERY_FLOAT32` = 1000 (BetaEdit's default ``tau``: its
projector refresh recomputes anyway). A G with cond(G) well above 1e4 (tiny
lambda2 with lambda1 C0 small on the basis) can exceed 1e-4 whatever the
refresh period: keep float64 there.

Cost of one recomputation (float64, storage device), for m = d_k = d: U^T A U
is 4 d^3 flops, the Cholesky factor d^3 / 3, then either the inverse (about
d^3; factored) or L^-1 U^T and its Gram product (3 d^3; dense): 5.3 d^3 to
7.3 d^3 flops, 16 to 22 TFLOP at d = 14336, i.e. tens of seconds per layer on a
many-core CPU (measured at d_k 1536 on this project's shared 2-core machine,
one thread: 0.4 to 3 s with the load, so 6 to 40 minutes per layer there by d^3
scaling), with up to
four d^2 float64 temporaries (6.6 GB at d = 14336). BetaEdit's projector
refresh every ``tau`` edits (an eigendecomposition of S, about 9 d^3, plus
this) restarts the ``refresh_every`` count.

Snapshots and offloading: with ``compute_device`` different from
``storage_device``, a recomputation first moves the inverse it replaces to the
storage device (a snapshot may still refer to it; `restore` moves it back), so
the compute device never holds two inverses.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Mapping, Optional, Union

import torch

from ._checks import check_cov, check_keys_resid, check_matrix, check_scalar

__all__ = ["add_keys", "IncrementalSolver", "solver_device_bytes", "DEFAULT_REFRESH_EVERY_FLOAT32"]

#: ``refresh_every`` used when ``compute_dtype`` is float32 and none is given:
#: keys between two float64 recomputations of the inverse. Measured (module
#: docstring): the deviation from float64 stays <= 3e-5 over 1000 edits at this
#: period, so the O(d_k^3) recomputation is paid once per 1000 edits.
DEFAULT_REFRESH_EVERY_FLOAT32 = 1000

_FORMS = ("factored", "dense", "auto")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def add_keys(hist_cov, keys) -> torch.Tensor:
    """H + K K^T in ``hist_cov``'s dtype (accumulated in float64), as a new tensor.

    Args:
        hist_cov: (d_k, d_k) H. keys: (d_k, n).

    ``keys`` are checked in full (finite); ``hist_cov`` for type and shape only: it is the
    running sum this function built, symmetric by construction, and a full scan
    (symmetry, finiteness) costs about 15 times the update itself, every edit (seconds
    per layer at d_k = 14336). H is checked in full where it enters a solve.
    """
    if not isinstance(hist_cov, torch.Tensor) or not hist_cov.is_floating_point() or hist_cov.ndim != 2 or (
        hist_cov.shape[0] != hist_cov.shape[1]
    ):
        raise ValueError(
            f"hist_cov: expected a square floating (d_k, d_k) tensor, got "
            f"{type(hist_cov).__name__} {tuple(getattr(hist_cov, 'shape', ()))}"
        )
    check_matrix("keys", keys, rows=hist_cov.shape[0])
    K = keys.to(hist_cov.device, torch.float64)
    out = K @ K.T  # one d_k^2 temporary: the sum is taken in place (same value as H + K K^T)
    out.add_(hist_cov.double())
    return out.to(hist_cov.dtype)


def solver_device_bytes(
    d_k: int,
    m: Optional[int] = None,
    compute_dtype: Union[torch.dtype, str] = torch.float64,
    inverse_form: str = "factored",
    factor_columns: int = 0,
) -> int:
    """Bytes an `IncrementalSolver` holds on its compute device (no tensors are built).

    Args:
        d_k: key dimension. m: basis rank (None: no projection, U = I).
        compute_dtype: float64 or float32. inverse_form: 'factored', 'dense' or 'auto'.
        factor_columns: columns of the low-rank factor (at most ``refresh_every`` - 1).

    With storage and compute on the same device in float64 the basis is shared
    with the float64 master and counted once, as here.
    """
    dtype = _as_dtype(compute_dtype)
    size = torch.empty(0, dtype=dtype).element_size()
    form = _resolve_form(_check_form(inverse_form), d_k, m, int(factor_columns))
    if m is None or form == "dense":
        rows, basis = d_k, 0
    else:
        rows, basis = m, d_k * m
    return size * (basis + rows * rows + rows * int(factor_columns))


def _as_dtype(value) -> torch.dtype:
    if isinstance(value, str) and value in _DTYPES:
        return _DTYPES[value]
    if value in (torch.float64, torch.float32):
        return value
    raise ValueError(
        f"compute_dtype={value!r}: expected torch.float64 or torch.float32 (or 'float64' / 'float32'); "
        "half precision is too coarse for the carried inverse"
    )


def _device(value) -> torch.device:
    """torch.device with the current CUDA index filled in, so 'cuda' and 'cuda:0' compare equal."""
    d = torch.device(value)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def _check_form(value) -> str:
    if value not in _FORMS:
        raise ValueError(f"inverse_form={value!r}: expected one of {', '.join(repr(f) for f in _FORMS)}")
    return value


def _resolve_form(form: str, d_k: int, m: Optional[int], factor_columns: int = 0) -> str:
    """'factored' or 'dense' for a basis of rank m (None: U = I, where the two coincide);
    'auto' counts the low-rank factor too (m or d_k rows of ``factor_columns``)."""
    if m is None:
        return "factored"
    if form == "auto":
        dense = d_k * (d_k + factor_columns)
        factored = m * (d_k + m + factor_columns)
        return "dense" if dense < factored else "factored"
    return form


class _Held:
    """A compute-device tensor shared by a solver and its snapshots.

    When the solver replaces it (a recomputation), it moves the old tensor to the
    storage device first, so a snapshot that still refers to it does not keep a
    second copy on the compute device; `IncrementalSolver.restore` moves it back.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class _Factor:
    """Columns F[:, :j] of the low-rank correction; appended in place past the used width.

    ``written`` is how many columns were ever written: appending where a snapshot
    may still refer to later columns (after a restore) copies first.
    """

    __slots__ = ("buf", "written")

    def __init__(self, buf: torch.Tensor, written: int = 0) -> None:
        self.buf, self.written = buf, written


class IncrementalSolver:
    """Carries G^-1 = (U^T (H + lambda1 C0) U + lambda2 I_m)^-1 for one layer.

    Args:
        prior_cov: (d_k, d_k) C0 (kept in float64 on ``storage_device``).
        basis: (d_k, m) orthonormal U, or None for U = I (no projection).
        hist_cov: (d_k, d_k) H at construction time, or None for zero.
        lambda1: weight of C0 (>= 0). lambda2: ridge (>= 0).
        compute_device: where the per-edit tensors live (the inverse; U in the
            factored form). Default: ``storage_device``.
        compute_dtype: torch.float64 (default) or torch.float32 (or their names)
            for the per-edit tensors. The small n-by-n solves run in float64 either way.
        storage_device: where the float64 master lives (C0, U) and where the
            inverse is recomputed from scratch. Default: ``prior_cov``'s device.
        refresh_every: None (float64: G^-1 is updated in full after every edit and
            only recomputed at `refresh`), or a number of keys after which the
            inverse is recomputed in float64 from H; the updates in between are
            carried as a low-rank factor (see the module docstring). float32
            requires it; default `DEFAULT_REFRESH_EVERY_FLOAT32`. With it set,
            `add_keys` needs ``hist_cov``.
        inverse_form: 'factored' (default; U and G^-1), 'dense' (M = U G^-1 U^T,
            no basis on the compute device) or 'auto' (the smaller of the two).

    Usage per edit: ``delta = solver.delta(K, R)`` (pure), write it, then
    ``solver.add_keys(K)`` (``solver.add_keys(K, hist_cov=H)`` with H including K
    when ``refresh_every`` is set). At a projector refresh: ``solver.refresh(U, H)``.
    Undo: ``snap = solver.snapshot()`` ... ``solver.restore(snap)``.
    """

    def __init__(
        self,
        prior_cov,
        basis=None,
        hist_cov=None,
        lambda1: float = 0.0,
        lambda2: float = 0.0,
        *,
        compute_device: Union[str, torch.device, None] = None,
        compute_dtype: Union[torch.dtype, str] = torch.float64,
        storage_device: Union[str, torch.device, None] = None,
        refresh_every: Optional[int] = None,
        inverse_form: str = "factored",
    ):
        check_cov("prior_cov", prior_cov)
        self.lambda1 = check_scalar("lambda1", lambda1)
        self.lambda2 = check_scalar("lambda2", lambda2)
        self.compute_dtype = _as_dtype(compute_dtype)
        self.inverse_form = _check_form(inverse_form)
        if refresh_every is None and self.compute_dtype != torch.float64:
            refresh_every = DEFAULT_REFRESH_EVERY_FLOAT32
        if refresh_every is not None and (
            isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1
        ):
            raise ValueError(
                f"refresh_every={refresh_every!r}: expected None or an int >= 1 (keys between two float64 "
                f"recomputations of the inverse; {DEFAULT_REFRESH_EVERY_FLOAT32} is the float32 default)"
            )
        self.refresh_every: Optional[int] = refresh_every
        self.storage_device = _device(storage_device) if storage_device is not None else prior_cov.device
        self.compute_device = _device(compute_device) if compute_device is not None else self.storage_device
        if storage_device is None:
            self.prior_cov = prior_cov.double()
        else:
            self.prior_cov = prior_cov.to(self.storage_device, torch.float64)
        self.d_k = prior_cov.shape[0]
        self._basis64: Optional[torch.Tensor] = None  # master U, float64 on storage
        self._basis_c: Optional[torch.Tensor] = None  # U on compute (factored form), or None
        self._form = "factored"
        self._inv = _Held(torch.empty(0, 0, dtype=self.compute_dtype, device=self.compute_device))
        self._factor: Optional[_Factor] = None
        self._j = 0  # columns of the low-rank factor in use (keys since the last recomputation)
        self.refresh(basis, hist_cov)

    # ------------------------------------------------------------------ properties
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
        """The form in use: 'factored' or 'dense' ('auto' resolved for the current m)."""
        return self._form

    @property
    def keys_since_refresh(self) -> int:
        """Keys added since the inverse was last recomputed (0 without ``refresh_every``)."""
        return self._j

    @property
    def _offloaded(self) -> bool:
        return self.compute_device != self.storage_device

    @property
    def _deferred(self) -> bool:
        return self.refresh_every is not None

    @property
    def _max_factor_columns(self) -> int:
        return self.refresh_every - 1 if self.refresh_every else 0

    def tensors(self):
        """Every tensor the solver holds (C0, U, its compute copy, the inverse, the factor buffer)."""
        out = [self.prior_cov, self._basis64, self._basis_c, self._inv.tensor]
        if self._factor is not None:
            out.append(self._factor.buf)
        return [t for t in out if t is not None]

    def device_bytes(self) -> int:
        """Bytes of the per-edit tensors on the compute device (inverse, U copy, factor buffer)."""
        n = self._inv.tensor.numel() * self._inv.tensor.element_size()
        if self._basis_c is not None:
            n += self._basis_c.numel() * self._basis_c.element_size()
        if self._factor is not None:
            n += self._factor.buf.numel() * self._factor.buf.element_size()
        return n

    @property
    def g_inv(self) -> torch.Tensor:
        """G^-1 (m, m). Default mode: the carried tensor itself. Otherwise assembled in float64
        on the storage device (base minus the low-rank factor; U^T M U for the dense form)."""
        if not self._deferred and self._form == "factored":
            return self._inv.tensor
        inv = self._inv.tensor.to(self.storage_device, torch.float64)
        if self._j:
            F = self._factor.buf[:, : self._j].to(self.storage_device, torch.float64)
            inv = inv - F @ F.T
        if self._form == "dense" and self._basis64 is not None:
            inv = self._basis64.T @ inv @ self._basis64
        return inv

    # ------------------------------------------------------------------ recomputation
    def refresh(self, basis=None, hist_cov=None) -> None:
        """New basis U (None: U = I) and history H: recompute the inverse from scratch in float64."""
        d = self.d_k
        if basis is not None:
            check_matrix("basis", basis, rows=d)
            if basis.shape[1] == 0:
                raise ValueError(
                    f"basis: shape {tuple(basis.shape)} has no columns, so no update is possible; "
                    "raise nullspace_threshold"
                )
            basis = basis.to(self.storage_device, torch.float64).contiguous()
        H = self._history(hist_cov)
        form = _resolve_form(self.inverse_form, d, None if basis is None else basis.shape[1], self._max_factor_columns)
        inv = self._solve_base(basis, H, form)  # raises before anything changes
        self._basis64, self._form = basis, form
        self._basis_c = None
        if basis is not None and form == "factored":
            self._basis_c = self._to_compute(basis)
        self._set_base(inv)

    def refresh_inverse(self, hist_cov) -> None:
        """Recompute the inverse in float64 for the current basis from H (the periodic refresh)."""
        H = self._history(hist_cov)
        self._set_base(self._solve_base(self._basis64, H, self._form))

    def _history(self, hist_cov) -> torch.Tensor:
        if hist_cov is None:
            return torch.zeros(self.d_k, self.d_k, dtype=torch.float64, device=self.storage_device)
        check_cov("hist_cov", hist_cov, self.d_k)
        return hist_cov.to(self.storage_device, torch.float64)

    def _solve_base(self, basis, H, form) -> torch.Tensor:
        """float64 on storage: G^-1 (factored, or U = I) or U G^-1 U^T (dense)."""
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
        del S
        if form == "dense" and basis is not None:
            Y = torch.linalg.solve_triangular(chol, basis.T, upper=False)  # L^-1 U^T (m, d_k)
            del chol
            return Y.T @ Y  # U G^-1 U^T
        return torch.cholesky_inverse(chol)

    def _to_compute(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.compute_device, self.compute_dtype).contiguous()

    def _set_base(self, inv64: torch.Tensor) -> None:
        """Install a freshly computed float64 base and empty the low-rank factor."""
        if self._offloaded:
            self._inv.tensor = self._inv.tensor.to(self.storage_device)  # see _Held
            if self.compute_dtype != torch.float64:
                inv64 = inv64.to(self.compute_dtype)  # cast on storage: no float64 copy on the device
        self._inv = _Held(self._to_compute(inv64))
        self._factor, self._j = None, 0

    # ------------------------------------------------------------------ per edit
    def _project(self, keys: torch.Tensor) -> torch.Tensor:
        K = keys.to(self.compute_device, self.compute_dtype)
        return K if self._basis_c is None else self._basis_c.T @ K

    def _apply_inv(self, B: torch.Tensor) -> torch.Tensor:
        W = self._inv.tensor @ B
        if self._j:
            F = self._factor.buf[:, : self._j]
            W = W - F @ (F.T @ B)
        return W

    def _woodbury(self, keys):
        """B = U^T K, W = G^-1 B, and the Cholesky factor of S = I_n + B^T W (float64)."""
        B = self._project(keys)
        W = self._apply_inv(B)
        B64, W64 = B.double(), W.double()
        S = torch.eye(B.shape[1], dtype=torch.float64, device=B.device) + B64.T @ W64
        return B, W64, torch.linalg.cholesky(0.5 * (S + S.T))

    def delta(self, keys, resid) -> torch.Tensor:
        """Delta (d_v, d_k) = R K^T U (G + U^T K K^T U)^-1 U^T, without changing the solver."""
        d_k, _, _ = check_keys_resid(keys, resid)
        if d_k != self.d_k:
            raise ValueError(f"keys: expected {self.d_k} rows (d_k of prior_cov), got shape {tuple(keys.shape)}")
        _, W, chol = self._woodbury(keys)
        X = torch.cholesky_solve(W.T, chol).to(self.compute_dtype)  # (n, m) = S^-1 W^T
        if self._basis_c is not None:
            X = X @ self._basis_c.T  # (n, d_k); keep the d_v factor out of the m-sized products
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
        if self._deferred and self._j + keys.shape[1] >= self.refresh_every:
            self.refresh_inverse(hist_cov)  # H includes these keys; nothing changes if it raises
            return
        _, W, chol = self._woodbury(keys)
        if not self._deferred:
            g_inv = self._inv.tensor - W @ torch.cholesky_solve(W.T, chol)
            self._inv = _Held((0.5 * (g_inv + g_inv.T)).contiguous())
            return
        self._append(torch.linalg.solve_triangular(chol, W.T, upper=False).T)  # V = W L^-T: V V^T = W S^-1 W^T

    def _append(self, V: torch.Tensor) -> None:
        n, j = V.shape[1], self._j
        fac = self._factor
        if fac is None or fac.written > j or j + n > fac.buf.shape[1]:
            # grow by doubling, up to refresh_every - 1 columns (j + n reaching it refreshes instead)
            cap = max(j + n, 2 * (fac.buf.shape[1] if fac is not None else 0), 64)
            cap = max(j + n, min(cap, self.refresh_every - 1))
            buf = torch.empty(V.shape[0], cap, dtype=self.compute_dtype, device=self.compute_device)
            if j:
                buf[:, :j] = fac.buf[:, :j]
            fac = _Factor(buf, j)
        fac.buf[:, j : j + n] = V.to(self.compute_dtype)
        fac.written = j + n
        self._factor, self._j = fac, j + n

    # ------------------------------------------------------------------ undo
    def snapshot(self) -> Dict[str, Any]:
        """References to everything `add_keys` and `refresh` change; no tensor is copied."""
        return {"basis": self._basis64, "form": self._form, "inv": self._inv, "factor": self._factor, "j": self._j}

    def restore(self, snap: Mapping[str, Any]) -> None:
        """Return to a `snapshot` of this solver."""
        held: _Held = snap["inv"]
        if held.tensor.device != self.compute_device:
            if held is not self._inv:
                self._inv.tensor = self._inv.tensor.to(self.storage_device)
            held.tensor = held.tensor.to(self.compute_device)
        if snap["basis"] is not self._basis64 or snap["form"] != self._form:
            self._basis64, self._form = snap["basis"], snap["form"]
            self._basis_c = None
            if self._basis64 is not None and self._form == "factored":
                self._basis_c = self._to_compute(self._basis64)
        self._inv, self._factor, self._j = held, snap["factor"], snap["j"]

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict:
        """Tensors only (safetensors-friendly).

        ``basis``: float64 U, empty (d_k, 0) for U = I; ``g_inv`` (m, m) or, in the dense
        form, ``m_inv`` (d_k, d_k): the carried base in the compute dtype; with
        ``refresh_every``, ``factor`` (rows, j): the low-rank correction. Nothing is copied.
        """
        basis = self._basis64 if self._basis64 is not None else torch.zeros(self.d_k, 0, dtype=torch.float64)
        out = {
            "basis": basis,
            ("m_inv" if self._form == "dense" and self._basis64 is not None else "g_inv"): self._inv.tensor,
            "lambda1": torch.tensor(self.lambda1, dtype=torch.float64),
            "lambda2": torch.tensor(self.lambda2, dtype=torch.float64),
        }
        if self._deferred:
            rows = self._inv.tensor.shape[0]
            out["factor"] = (
                self._factor.buf[:, : self._j]
                if self._j
                else torch.zeros(rows, 0, dtype=self.compute_dtype, device=self.compute_device)
            )
        return out

    def load_state_dict(self, state: Mapping[str, Any], hist_cov=None) -> None:
        """Restore from ``state_dict()`` of a solver with the same lambdas, in any placement/precision.

        A state saved in this solver's form, at this or a higher precision, is taken as is
        (cast and moved): a resumed run continues exactly. Otherwise (other form, or a float32
        state into a float64 solver) the inverse is recomputed in float64 from ``hist_cov``
        when given, else converted through U (carrying the saved precision).
        """
        inv_key = "m_inv" if "m_inv" in state else "g_inv"
        for name in ("basis", inv_key, "lambda1", "lambda2"):
            if name not in state:
                raise ValueError(
                    f"solver state is missing {name!r}; expected keys basis, g_inv (or m_inv), lambda1, lambda2"
                )
        for name in ("lambda1", "lambda2"):
            saved = float(state[name])
            if saved != getattr(self, name):
                raise ValueError(f"solver state has {name}={saved}, this solver has {getattr(self, name)}")
        basis = state["basis"]
        if basis.ndim != 2 or basis.shape[0] != self.d_k:
            raise ValueError(f"solver state basis has shape {tuple(basis.shape)}; expected ({self.d_k}, m)")
        m = self.d_k if basis.shape[1] == 0 else basis.shape[1]
        saved_form = "dense" if inv_key == "m_inv" else "factored"
        rows = self.d_k if saved_form == "dense" else m
        inv = state[inv_key]
        if tuple(inv.shape) != (rows, rows) or not bool(torch.isfinite(inv).all()):
            raise ValueError(
                f"solver state {inv_key} has shape {tuple(inv.shape)} or non-finite values; expected ({rows}, {rows})"
            )
        factor = state.get("factor")
        if factor is not None and (
            factor.ndim != 2 or factor.shape[0] != rows or not bool(torch.isfinite(factor).all())
        ):
            raise ValueError(
                f"solver state factor has shape {tuple(factor.shape)} or non-finite values; expected ({rows}, j)"
            )
        basis64 = None if basis.shape[1] == 0 else basis.to(self.storage_device, torch.float64).clone()
        form = _resolve_form(self.inverse_form, self.d_k, None if basis64 is None else m, self._max_factor_columns)
        if basis64 is None:
            saved_form = form = "factored"
        j = 0 if factor is None else factor.shape[1]
        # taken as is: same form, no loss of precision, and a factor this solver can carry
        exact = (
            form == saved_form
            and inv.dtype in (torch.float64, self.compute_dtype)
            and (j < self.refresh_every if self._deferred else j == 0)
        )
        if exact:
            base, fac = inv, factor
        elif hist_cov is not None:
            base, fac = self._solve_base(basis64, self._history(hist_cov), form), None
        else:
            if inv.dtype != torch.float64 and self.compute_dtype == torch.float64:
                warnings.warn(
                    f"loading a {inv.dtype} solver state into a float64 solver without hist_cov: the inverse "
                    "keeps float32 rounding until the next refresh; pass hist_cov to recompute it",
                    stacklevel=2,
                )
            eff = inv.to(self.storage_device, torch.float64)
            if j:
                F = factor.to(self.storage_device, torch.float64)
                eff = eff - F @ F.T
            if saved_form == "dense" and form == "factored":
                eff = basis64.T @ eff @ basis64
            elif saved_form == "factored" and form == "dense":
                eff = basis64 @ eff @ basis64.T
            base, fac = 0.5 * (eff + eff.T), None
        self._basis64, self._form = basis64, form
        self._basis_c = None
        if basis64 is not None and form == "factored":
            self._basis_c = self._to_compute(basis64)
        if self._offloaded:
            self._inv.tensor = self._inv.tensor.to(self.storage_device)
        x = base.to(dtype=self.compute_dtype).to(self.compute_device).contiguous()  # cast where it lies
        self._inv = _Held(x.clone() if x.data_ptr() == base.data_ptr() else x)
        self._factor, self._j = None, 0
        if fac is not None and fac.shape[1]:
            self._append(fac.to(self.compute_device, self.compute_dtype))
