"""Atomic file writes: write a temp file in the target folder, fsync, then ``os.replace``.

Readers never see a half-written file: either the old content or the complete new content.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from data.errors import DataError

# mkstemp creates files with mode 0600; give the final file the permissions a plain open() would.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _check_parent(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DataError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist")
    return parent


def _fsync_dir(folder: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable (POSIX only)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: Literal["w", "wb"] = "w",
    encoding: str | None = "utf-8",
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing atomically.

    Yields a file object on a temp file in the same folder. On normal exit the data is flushed,
    fsynced and the temp file is renamed over ``path``; on an exception the temp file is deleted
    and ``path`` is left untouched.

    Raises:
        DataError: the parent folder does not exist.
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    parent = _check_parent(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        if mode == "wb":
            fh: IO[Any] = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline="")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Atomically replace ``path`` with ``text`` (written verbatim, no newline translation)."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)


def write_json_result(path: str | os.PathLike[str], doc: object) -> None:
    """A result file: ``doc`` as indented JSON with a final newline, written atomically to
    ``path`` (its folder created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
