"""File helpers shared by every cache, state and checkpoint writer.

- `atomic_write`: temp file beside the target, fsync, ``os.replace``; the file gets the mode a
  plain ``open()`` would give it (0o666 minus the umask), so caches can be shared.
- `write_tensors` / `read_tensors` / `read_metadata`: safetensors files *sealed* with a sha256
  of every tensor (dtype, shape and bytes) and of every metadata field, stored in the file's own
  metadata under ``"integrity"``. Reading verifies them and raises `IntegrityError` naming the
  file and the tensor or field that does not match.
- `wait_for_lock` (one process computes, others wait) on ``filelock``'s OS locks, and
  `try_lock` / `exclusive_lock` (a second process is refused and told the holder's pid) on
  ``flock``: the OS releases them when the holder dies, so a stale lock file never blocks.
  `try_lock` checks after locking that the file it locked is still the one at the path, so its
  holder may remove the lock file on release (`HeldLock.release(remove=True)`) without a process
  that opened the old file holding the lock at the same time as one that made a new file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

from .errors import IntegrityError, LockHeldError, UnsealedFileError  # raised here; defined with the others

try:
    import fcntl
except ImportError:  # Windows: filelock's lock, and a lock file is never removed
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = [
    "sha256_file",
    "atomic_write",
    "atomic_write_text",
    "IntegrityError",
    "UnsealedFileError",
    "tensor_sha256",
    "write_tensors",
    "read_tensors",
    "read_metadata",
    "LockHeldError",
    "HeldLock",
    "read_pid",
    "try_lock",
    "wait_for_lock",
    "exclusive_lock",
    "TEMPORARY_NAME",
]

INTEGRITY_KEY = "integrity"
INTEGRITY_SCHEME = "sha256-per-tensor/1"

PathLike = Union[str, Path]


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


_TMP_SUFFIX = ".tmp"
#: the name of an `atomic_write` temporary file (``.<name>.<8 random characters>.tmp``, ``mkstemp``'s
#: alphabet): what a process killed while writing leaves behind
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then ``os.replace`` it.

    A reader sees either the old file or the complete new one, never a partial
    write; the temp file is removed if ``write`` fails. The file gets mode
    0o666 minus the umask (``mkstemp`` alone would leave it 0o600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=str(path.parent))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------- sealed safetensors files
def tensor_sha256(tensor) -> str:
    """Hex sha256 of a tensor's dtype, shape and raw bytes (as safetensors stores them)."""
    import torch

    t = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{str(t.dtype).replace('torch.', '')}|{tuple(t.shape)}|".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _field_sha256(name: str, value: str) -> str:
    return hashlib.sha256(f"{name}\0{value}".encode()).hexdigest()


def write_tensors(path: PathLike, tensors: Mapping, metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Atomically write ``tensors`` (CPU, contiguous, no shared storage) + string ``metadata`` as safetensors,
    sealed with the sha256 of every tensor and every metadata field."""
    from safetensors.torch import save_file

    metadata = dict(metadata or {})
    if INTEGRITY_KEY in metadata:
        raise ValueError(f"metadata key {INTEGRITY_KEY!r} is reserved for the file's digests")
    flat = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    record = {
        "scheme": INTEGRITY_SCHEME,
        "tensors": {name: tensor_sha256(t) for name, t in flat.items()},
        "metadata": {name: _field_sha256(name, value) for name, value in metadata.items()},
    }
    sealed = {**metadata, INTEGRITY_KEY: json.dumps(record, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=sealed))


def _verified_metadata(path: PathLike, raw: Mapping[str, str], allow_unsealed: bool) -> Tuple[Dict[str, str], Optional[dict]]:
    """(metadata without the seal, the tensor digests or None for an allowed unsealed file)."""
    meta = {k: v for k, v in raw.items() if k != INTEGRITY_KEY}
    if INTEGRITY_KEY not in raw:
        if allow_unsealed:
            return meta, None
        raise UnsealedFileError(path, "it has no content digests (written by an older version), so its content cannot be verified")
    try:
        record = json.loads(raw[INTEGRITY_KEY])
        scheme, tensors, fields = record["scheme"], record["tensors"], record["metadata"]
        if not isinstance(tensors, dict) or not isinstance(fields, dict):
            raise TypeError("digest tables are not mappings")
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(path, f"its integrity record is corrupt ({type(exc).__name__}: {exc})") from None
    if scheme != INTEGRITY_SCHEME:
        raise IntegrityError(path, f"integrity scheme {scheme!r} is not {INTEGRITY_SCHEME!r} (corrupt, or written by a newer version)")
    for name in sorted(set(fields) | set(meta)):
        if name not in meta:
            raise IntegrityError(path, f"metadata field {name!r} is missing")
        if name not in fields:
            raise IntegrityError(path, f"metadata field {name!r} was added after the file was written")
        if _field_sha256(name, meta[name]) != fields[name]:
            raise IntegrityError(path, f"metadata field {name!r} does not match the sha256 stored with it (corrupt or edited)")
    return meta, tensors


def _open(path: PathLike):
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise IntegrityError(path, f"not a readable safetensors file ({type(exc).__name__}: {exc})") from None


def read_metadata(path: PathLike, *, allow_unsealed: bool = False) -> Dict[str, str]:
    """The metadata of a `write_tensors` file, every field verified (the tensors are not read).

    Raises:
        FileNotFoundError: no such file.
        IntegrityError: unreadable, or a field that does not match its digest.
        UnsealedFileError: no digests at all, unless ``allow_unsealed``.
    """
    with _open(path) as f:
        raw = f.metadata() or {}
    return _verified_metadata(path, raw, allow_unsealed)[0]


def read_tensors(path: PathLike, *, allow_unsealed: bool = False) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """(tensors on CPU, metadata) of a `write_tensors` file, every tensor and field verified.

    ``allow_unsealed`` accepts a file without digests (read unverified). Raises as `read_metadata`,
    and `IntegrityError` naming the first tensor whose bytes, dtype or shape do not match.
    """
    try:
        with _open(path) as f:
            meta, digests = _verified_metadata(path, f.metadata() or {}, allow_unsealed)
            names = list(f.keys())
            if digests is not None and set(names) != set(digests):
                extra, missing = sorted(set(names) - set(digests)), sorted(set(digests) - set(names))
                raise IntegrityError(path, f"its tensors differ from those it was written with (missing {missing}, unexpected {extra})")
            tensors = {}
            for name in names:
                tensors[name] = f.get_tensor(name)
                if digests is not None and tensor_sha256(tensors[name]) != digests[name]:
                    raise IntegrityError(path, f"tensor {name!r} does not match the sha256 stored with it (corrupt or modified)")
    except (IntegrityError, FileNotFoundError):
        raise
    except Exception as exc:  # a header that parses but whose data does not (truncated file, bad offsets)
        raise IntegrityError(path, f"not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return tensors, meta


# ---------------------------------------------------------------- locks between processes
@contextlib.contextmanager
def wait_for_lock(lock_path: PathLike, what: str) -> Iterator[None]:
    """Hold the OS lock ``lock_path``, waiting (and logging once) while another process holds it.

    ``what``: what the holder is doing, for the log (e.g. "computes C0 of layer 4").
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("waiting for another process that %s (lock file %s)", what, lock_path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class HeldLock:
    """An OS lock this process holds on ``path`` (`try_lock`); ``created``: this process made the file."""

    def __init__(self, path: Path, created: bool, fd: Optional[int] = None, fallback: Any = None) -> None:
        self.path, self.created = path, created
        self._fd, self._fallback = fd, fallback

    @property
    def held(self) -> bool:
        return self._fd is not None or self._fallback is not None

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; ``remove`` first deletes the lock file (while still holding it, and
        only if it is still the file this process locked). Does nothing once released."""
        if self._fd is not None:
            if remove and _same_file(self.path, self._fd):
                with contextlib.suppress(OSError):
                    self.path.unlink()
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif self._fallback is not None:
            self._fallback.release()
            self._fallback = None


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` names the file open as ``fd`` (not removed, not replaced by another)."""
    try:
        there, mine = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


def try_lock(lock_path: PathLike) -> HeldLock:
    """Take the OS lock ``lock_path`` (the file is made if missing) now, never waiting.

    On POSIX the lock is ``flock`` on the file, and after locking the file is checked to be still
    the one at ``lock_path``: a holder that removed it on release leaves a process that opened
    the old file to try again, on the new one.

    Raises:
        LockHeldError: another live process holds it (pid unknown here).
        OSError: the file cannot be made or opened (e.g. PermissionError; FileNotFoundError when
            its directory does not exist).
    """
    lock_path = Path(lock_path)
    if fcntl is None:
        from filelock import FileLock, Timeout

        created = not lock_path.exists()
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise LockHeldError(lock_path, None) from None
        return HeldLock(lock_path, created, fallback=lock)
    for _ in range(1000):
        try:
            fd, created = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            try:
                fd, created = os.open(lock_path, os.O_RDONLY), False
            except FileNotFoundError:
                continue  # removed by its holder in between
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeldError(lock_path, None) from None
            raise
        if _same_file(lock_path, fd):
            return HeldLock(lock_path, created, fd)
        os.close(fd)  # we locked a file its holder removed on release: try the one there now
    raise LockHeldError(lock_path, None)


def read_pid(pid_path: PathLike) -> Optional[int]:
    """The pid in ``pid_path`` (None if missing or not a number)."""
    try:
        return int(Path(pid_path).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def exclusive_lock(lock_path: PathLike, pid_path: PathLike) -> Iterator[None]:
    """Hold the OS lock ``lock_path`` (`try_lock`) with this process's pid in ``pid_path``; never wait.

    Raises:
        LockHeldError: another live process holds it (its pid read from ``pid_path``).
    """
    lock_path, pid_path = Path(lock_path), Path(pid_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = try_lock(lock_path)
    except LockHeldError:
        raise LockHeldError(lock_path, read_pid(pid_path)) from None
    try:
        atomic_write_text(pid_path, f"{os.getpid()}\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            pid_path.unlink()
        lock.release()
