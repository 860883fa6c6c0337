"""The directories a run writes to: its hold on ``out_dir``, and checks of out_dir and the caches.

A run holds its ``out_dir`` with the OS lock ``.betaedit-run.lock`` (its pid in
``.betaedit-run.pid``) before it writes or removes anything there: the command line takes the
hold before Hydra makes the directory or opens its log in it, `run_experiment` (as a library)
before its first write. A second run on the same out_dir is refused with the holder's pid and
removes only what it made itself (directories it created, if still empty); it never touches the
lock, pid, log, checkpoint or journal files of the run that holds out_dir.

`OutDirHold.release` with ``undo=True`` (a user error before the run wrote results) puts out_dir
back as it was when the hold was taken: the logs written since are removed or cut back, the pid
file and (when this run made it) the lock file go, then the directories this run created if they
are empty. The lock file is removed while still held; `betaedit_plugin._fileio.try_lock` makes a
process that opened it just before try again on a fresh one, so two runs never both hold out_dir.

Path checks (user errors, `ConfigError`, before anything is written): out_dir, ``BETAEDIT_CACHE``
and ``hparams.stats_dir`` must be directories or not exist yet (no file, symbolic link loop or
dangling link on the way); out_dir and the subdirectories a run writes into must be writable.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from .._fileio import TEMPORARY_NAME, HeldLock, LockHeldError, atomic_write_text, read_pid, try_lock
from ..errors import BetaEditError
from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "RUN_LOCK",
    "RUN_PID",
    "OutDirHold",
    "hold_out_dir",
    "held_out_dir",
    "check_dir_path",
    "check_out_dir_path",
    "check_cache_dirs",
    "remove_stale_temporaries",
]

RUN_LOCK, RUN_PID = ".betaedit-run.lock", ".betaedit-run.pid"  # in out_dir while a run holds it
#: subdirectories of out_dir a run writes into (checked for writability, swept for stale temporaries)
WRITTEN_SUBDIRS = ("checkpoints", "journal")
_PROBE_PREFIX = ".betaedit-write-probe."
_STALE_CHECKPOINT = re.compile(r"^step-\d+\.tmp$")  # `write_checkpoint`'s staging directory

_HELD: Dict[str, "OutDirHold"] = {}  # this process's holds, by real path


# ============================================================================ path checks
def _path_problem(path: Path) -> Optional[Tuple[Path, str]]:
    """(the component, what is wrong) when ``path`` cannot be (or become) a directory; None when it can.

    Walks from the root down: a file, a symbolic link loop or a dangling link on the way is a
    problem; the first component that does not exist ends the walk (the run creates the rest).
    """
    for part in reversed([path, *path.parents]):
        try:
            st = os.stat(part)
        except FileNotFoundError:
            if os.path.islink(part):
                return part, f"is a symbolic link to {os.readlink(part)!r}, which does not exist"
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return part, "is a symbolic link loop"
            return part, f"cannot be reached ({type(exc).__name__}: {exc.strerror})"
        if not stat.S_ISDIR(st.st_mode):
            return part, "is a file, not a directory"
    return None


def check_dir_path(path, key: str, fix: str) -> None:
    """ConfigError ``"<key>='<path>' <problem>; <fix>"`` when ``path`` cannot be a directory (`_path_problem`)."""
    path = Path(path)
    found = _path_problem(path)
    if found is None:
        return
    part, problem = found
    if part == path:
        raise ConfigError(problem, field=key, value=str(path), fix=fix, sep=" ")
    raise ConfigError(f"{str(part)!r} {problem}", field=key, value=str(path), fix=fix)


def check_out_dir_path(out_dir) -> None:
    """``out_dir`` is a directory or can be made one (no file, link loop or dangling link on the way)."""
    check_dir_path(Path(out_dir), "out_dir", "give a directory path (or another out_dir)")


def check_cache_dirs(hparams) -> None:
    """``BETAEDIT_CACHE`` (when set) and the statistics directory are directories or can be made ones."""
    from ..covariance import default_stats_dir

    env = os.environ.get("BETAEDIT_CACHE")
    unset = "set BETAEDIT_CACHE to a directory, or unset it (default ~/.cache/betaedit_plugin)"
    if env:
        check_dir_path(Path(env).expanduser(), "BETAEDIT_CACHE", unset)
    stats_dir = getattr(hparams, "stats_dir", None)
    if stats_dir:
        check_dir_path(Path(stats_dir).expanduser(), "hparams.stats_dir", "give a directory path")
    else:
        check_dir_path(default_stats_dir(), "the statistics cache", "remove it, or " + unset)


def _writable_problem(directory: Path) -> Optional[str]:
    """None when a file can be made in ``directory`` (tried: permissions, read-only mounts, ACLs
    all count), else the error."""
    try:
        fd, name = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=directory)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(name)
    return None


def _written_dirs(out_dir: Path) -> List[Path]:
    """out_dir and the existing directories under its `WRITTEN_SUBDIRS` (a run writes, renames
    and removes entries in each)."""
    dirs = [out_dir]
    for sub in WRITTEN_SUBDIRS:
        top = out_dir / sub
        if top.is_dir():
            dirs.append(top)
            dirs.extend(Path(root) / d for root, names, _ in os.walk(top) for d in names)
    return dirs


def _check_writable(out_dir: Path, shown) -> None:
    for directory in _written_dirs(out_dir):
        problem = _writable_problem(directory)
        if problem is not None:
            where = "" if directory == out_dir else f": {str(directory)!r}"
            raise ConfigError(f"out_dir={str(shown)!r}{where} is not writable ({problem}); "
                              "make it writable (chmod u+w) or use another out_dir")


# ============================================================================ the hold
class OutDirHold:
    """This process's hold on an out_dir: the OS lock, the pid file, and what taking it created.

    ``path``: out_dir as given. After `acquire`, ``created_dirs`` are the directories this
    process made for it (top-down) and ``lock.created`` whether it made the lock file.
    """

    def __init__(self, out_dir) -> None:
        self.path = Path(out_dir)
        self.abs = self.path.absolute()
        self.created_dirs: List[Path] = []
        self.lock: Optional[HeldLock] = None
        self._entries: set = set()
        self._stamps: Dict[str, tuple] = {}
        self._logs: Dict[str, int] = {}

    @property
    def held(self) -> bool:
        return self.lock is not None and self.lock.held

    def acquire(self) -> "OutDirHold":
        """Take the hold; ConfigError (having removed what it made) when out_dir cannot be one or is in use."""
        check_out_dir_path(self.path)
        for _ in range(100):
            self._make_dirs()
            try:
                self.lock = try_lock(self.abs / RUN_LOCK)
                break
            except FileNotFoundError:
                continue  # a run that held out_dir removed it (undo) in between: make it again
            except LockHeldError:
                pid = _holder_pid(self.abs / RUN_PID)
                self._remove_created_dirs()
                holder = f"pid {pid}" if pid is not None else "pid unknown"
                raise ConfigError(
                    f"out_dir={str(self.path)!r} is in use by another betaedit-run process ({holder}); "
                    "wait for it to finish or use another out_dir"
                ) from None
            except OSError as exc:
                self._remove_created_dirs()
                raise ConfigError(f"out_dir={str(self.path)!r} is not writable ({type(exc).__name__}: "
                                  f"{exc.strerror or exc}); make it writable or use another out_dir") from None
        else:
            raise ConfigError(f"out_dir={str(self.path)!r} keeps disappearing while this run takes it; "
                              "use another out_dir")
        # out_dir as it is now, with the hold taken: what `release(undo=True)` puts back
        self._entries = set(os.listdir(self.abs)) - ({RUN_LOCK} if self.lock.created else set())
        self._logs = {p.name: p.stat().st_size for p in self.abs.glob("*.log") if p.is_file()}
        try:
            _check_writable(self.abs, self.path)
            atomic_write_text(self.abs / RUN_PID, f"{os.getpid()}\n")
        except BaseException:
            self.release(undo=True)
            raise
        # after the writability checks (they write and remove a file in each subdirectory)
        self._stamps = {name: _stamp(self.abs / name) for name in self._entries - {RUN_PID, RUN_LOCK}
                        if not name.endswith(".log")}
        return self

    def _make_dirs(self) -> None:
        missing = []
        for part in [self.abs, *self.abs.parents]:
            if part.is_dir():
                break
            missing.append(part)
        for part in reversed(missing):
            try:
                os.mkdir(part)
            except FileExistsError:
                if not part.is_dir():
                    self._remove_created_dirs()
                    check_out_dir_path(self.path)  # names what is there now
                    raise
                continue
            except OSError as exc:
                self._remove_created_dirs()
                raise ConfigError(f"out_dir={str(self.path)!r}: cannot create {str(part)!r} ({type(exc).__name__}: "
                                  f"{exc.strerror or exc}); make its parent writable or use another out_dir") from None
            self.created_dirs.append(part)

    def _remove_created_dirs(self) -> None:
        """The directories this process created, deepest first, while they are empty (an out_dir
        another run holds has its lock file in it, and so stays)."""
        for part in reversed(self.created_dirs):
            try:
                part.rmdir()
            except OSError:
                break
        self.created_dirs = []

    def _new_entries(self) -> set:
        """What has appeared in out_dir since the hold was taken (but the hold's own files)."""
        own = {RUN_PID} | ({RUN_LOCK} if self.lock is not None and self.lock.created else set())
        try:
            return set(os.listdir(self.abs)) - self._entries - own
        except OSError:
            return set()

    def release(self, undo: bool = False) -> None:
        """Let go of out_dir (the pid file goes, the lock file stays); does nothing once released.

        ``undo``, or nothing at all written since the hold was taken: first put out_dir back as it
        was (see the module), unless the run wrote anything but logs there: then it all stays, its
        logs with it."""
        if not self.held:
            return
        new = self._new_entries()
        # anything but logs new or changed (a resumed run adds no name: it rewrites results.json and
        # adds journal chunks and checkpoints inside existing folders): the results stay, their log with them
        written = any(not name.endswith(".log") for name in new) or any(
            _stamp(self.abs / name) != stamp for name, stamp in self._stamps.items())
        logged = bool(new) or any(_size(self.abs / name) != size for name, size in self._logs.items())
        undo = not written and (undo or not logged)
        if undo:
            for name in new:
                with contextlib.suppress(OSError):
                    (self.abs / name).unlink()
            for name, size in self._logs.items():
                log = self.abs / name
                with contextlib.suppress(OSError):
                    if log.stat().st_size > size:
                        os.truncate(log, size)
        with contextlib.suppress(OSError):
            (self.abs / RUN_PID).unlink()
        self.lock.release(remove=undo and self.lock.created)
        if undo:
            self._remove_created_dirs()
        self.created_dirs = []


def _stamp(path: Path) -> tuple:
    """What tells a rewritten entry from the one there before (an atomic write is a new inode)."""
    try:
        st = path.lstat()
    except OSError:
        return ()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _holder_pid(pid_file: Path, wait_s: float = 2.0) -> Optional[int]:
    """The pid of the live process in ``pid_file``; a holder that has just taken the lock writes it
    a moment later, so a missing or dead one is waited for up to ``wait_s`` (then it is what is there)."""
    deadline = time.monotonic() + wait_s
    while True:
        pid = read_pid(pid_file)
        if (pid is not None and _alive(pid)) or time.monotonic() > deadline:
            return pid
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill would end the process there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's)
    return True


def _key(out_dir) -> str:
    return os.path.realpath(Path(out_dir).absolute())


def held_out_dir(out_dir) -> Optional[OutDirHold]:
    """This process's hold on ``out_dir`` (any spelling of it), or None."""
    hold = _HELD.get(_key(out_dir))
    return hold if hold is not None and hold.held else None


@contextlib.contextmanager
def hold_out_dir(out_dir) -> Iterator[OutDirHold]:
    """Hold ``out_dir`` for the block (`OutDirHold`); a hold this process has already is reused.

    A `BetaEditError` leaving the block releases with ``undo=True``; anything else releases plainly.

    Raises:
        ConfigError: out_dir is in use by another live process (its pid named), cannot be a
            directory, or is not writable.
    """
    existing = held_out_dir(out_dir)
    if existing is not None:
        yield existing
        return
    hold = OutDirHold(out_dir).acquire()
    key = _key(out_dir)
    _HELD[key] = hold
    try:
        yield hold
    except BetaEditError:
        hold.release(undo=True)
        raise
    finally:
        hold.release()
        if _HELD.get(key) is hold:
            del _HELD[key]


def remove_stale_temporaries(out_dir) -> int:
    """Remove what writes killed midway left in out_dir (call with out_dir held): `atomic_write`'s
    temporary files in out_dir and under its `WRITTEN_SUBDIRS`, write probes, and unfinished
    checkpoint directories (``checkpoints/step-<t>.tmp``). Returns how many were removed."""
    out_dir = Path(out_dir)
    found = [p for p in out_dir.iterdir() if p.is_file() and _stale_name(p.name)] if out_dir.is_dir() else []
    for sub in WRITTEN_SUBDIRS:
        for root, dirs, files in os.walk(out_dir / sub):
            found.extend(Path(root) / f for f in files if _stale_name(f))
            if Path(root) == out_dir / "checkpoints":
                found.extend(Path(root) / d for d in dirs if _STALE_CHECKPOINT.match(d))
                dirs[:] = [d for d in dirs if not _STALE_CHECKPOINT.match(d)]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if found:
        logger.warning("removed %d temporary file(s) left by an interrupted run in %s: %s", len(found), out_dir,
                       ", ".join(str(p.relative_to(out_dir)) for p in found[:5]) + (" ..." if len(found) > 5 else ""))
    return len(found)


def _stale_name(name: str) -> bool:
    return bool(TEMPORARY_NAME.match(name)) or name.startswith(_PROBE_PREFIX)
