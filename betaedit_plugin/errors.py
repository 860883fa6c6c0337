"""The package's exception types for user errors.

Every one derives from `BetaEditError`, itself a `ValueError`, so ``except ValueError`` keeps
working (the file and run errors, e.g. ``CheckpointError``, are also ``RuntimeError``s as before). The message is one line that names the field or file, the value and the fix; the
command line (`betaedit_plugin.run`) prints it and exits with status 2. Raised before anything
is changed: the model's weights, the editor's state and the files stay as they were.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

__all__ = ["BetaEditError", "HyperParamsError", "RequestError", "DeviceError", "NonFiniteUpdateError",
           "WeightsChangedError", "IntegrityError", "UnsealedFileError", "LockHeldError", "DatasetError"]


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


class NonFiniteUpdateError(BetaEditError):
    """An update (Delta) had NaN or Inf entries; the model and the state were left as they were."""


class WeightsChangedError(BetaEditError, RuntimeError):
    """The edited weights were changed outside the editor, so its history no longer matches them."""


class IntegrityError(BetaEditError):
    """A file's content does not match the digests written with it (or cannot be read at all).

    ``path`` is the file, ``problem`` what is wrong with it (naming the tensor or field), ``remedy``
    what to do; ``kind`` names the file in the message ("editor state file", ...).
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], problem: str, remedy: str = "", kind: str = "file"):
        self.path, self.problem, self.remedy, self.kind = str(path), problem, remedy, kind
        super().__init__(f"{kind} {str(path)!r}: {problem}" + (f"; {remedy}" if remedy else ""))


class UnsealedFileError(IntegrityError):
    """The file carries no digests (written by a version before they existed): its content cannot be verified."""


class LockHeldError(BetaEditError, RuntimeError):
    """Another live process holds an `exclusive_lock`; ``pid`` is its process id (None if unknown)."""

    def __init__(self, lock_path: Union[str, "os.PathLike[str]"], pid: Optional[int]):
        self.lock_path, self.pid = str(lock_path), pid
        holder = f"process {pid}" if pid is not None else "another process (pid unknown)"
        super().__init__(f"{holder} holds the lock {str(lock_path)!r}")


class DatasetError(BetaEditError):
    """A data file is missing, unreadable or malformed, or holds invalid records (the message names
    the file and the records). Also importable from `betaedit_plugin.data`."""
