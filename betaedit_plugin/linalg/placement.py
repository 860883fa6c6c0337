"""Where a solver's tensors live and in what precision, decided once by the caller.

A solver has two places:

- *storage* (``storage_device``, always float64): C0, the basis U, and every from-scratch
  recomputation of the inverse;
- *compute* (``compute_device``, ``compute_dtype`` float64 or float32): what every edit
  reads (the carried inverse, the low-rank factor, and in the factored form a copy of U).

`Placement` holds these three choices; the solver classes take one and never re-derive it.
`Held` is the carried inverse, shared between a solver and its undo snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

__all__ = ["Placement", "Held", "as_dtype", "as_device"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def as_dtype(value) -> torch.dtype:
    """torch.float64 / torch.float32 from a dtype or its name; anything else is refused."""
    if isinstance(value, str) and value in _DTYPES:
        return _DTYPES[value]
    if value in (torch.float64, torch.float32):
        return value
    raise ValueError(
        f"compute_dtype={value!r}: expected torch.float64 or torch.float32 (or 'float64' / 'float32'); "
        "half precision is too coarse for the carried inverse"
    )


def as_device(value) -> torch.device:
    """torch.device with the current CUDA index filled in, so 'cuda' and 'cuda:0' compare equal."""
    d = torch.device(value)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


@dataclass(frozen=True)
class Placement:
    """Storage device (float64 master), compute device and compute dtype (per-edit tensors)."""

    storage_device: torch.device
    compute_device: torch.device
    compute_dtype: torch.dtype = torch.float64

    @classmethod
    def resolve(
        cls,
        prior_cov,
        compute_device: Union[str, torch.device, None] = None,
        compute_dtype: Union[torch.dtype, str] = torch.float64,
        storage_device: Union[str, torch.device, None] = None,
    ) -> "Placement":
        """The placement of `IncrementalSolver`'s keyword options: storage defaults to
        ``prior_cov``'s device, compute to the storage device."""
        dtype = as_dtype(compute_dtype)
        storage = as_device(storage_device) if storage_device is not None else _device_of(prior_cov)
        compute = as_device(compute_device) if compute_device is not None else storage
        return cls(storage, compute, dtype)

    @property
    def offloaded(self) -> bool:
        """Compute and storage differ: a replaced inverse is parked on the storage device."""
        return self.compute_device != self.storage_device

    def to_compute(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.compute_device, self.compute_dtype).contiguous()

    def to_storage64(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.storage_device, torch.float64)

    def park(self, held: "Held") -> None:
        """Move an inverse about to be replaced to the storage device (when offloaded), so a
        snapshot that still refers to it does not keep a second inverse on the compute device."""
        if self.offloaded:
            held.tensor = held.tensor.to(self.storage_device)

    def compute_from64(self, inv64: torch.Tensor) -> "Held":
        """A freshly computed float64 inverse (on storage) as the carried one; when offloaded the
        cast happens on the storage device, so no float64 copy lands on the compute device."""
        if self.offloaded and self.compute_dtype != torch.float64:
            inv64 = inv64.to(self.compute_dtype)
        return Held(self.to_compute(inv64))


def _device_of(prior_cov) -> torch.device:
    # a non-tensor prior is refused by the solver's own check, with its message
    return prior_cov.device if isinstance(prior_cov, torch.Tensor) else torch.device("cpu")


class Held:
    """A compute-device tensor shared by a solver and its snapshots.

    When the solver replaces it (a recomputation), `Placement.park` moves the old tensor
    to the storage device first; `restore` moves it back.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
