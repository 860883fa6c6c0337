"""The ``device`` hyperparameter: EasyEdit's convention, and a clear error where it does not exist."""

from __future__ import annotations

from typing import Any

import torch

from .errors import DeviceError

__all__ = ["torch_device", "resolve_device", "same_device"]


def torch_device(device: Any) -> torch.device:
    """EasyEdit's convention: an int, or a string of digits (YAML ``device: "0"``), means cuda:<int>.

    Only parses; `resolve_device` also checks that the device exists here.
    """
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device(f"cuda:{device}")
    if isinstance(device, str) and device.strip().isdigit():
        return torch.device(f"cuda:{int(device)}")
    return torch.device(device)


def resolve_device(device: Any, key: str = "device") -> torch.device:
    """``device`` as a `torch.device` that this machine has.

    Raises:
        DeviceError: not a device name, CUDA (or MPS) requested where it is not available, or a
            CUDA index beyond the devices present; the message names ``key`` and the value.
    """
    try:
        dev = torch_device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceError(f"{key}={device!r}: not a torch device; use 'cpu', 'cuda', 'cuda:<n>' or an int n") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{key}={device!r}: CUDA is not available on this machine; set {key} to 'cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"{key}={device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; pick one of them")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{key}={device!r}: MPS is not available on this machine; set {key} to 'cpu'")
    return dev


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same; "cuda" without an index is the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    index = [torch.cuda.current_device() if d.index is None else d.index for d in (a, b)]
    return index[0] == index[1]
