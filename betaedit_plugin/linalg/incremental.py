"""Entry points of the incremental solver: `IncrementalSolver` (the factory), the 'auto' form,
`add_keys` (H + K K^T) and `solver_device_bytes`.

`IncrementalSolver(...)` resolves the keyword options once: a `Placement` (storage device,
compute device, compute dtype) and the inverse form. 'factored' and 'dense' give a
`FactoredSolver` / `DenseSolver` (``solver.py``); 'auto' gives an `AutoFormSolver`, which
holds one of the two and chooses again at every refresh and load (m changes), taking
whichever holds fewer numbers on the compute device, the low-rank factor at its largest
included.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from ._checks import check_matrix
from .placement import Placement, as_dtype
from .solver import (
    DEFAULT_REFRESH_EVERY_FLOAT32,
    DenseSolver,
    FactoredSolver,
    FormSolver,
    SavedState,
    Solver,
    check_basis,
    check_refresh_every,
)

__all__ = ["add_keys", "IncrementalSolver", "AutoFormSolver", "solver_device_bytes", "DEFAULT_REFRESH_EVERY_FLOAT32"]

_FORMS = ("factored", "dense", "auto")
_CLASSES = {"factored": FactoredSolver, "dense": DenseSolver}


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


def IncrementalSolver(  # noqa: N802 - the factory keeps the name callers and saved configs use
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
) -> Solver:
    """The solver carrying (U^T (H + lambda1 C0) U + lambda2 I_m)^-1 for one layer.

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
        refresh_every: None (float64 full updates) or keys between two float64
            recomputations, the updates in between carried as a low-rank factor; float32
            requires it (default `DEFAULT_REFRESH_EVERY_FLOAT32`).
        inverse_form: 'factored' (default; U and G^-1), 'dense' (M = U G^-1 U^T,
            no basis on the compute device) or 'auto' (the smaller of the two).

    Returns a `FactoredSolver`, `DenseSolver` or `AutoFormSolver` (see `Solver` for the methods).
    """
    cls = _CLASSES.get(_check_form(inverse_form), AutoFormSolver)
    placement = Placement.resolve(prior_cov, compute_device, compute_dtype, storage_device)
    return cls(prior_cov, basis, hist_cov, lambda1, lambda2, placement=placement, refresh_every=refresh_every)


def solver_device_bytes(
    d_k: int,
    m: Optional[int] = None,
    compute_dtype: Union[torch.dtype, str] = torch.float64,
    inverse_form: str = "factored",
    factor_columns: int = 0,
) -> int:
    """Bytes a solver holds on its compute device (no tensors are built).

    Args:
        d_k: key dimension. m: basis rank (None: no projection, U = I).
        compute_dtype: float64 or float32. inverse_form: 'factored', 'dense' or 'auto'.
        factor_columns: columns of the low-rank factor (at most ``refresh_every`` - 1).

    With storage and compute on the same device in float64 the basis is shared
    with the float64 master and counted once, as here.
    """
    size = torch.empty(0, dtype=as_dtype(compute_dtype)).element_size()
    form = resolve_form(_check_form(inverse_form), d_k, m, int(factor_columns))
    if m is None or form == "dense":
        rows, basis = d_k, 0
    else:
        rows, basis = m, d_k * m
    return size * (basis + rows * rows + rows * int(factor_columns))


def _check_form(value) -> str:
    if value not in _FORMS:
        raise ValueError(f"inverse_form={value!r}: expected one of {', '.join(repr(f) for f in _FORMS)}")
    return value


def resolve_form(form: str, d_k: int, m: Optional[int], factor_columns: int = 0) -> str:
    """'factored' or 'dense' for a basis of rank m (None: U = I, where the two coincide);
    'auto' counts the low-rank factor too (m or d_k rows of ``factor_columns``)."""
    if m is None:
        return "factored"
    if form == "auto":
        dense = d_k * (d_k + factor_columns)
        factored = m * (d_k + m + factor_columns)
        return "dense" if dense < factored else "factored"
    return form


class AutoFormSolver:
    """inverse_form='auto': a `FactoredSolver` or `DenseSolver`, whichever holds fewer numbers
    for the current m, chosen again at each `refresh` and `load_state_dict`.

    Everything else is the held solver's. A switch hands the carried inverse over (the new
    solver parks the old one as its own recomputation would) and drops the old solver's
    compute copy of U; a snapshot keeps the solver it was taken of, so `restore` switches back.
    """

    inverse_form = "auto"

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
        placement = placement if placement is not None else Placement.resolve(prior_cov)
        refresh_every = check_refresh_every(refresh_every, placement.compute_dtype)
        self._factor_columns = refresh_every - 1 if refresh_every else 0
        # an ill-formed argument picks either class, whose own checks then refuse it
        d_k = prior_cov.shape[0] if isinstance(prior_cov, torch.Tensor) and prior_cov.ndim == 2 else 0
        m = basis.shape[1] if isinstance(basis, torch.Tensor) and basis.ndim == 2 and basis.shape[1] else None
        cls = _CLASSES[resolve_form("auto", d_k, m, self._factor_columns)]
        self._inner: FormSolver = cls(
            prior_cov, basis, hist_cov, lambda1, lambda2, placement=placement, refresh_every=refresh_every
        )

    def _choose(self, basis64: Optional[torch.Tensor]) -> FormSolver:
        """The held solver if its form suits basis64, else a new one of the other form."""
        m = None if basis64 is None else basis64.shape[1]
        cls = _CLASSES[resolve_form("auto", self.d_k, m, self._factor_columns)]
        return self._inner if type(self._inner) is cls else self._inner._sibling(cls)

    def _replaced_by(self, inner: FormSolver) -> Optional[FormSolver]:
        return None if inner is self._inner else self._inner

    # ------------------------------------------------------------------ what changes the form
    def refresh(self, basis=None, hist_cov=None, prior_cov=None) -> None:
        """New basis U and history H (and, given, C0): the form for the new m, its inverse recomputed in float64."""
        basis64 = check_basis(basis, self.d_k, self.placement)
        inner = self._choose(basis64)
        inner._refresh(basis64, hist_cov, replacing=self._replaced_by(inner), prior_cov=prior_cov)
        self._inner = inner

    def load_state_dict(self, state: Mapping[str, Any], hist_cov=None) -> None:
        """As `FormSolver.load_state_dict`, in the form chosen for the saved basis."""
        saved = SavedState.read(state, self._inner)
        inner = self._choose(saved.basis)
        inner._load(saved, hist_cov, replacing=self._replaced_by(inner))
        self._inner = inner

    def snapshot(self) -> Dict[str, Any]:
        return {"solver": self._inner, "state": self._inner.snapshot()}

    def restore(self, snap: Mapping[str, Any]) -> None:
        inner = snap["solver"]
        if inner is not self._inner:
            inner._held = self._inner._held  # so restoring parks the inverse in use now
            self._inner._release()
            self._inner = inner
        inner.restore(snap["state"])

    # ------------------------------------------------------------------ the held solver's
    def delta(self, keys, resid) -> torch.Tensor:
        return self._inner.delta(keys, resid)

    def add_keys(self, keys, hist_cov=None) -> None:
        self._inner.add_keys(keys, hist_cov)

    def refresh_inverse(self, hist_cov) -> None:
        self._inner.refresh_inverse(hist_cov)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self._inner.state_dict()

    def tensors(self) -> List[torch.Tensor]:
        return self._inner.tensors()

    def device_bytes(self) -> int:
        return self._inner.device_bytes()

    d_k = property(lambda self: self._inner.d_k)
    lambda1 = property(lambda self: self._inner.lambda1)
    lambda2 = property(lambda self: self._inner.lambda2)
    refresh_every = property(lambda self: self._inner.refresh_every)
    prior_cov = property(lambda self: self._inner.prior_cov)
    placement = property(lambda self: self._inner.placement)
    storage_device = property(lambda self: self._inner.storage_device)
    compute_device = property(lambda self: self._inner.compute_device)
    compute_dtype = property(lambda self: self._inner.compute_dtype)
    basis = property(lambda self: self._inner.basis)
    rank = property(lambda self: self._inner.rank)
    form = property(lambda self: self._inner.form)
    keys_since_refresh = property(lambda self: self._inner.keys_since_refresh)
    g_inv = property(lambda self: self._inner.g_inv)
