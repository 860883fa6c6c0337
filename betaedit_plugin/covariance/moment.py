"""The running uncentred second moment E[x x^T] of row vectors, summed in float64.

C0 of a layer is this moment of its rewrite-module inputs; :class:`SecondMoment` is what the
statistics pass (`betaedit_plugin.covariance.collect`) accumulates per layer, and its ``mom2`` /
``count`` are what the data-parallel pass (`betaedit_plugin.covariance.dist`) adds up across ranks.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

__all__ = ["SecondMoment"]


class SecondMoment:
    """Running uncentred second moment of row vectors, summed in float64.

    ``add(x)`` with x (N, d) adds ``x^T x`` to ``mom2`` (d, d) and N to ``count``;
    ``moment()`` is ``mom2 / count`` = E[x x^T]. The sum lives on the device of the
    first batch (so a GPU forward pass accumulates on the GPU).
    """

    def __init__(self) -> None:
        self.count: int = 0
        self.mom2: Optional[torch.Tensor] = None

    def add(self, x: torch.Tensor) -> None:
        """Accumulate rows of ``x`` (N, d); N may be 0."""
        if x.dim() != 2:
            raise ValueError(f"SecondMoment.add expects a 2-D tensor (N, d), got shape {tuple(x.shape)}")
        if self.mom2 is None:
            self.mom2 = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        elif x.shape[1] != self.mom2.shape[0]:
            raise ValueError(f"SecondMoment.add: rows of width {x.shape[1]}, expected {self.mom2.shape[0]}")
        if x.shape[0] == 0:
            return
        x64 = x.to(dtype=torch.float64, device=self.mom2.device)
        self.mom2.addmm_(x64.t(), x64)
        self.count += int(x.shape[0])

    def moment(self) -> torch.Tensor:
        """E[x x^T] (d, d), float64, exactly symmetric."""
        if self.mom2 is None or self.count == 0:
            raise ValueError("SecondMoment.moment(): no rows were added (the corpus gave no tokens)")
        m = self.mom2 / self.count
        return (m + m.t()) / 2

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Tensors only: ``{"mom2": sum (d, d) float64, "count": int64 scalar}``."""
        if self.mom2 is None:
            raise ValueError("SecondMoment.state_dict(): nothing accumulated yet")
        return {"mom2": self.mom2.detach().cpu(), "count": torch.tensor(self.count, dtype=torch.int64)}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        mom2, count = state["mom2"], int(state["count"])
        if mom2.dim() != 2 or mom2.shape[0] != mom2.shape[1] or count < 0:
            raise ValueError(f"SecondMoment state: mom2 shape {tuple(mom2.shape)}, count {count}")
        self.mom2 = mom2.to(torch.float64).clone()
        self.count = count
