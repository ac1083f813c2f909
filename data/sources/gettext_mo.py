"""gettext message catalogs (``*/de/LC_MESSAGES/*.mo``) from binary Debian packages.

The ``.mo`` format: a magic number, a revision, the string count N and two tables of
(length, offset) entries for the original and translated strings. Fuzzy entries are not
compiled into ``.mo`` files. Group key (for splits): ``package:catalog``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path

from data.errors import DataError

_MAGIC_LE = 0x950412DE
_ACCEL = re.compile(r"(?<!\w)_(?=\w)|&(?=\w)")


def parse_mo(blob: bytes, name: str = "<bytes>") -> list[tuple[str, str]]:
    """Return (msgid, msgstr) pairs: singular forms, context stripped, untranslated dropped."""
    if len(blob) < 20:
        raise DataError(f"{name}: not a .mo file ({len(blob)} bytes)")
    (magic,) = struct.unpack("<I", blob[:4])
    endian = "<" if magic == _MAGIC_LE else ">"
    if struct.unpack(endian + "I", blob[:4])[0] != _MAGIC_LE:
        raise DataError(f"{name}: not a .mo file (magic {blob[:4].hex()})")
    _, count, orig_off, trans_off = struct.unpack(endian + "4I", blob[4:20])

    def entry(table: int, i: int) -> bytes:
        length, offset = struct.unpack(endian + "2I", blob[table + 8 * i : table + 8 * i + 8])
        return blob[offset : offset + length]

    pairs: list[tuple[str, str]] = []
    for i in range(count):
        msgid = entry(orig_off, i).split(b"\x00")[0].split(b"\x04")[-1]
        msgstr = entry(trans_off, i).split(b"\x00")[0]
        if not msgid or not msgstr or msgid == msgstr:
            continue
        pairs.append((msgid.decode("utf-8", "replace"), msgstr.decode("utf-8", "replace")))
    return pairs


def strip_accelerators(text: str) -> str:
    """Remove keyboard accelerator marks (``_File``, ``&Open``)."""
    return _ACCEL.sub("", text)


def harvest(extracted_root: Path, package: str) -> Iterator[tuple[str, str, str]]:
    """Yield (``package:catalog``, en, de) pairs from every German catalog under a folder."""
    for mo in sorted(extracted_root.rglob("de/LC_MESSAGES/*.mo")):
        group = f"{package}:{mo.stem}"
        for en, de in parse_mo(mo.read_bytes(), str(mo)):
            yield group, strip_accelerators(en), strip_accelerators(de)
