"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (``kill``, the end of a batch job) without losing work.

The first signal during the edit loop asks it to stop after the edit it is computing: that edit is
journaled (and evaluated, at an evaluation point), a checkpoint is written at that step and the
results are saved with status "stopped", so ``resume=true`` continues there without a replay. Then
`RunInterrupted` is raised, which the command line reports in one line (exit status 128 + the
signal's number, as a shell reports a process the signal ended). A second signal stops at once:
the journal and the last checkpoint are still whole (every write is atomic), and a resume replays
the journaled edits after that checkpoint.

Outside the edit loop (statistics, the projector, a replay) SIGINT raises KeyboardInterrupt at once
as usual; the command line makes SIGTERM do the same (`terminate_as_interrupt`), so that its holds
are released and temporary files removed as on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

logger = logging.getLogger(__name__)

__all__ = ["RunInterrupted", "StopRequest", "stop_between_edits", "terminate_as_interrupt", "signal_name", "run_state"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal. ``step``: the last edit journaled when it stopped after an edit
    (None when it stopped at once); ``out_dir``: the run's directory, when known."""

    def __init__(self, signum: int, step: Optional[int] = None, out_dir: Optional[str] = None) -> None:
        super().__init__(signal_name(signum))
        self.signum, self.step, self.out_dir = signum, step, out_dir

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopRequest:
    """Set by the first stop signal; true once a stop was asked for."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def _handling(signals: tuple, handler) -> Iterator[bool]:
    """``handler`` for ``signals`` inside the block, the previous handlers back on exit; yields whether
    it was installed (only on the main thread, the one Python delivers signals to)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield True
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_between_edits(where: Callable[[], str]) -> Iterator[StopRequest]:
    """SIGINT and SIGTERM, inside the block: the first sets the yielded `StopRequest` (and logs what
    will happen, ``where()`` naming the edit in progress), a second raises `RunInterrupted` at once.
    The previous handlers come back on exit. Off the main thread (where Python delivers no signals)
    the request is never set."""
    request = StopRequest()

    def handler(signum, frame):
        if request:
            raise RunInterrupted(signum)
        request.signum = signum
        logger.warning("%s: stopping after %s (journaled and checkpointed); send it again to stop at once",
                       signal_name(signum), where())

    with _handling(STOP_SIGNALS, handler):
        yield request


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `RunInterrupted` (a KeyboardInterrupt) inside the block, as SIGINT does by
    default, so that ``finally`` blocks and context managers run. Main thread only; a no-op elsewhere."""

    def handler(signum, frame):
        raise RunInterrupted(signum)

    with _handling((signal.SIGTERM,), handler):
        yield


def run_state(out_dir: Union[str, Path]) -> str:
    """What a stopped run left in ``out_dir`` for a resume: its journaled edits and last checkpoint."""
    from .checkpoint import list_checkpoints
    from .journal import Journal, JournalError

    out_dir = Path(out_dir)
    parts = [f"out_dir {str(out_dir)!r}"]
    if Journal.exists(out_dir):
        try:
            parts.append(f"holds {Journal.open(out_dir).last_step} journaled edit(s)")
        except JournalError as exc:
            parts.append(f"holds a journal that cannot be read ({exc})")
    else:
        parts.append("holds no journal")
    checkpoints = list_checkpoints(out_dir)
    parts.append(f"its last checkpoint at step {int(checkpoints[-1].name.split('-')[1])}" if checkpoints else "no checkpoint")
    return f"{parts[0]} {parts[1]}, {parts[2]}"
