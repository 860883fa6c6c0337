"""The deferred low-rank correction of a carried inverse: inverse = base - F F^T.

With ``refresh_every`` set, a solver does not write each Woodbury step into its base
inverse; it appends the step's columns V (V V^T = W S^-1 W^T) to F instead, one column
per key since the last recomputation. Applying the inverse then costs O(rows j n) extra,
the base is never rewritten, and an undo snapshot is free: F is only ever appended to,
so a snapshot is (buffer, column count).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

__all__ = ["LowRankFactor"]


class _Buffer:
    """Storage for F's columns, allocated past the used width so appends are in place.

    ``written`` is how many columns were ever written: appending where a snapshot may
    still refer to later columns (after a restore) copies first.
    """

    __slots__ = ("data", "written")

    def __init__(self, data: torch.Tensor, written: int = 0) -> None:
        self.data, self.written = data, written


class LowRankFactor:
    """F (rows, j) in the compute dtype on the compute device; at most ``capacity`` columns.

    Args:
        capacity: the most columns ever held (``refresh_every`` - 1: the key that would reach
            ``refresh_every`` triggers a recomputation instead); 0 for a solver without it.
        dtype, device: the compute placement.
    """

    def __init__(self, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        self.capacity, self.dtype, self.device = capacity, dtype, device
        self._buf: Optional[_Buffer] = None
        self.columns = 0  # j: keys since the last recomputation

    def view(self) -> torch.Tensor:
        """F[:, :j] (a view of the buffer); only meaningful when ``columns`` > 0."""
        return self._buf.data[:, : self.columns]

    def correct(self, W: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """W - F F^T B: ``W = base B`` corrected to the carried inverse applied to B."""
        if self.columns:
            F = self.view()
            W = W - F @ (F.T @ B)
        return W

    def subtract_from64(self, inv64: torch.Tensor, device: torch.device) -> torch.Tensor:
        """base - F F^T in float64 on ``device`` (``inv64`` is the base there, float64)."""
        if self.columns:
            F = self.view().to(device, torch.float64)
            inv64 = inv64 - F @ F.T
        return inv64

    def append(self, V: torch.Tensor) -> None:
        """F <- [F, V] (V: rows by n, cast to the compute dtype)."""
        n, j = V.shape[1], self.columns
        buf = self._buf
        if buf is None or buf.written > j or j + n > buf.data.shape[1]:
            # grow by doubling, up to capacity (j + n reaching refresh_every refreshes instead)
            cap = max(j + n, 2 * (buf.data.shape[1] if buf is not None else 0), 64)
            cap = max(j + n, min(cap, self.capacity))
            data = torch.empty(V.shape[0], cap, dtype=self.dtype, device=self.device)
            if j:
                data[:, :j] = buf.data[:, :j]
            buf = _Buffer(data, j)
        buf.data[:, j : j + n] = V.to(self.dtype)
        buf.written = j + n
        self._buf, self.columns = buf, j + n

    def clear(self) -> None:
        """Empty F (after a recomputation folded it into the base)."""
        self._buf, self.columns = None, 0

    def snapshot(self) -> Tuple[Optional[_Buffer], int]:
        return self._buf, self.columns

    def restore(self, snap: Tuple[Optional[_Buffer], int]) -> None:
        self._buf, self.columns = snap

    def saved(self, rows: int) -> torch.Tensor:
        """F[:, :j] for a state dict; (rows, 0) when empty."""
        if self.columns:
            return self.view()
        return torch.zeros(rows, 0, dtype=self.dtype, device=self.device)

    def tensors(self) -> List[torch.Tensor]:
        return [] if self._buf is None else [self._buf.data]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
