"""The package's exception types for user errors.

Every one derives from `BetaEditError`, itself a `ValueError`, so ``except ValueError`` keeps
working (the file and run errors, e.g. ``CheckpointError``, are also ``RuntimeError``s as before). The message is one line that names the field or file, the value and the fix; the
command line (`betaedit_plugin.run`) prints it and exits with status 2. Raised before anything
is changed: the model's weights, the editor's state and the files stay as they were.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["BetaEditError", "HyperParamsError", "RequestError", "DeviceError", "DatasetError"]


class BetaEditError(ValueError):
    """Base of this package's user errors (bad hyperparameters, requests, data, configuration, device)."""


class HyperParamsError(BetaEditError):
    """Hyperparameters that cannot work, e.g. a ``nullspace_threshold`` that leaves no null space."""


class DeviceError(BetaEditError):
    """The requested device is not available here, or the model is on another one."""


class RequestError(BetaEditError):
    """An edit request that cannot be written; ``index`` (within its batch or list) and ``case_id`` name it."""

    def __init__(self, message: str, index: Optional[int] = None, case_id: Any = None) -> None:
        super().__init__(message)
        self.index = index
        self.case_id = case_id


class DatasetError(BetaEditError):
    """A data file is missing, unreadable or malformed, or holds invalid records (the message names
    the file and the records). Also importable from `betaedit_plugin.data`."""
