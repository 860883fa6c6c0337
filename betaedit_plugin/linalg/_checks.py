"""Argument checks shared by the linalg functions (pure torch, no side effects)."""

from __future__ import annotations

import math

import torch


def check_matrix(name: str, x, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    """A finite 2-D floating tensor, optionally with a given number of rows/columns."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D tensor, got shape {tuple(x.shape)}")
    if not (x.is_floating_point()):
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name}: expected {rows} rows, got shape {tuple(x.shape)}")
    if cols is not None and x.shape[1] != cols:
        raise ValueError(f"{name}: expected {cols} columns, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or Inf (shape {tuple(x.shape)})")
    return x


def check_cov(name: str, x, dim: int | None = None) -> torch.Tensor:
    """A finite, square, symmetric matrix (relative tolerance 1e-5 of its largest entry)."""
    check_matrix(name, x)
    if x.shape[0] != x.shape[1]:
        raise ValueError(f"{name}: expected a square (d_k, d_k) matrix, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[0] != dim:
        raise ValueError(f"{name}: expected shape ({dim}, {dim}) to match keys' d_k, got {tuple(x.shape)}")
    x64 = x.double()
    scale = x64.abs().max().item()
    asym = (x64 - x64.T).abs().max().item()
    if asym > 1e-5 * max(scale, 1e-30):
        raise ValueError(
            f"{name}: expected a symmetric matrix, max |{name} - {name}^T| = {asym:.3g} (max entry {scale:.3g})"
        )
    return x


def check_keys_resid(keys, resid) -> tuple[int, int, int]:
    """keys (d_k, n) and resid (d_v, n) with the same n >= 1; returns (d_k, d_v, n)."""
    check_matrix("keys", keys)
    check_matrix("resid", resid)
    if keys.shape[1] != resid.shape[1]:
        raise ValueError(
            f"keys has shape {tuple(keys.shape)} and resid {tuple(resid.shape)}: "
            "expected keys (d_k, n) and resid (d_v, n) with the same n"
        )
    if keys.shape[1] < 1:
        raise ValueError(f"keys: expected at least one column (n >= 1), got shape {tuple(keys.shape)}")
    return keys.shape[0], resid.shape[0], keys.shape[1]


def check_scalar(name: str, value, positive: bool = False) -> float:
    """A finite non-negative (or positive) number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a number") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name}={value!r}: expected a finite {'positive' if positive else 'non-negative'} number")
    return v
