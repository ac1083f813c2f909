"""The files ``nmt-translate`` reads and writes: one sentence per line, UTF-8.

Input is read in chunks of :data:`CHUNK_LINES` lines (flat memory), split on ``\\n`` only; bad
UTF-8 is a user error naming ``file:line`` (or replaced, ``data.on_bad_utf8=replace``). Output
files are written atomically: on any error the old file stays. ``-`` is stdin / stdout. Bad
paths (a missing input, a missing output folder, the input as output) are checked before any
work, each a one-line :class:`nmt.errors.UserError`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from data.atomic import atomic_open
from nmt.errors import UserError

CHUNK_LINES = 2000  # lines read, translated and written at a time (flat memory)


def input_chunks(stream: IO[bytes], name: str, on_bad_utf8: str) -> Iterator[list[str]]:
    """Yield chunks of decoded lines (without newline), naming file:line on bad UTF-8."""
    chunk: list[str] = []
    for number, raw in enumerate(_raw_lines(stream, name), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if on_bad_utf8 != "replace":
                raise UserError(
                    f"{name}:{number}: invalid UTF-8 ({err.reason} at byte {err.start})"
                ) from None
            line = raw.decode("utf-8", errors="replace")
        chunk.append(line.rstrip("\r\n"))
        if len(chunk) == CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _raw_lines(stream: IO[bytes], name: str) -> Iterator[bytes]:
    """The lines of ``stream`` (split on ``\\n`` only); a read failure is a user error."""
    lines = iter(stream)
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except OSError as err:
            raise UserError(f"cannot read input {name}: {err.strerror or err}") from None
        yield raw


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output(path: str, input_path: str) -> Path:
    """The output file's path; a folder, a missing folder or the input file is a user error."""
    out = Path(path).expanduser()
    if input_path != "-" and _same_file(out, Path(input_path).expanduser()):
        raise UserError(f"output={path} is the input file; choose another output path")
    if out.is_dir():
        raise UserError(f"output={path} is a folder; give a file path")
    if not out.parent.is_dir():
        what = "is not a folder" if out.parent.exists() else "does not exist"
        raise UserError(f"output folder {out.parent} {what}")
    return out


def check_input(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise UserError(f"input file {path} {what}")
    return p


@contextmanager
def open_output(path: str, input_path: str) -> Iterator[IO[str]]:
    """The output stream; a file is written atomically (on any error the old file stays)."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    out = check_output(path, input_path)
    try:
        with atomic_open(out, "w") as fh:
            yield fh
    except OSError as err:  # disk full, quota, I/O error: the old output file is untouched
        raise UserError(f"cannot write output {path}: {err.strerror or err}") from None


@contextmanager
def open_input(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    with check_input(path).open("rb") as fh:
        yield fh


def count_lines(path: str) -> int | None:
    if path == "-":
        return None
    with open(os.path.expanduser(path), "rb") as f:
        return sum(1 for _ in f)
