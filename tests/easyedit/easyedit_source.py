"""Resolve EASYEDIT_SRC to the directory that holds ``easyeditor/`` (for PYTHONPATH); used by ``make test-easyedit``.

    python tests/easyedit/easyedit_source.py SRC BUILD_DIR

SRC is an EasyEdit checkout (``git clone https://github.com/zjunlp/EasyEdit``), any directory with
``easyeditor/`` in it or one level down, or an archive of one (.tar.gz, .tgz, .tar, .zip), such as
the vendored ``../shared/vendor/EasyEdit-14cea82.tar.gz``. An archive is unpacked once into
BUILD_DIR/<archive name>/ (again when the archive changes). Prints the directory; exits with status
2 and says how to get EasyEdit when SRC is missing or holds no ``easyeditor`` package.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HOW_TO_GET = (
    "Point EASYEDIT_SRC at an EasyEdit checkout or an archive of one, for example:\n"
    "    git clone https://github.com/zjunlp/EasyEdit ../EasyEdit\n"
    "    make test-easyedit EASYEDIT_SRC=../EasyEdit\n"
    "(the default is the vendored archive ../shared/vendor/EasyEdit-14cea82.tar.gz)"
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class SourceError(Exception):
    pass


def _package_root(directory: Path) -> Path:
    """``directory`` or its only child that holds ``easyeditor/__init__.py``."""
    candidates = [directory] + sorted(p for p in directory.iterdir() if p.is_dir())
    for candidate in candidates:
        if (candidate / "easyeditor" / "__init__.py").is_file():
            return candidate.resolve()
    raise SourceError(f"{directory} holds no easyeditor/ package (looked in it and one level down).")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unpack(archive: Path, build_dir: Path) -> Path:
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    target = build_dir / name
    marker = target / ".unpacked-from"
    digest = _sha256(archive)
    if marker.is_file() and marker.read_text().split()[0] == digest:
        return _package_root(target)
    build_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=build_dir))
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
        (tmp / ".unpacked-from").write_text(f"{digest} {archive.resolve()}\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _package_root(target)


def resolve(src: str, build_dir: str) -> Path:
    path = Path(src).expanduser()
    if path.is_dir():
        return _package_root(path)
    if path.is_file():
        if not path.name.endswith(ARCHIVE_SUFFIXES):
            raise SourceError(f"{path} is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)}).")
        try:
            return _unpack(path, Path(build_dir))
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
            raise SourceError(f"{path} could not be unpacked ({type(exc).__name__}: {exc}).") from None
    raise SourceError(f"no EasyEdit source at {src!r} (resolved from {Path.cwd()}).")


def main(argv: list) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(resolve(argv[0], argv[1]))
    except SourceError as exc:
        print(f"make test-easyedit: {exc}\n{HOW_TO_GET}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
