"""Parallel-corpus loading (Hugging Face ``datasets``); filtering is :mod:`data.filtering`.

A *pair list* is ``list[tuple[str, str]]`` of (source, target) sentences; the direction is chosen
by the ``src_lang``/``tgt_lang`` arguments, so one ``en``/``de`` file serves both en->de and de->en.

Supported local formats (optionally ``.gz``): ``.tsv`` (header line with language codes as column
names, e.g. ``en<TAB>de``; no quoting), ``.jsonl``/``.json`` and ``.parquet`` (columns named by
language code, or a wmt-style ``translation`` column of ``{lang: text}`` dicts).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.errors import DataError

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
BAD_UTF8_MODES = ("error", "replace")
_FORMATS = {".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _check_mode(on_bad_utf8: str) -> None:
    if on_bad_utf8 not in BAD_UTF8_MODES:
        raise DataError(f"on_bad_utf8={on_bad_utf8!r} is not one of {list(BAD_UTF8_MODES)}")


def _check_file(path: Path) -> None:
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"corpus file {str(path)!r} {what}")


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 (caller closes)


def _format_of(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt
    raise DataError(
        f"corpus file {str(path)!r}: unknown extension; expected one of "
        f"{sorted(_FORMATS)} (optionally + '.gz')"
    )


def _decode_lines(path: Path, on_bad_utf8: str) -> Iterator[tuple[int, str, bool]]:
    """Yield ``(line_number, text, had_bad_bytes)`` for each line (1-based, without newline).

    Raises:
        DataError: invalid UTF-8 with ``on_bad_utf8="error"`` (names file, line and byte offset);
            unreadable gzip data.
    """
    try:
        with _open_binary(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                raw = raw.rstrip(b"\r\n")
                try:
                    yield lineno, raw.decode("utf-8"), False
                except UnicodeDecodeError as err:
                    if on_bad_utf8 == "error":
                        raise DataError(
                            f"{str(path)!r} line {lineno}: invalid UTF-8 byte "
                            f"0x{raw[err.start]:02x} at column {err.start + 1} "
                            f"(set on_bad_utf8=replace to replace such bytes)"
                        ) from None
                    yield lineno, raw.decode("utf-8", errors="replace"), True
    except (OSError, EOFError) as err:  # corrupt/truncated gzip, permission denied...
        raise DataError(f"cannot read {str(path)!r}: {err}") from None


def _validate_tsv(
    path: Path, src_lang: str, tgt_lang: str, on_bad_utf8: str
) -> tuple[list[str], int]:
    """Check UTF-8, the header and the field count of every line of a TSV file.

    Returns:
        ``(header_columns, number_of_lines_with_replaced_bytes)``.
    """
    columns: list[str] = []
    n_bad = 0
    for lineno, text, bad in _decode_lines(path, on_bad_utf8):
        n_bad += bad
        if lineno == 1:
            columns = text.split("\t")
            missing = [lang for lang in (src_lang, tgt_lang) if lang not in columns]
            if missing:
                raise DataError(
                    f"{str(path)!r} line 1: header columns {columns} lack language(s) {missing} "
                    f"(the first line must name the columns, e.g. '{src_lang}<TAB>{tgt_lang}')"
                )
            if len(set(columns)) != len(columns):
                raise DataError(f"{str(path)!r} line 1: duplicate header columns {columns}")
        if "\r" in text:
            raise DataError(
                f"{str(path)!r} line {lineno}: carriage return (\\r) inside the line at column "
                f"{text.index(chr(13)) + 1} (TSV readers would split the line there)"
            )
        if lineno > 1 and text and text.count("\t") != len(columns) - 1:
            raise DataError(
                f"{str(path)!r} line {lineno}: expected {len(columns)} tab-separated fields "
                f"({columns}), found {text.count(chr(9)) + 1}"
            )
    if not columns:
        raise DataError(f"corpus file {str(path)!r} is empty (no header line)")
    return columns, n_bad


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Temporarily put ``datasets`` into offline mode (local files never need the hub)."""
    import datasets

    old = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = old


@contextlib.contextmanager
def _datasets_quiet() -> Iterator[None]:
    """Silence ``datasets``' own error logging (our DataError carries the cause, one line)."""
    from datasets.utils import logging as ds_logging

    old = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL + 10)
    try:
        yield
    finally:
        ds_logging.set_verbosity(old)


def _root_cause(err: BaseException) -> BaseException:
    seen = {id(err)}
    while (nxt := err.__cause__ or err.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        err = nxt
    return err


def _columns_to_pairs(
    columns: dict[str, list[Any]], where: str, src_lang: str, tgt_lang: str
) -> list[Pair]:
    """Turn a column dict (language columns or a ``translation`` column) into pairs."""
    if src_lang in columns and tgt_lang in columns:
        src_col, tgt_col = columns[src_lang], columns[tgt_lang]
    elif "translation" in columns:
        rows = columns["translation"]
        try:
            src_col = [row[src_lang] for row in rows]
            tgt_col = [row[tgt_lang] for row in rows]
        except (KeyError, TypeError):
            keys = sorted(rows[0]) if rows and isinstance(rows[0], dict) else rows[:1]
            raise DataError(
                f"{where}: 'translation' entries have keys {keys}, need {src_lang!r} and "
                f"{tgt_lang!r}"
            ) from None
    else:
        raise DataError(
            f"{where}: columns {sorted(columns)} contain neither {src_lang!r} and {tgt_lang!r} "
            f"nor a 'translation' column"
        )
    return [(_clean(s), _clean(t)) for s, t in zip(src_col, tgt_col, strict=True)]


def _clean(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _dataset_to_columns(ds: Any) -> dict[str, list[Any]]:
    return {name: ds.data.column(name).to_pylist() for name in ds.column_names}


def load_split_counted(
    path: str | os.PathLike[str],
    src_lang: str,
    tgt_lang: str,
    on_bad_utf8: str = "error",
    cache_dir: str | None = None,
) -> tuple[list[Pair], int]:
    """Like :func:`load_split`, but also return the number of lines whose bytes were replaced."""
    _check_mode(on_bad_utf8)
    if src_lang == tgt_lang:
        raise DataError(f"src_lang and tgt_lang are both {src_lang!r}")
    file = Path(path).expanduser()
    _check_file(file)
    fmt = _format_of(file)
    import datasets

    datasets.disable_progress_bars()
    kwargs: dict[str, Any] = {}
    n_bad = 0
    if fmt == "csv":
        header, n_bad = _validate_tsv(file, src_lang, tgt_lang, on_bad_utf8)
        kwargs = {
            # read every column as text ("007" stays "007", "NA" stays "NA")
            "features": datasets.Features({c: datasets.Value("string") for c in header}),
            "delimiter": "\t",
            "quoting": csv.QUOTE_NONE,
            "keep_default_na": False,
            "na_filter": False,
            "encoding_errors": "replace" if n_bad else "strict",
        }
    elif fmt == "json":
        n_bad = sum(bad for _, _, bad in _decode_lines(file, on_bad_utf8))
        if n_bad:
            raise DataError(
                f"{str(file)!r}: {n_bad} lines have invalid UTF-8; replacing is only supported "
                f"for TSV and plain-text files"
            )
    try:
        with _hub_offline(), _datasets_quiet():
            ds = datasets.load_dataset(
                fmt, data_files=str(file), split="train", cache_dir=cache_dir, **kwargs
            )
    except Exception as err:  # datasets/pyarrow/pandas raise many types; keep one line
        cause = _root_cause(err)  # e.g. pyarrow's parse error behind DatasetGenerationError
        raise DataError(
            f"cannot load {str(file)!r} as {fmt}: {type(cause).__name__}: {_first_line(cause)}"
        ) from None
    pairs = _columns_to_pairs(_dataset_to_columns(ds), repr(str(file)), src_lang, tgt_lang)
    if n_bad:
        logger.warning("%s: replaced invalid UTF-8 bytes on %d lines", file, n_bad)
    return pairs, n_bad


def load_split(
    path: str | os.PathLike[str],
    src_lang: str,
    tgt_lang: str,
    on_bad_utf8: str = "error",
    cache_dir: str | None = None,
) -> list[Pair]:
    """Load one split of a parallel corpus file as (source, target) pairs.

    Args:
        path: ``.tsv``/``.jsonl``/``.json`` (each optionally ``.gz``) or ``.parquet`` file.
        src_lang, tgt_lang: column names (language codes) of source and target.
        on_bad_utf8: ``"error"`` (DataError naming file and line) or ``"replace"`` (U+FFFD;
            the count is logged, use :func:`load_split_counted` to get it).
        cache_dir: ``datasets`` cache folder (default: the Hugging Face default).

    Raises:
        DataError: missing file, unknown extension, bad header/field count, invalid UTF-8...
    """
    return load_split_counted(path, src_lang, tgt_lang, on_bad_utf8, cache_dir)[0]


def load_hub(
    name: str,
    config: str | None,
    split: str,
    src_lang: str,
    tgt_lang: str,
    cache_dir: str | None = None,
) -> list[Pair]:
    """Load a Hugging Face hub dataset split (e.g. ``wmt16``/``de-en``/``train``) as pairs.

    Raises:
        DataError: hub unreachable/offline, unknown dataset, config or split, missing columns.
    """
    import datasets

    datasets.disable_progress_bars()
    where = f"hub dataset {name!r} (config {config!r}, split {split!r})"
    try:
        ds = datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except ConnectionError as err:
        offline = " (offline mode is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise DataError(
            f"{where} cannot be loaded: the Hugging Face hub cannot be reached{offline} and the "
            f"dataset is not cached; use local files (data.source=files) instead "
            f"[{type(err).__name__}: {_first_line(err)}]"
        ) from None
    except Exception as err:  # DatasetNotFoundError, ValueError for bad config/split, ...
        raise DataError(
            f"{where} cannot be loaded (unknown name, config or split?): "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from None
    return _columns_to_pairs(_dataset_to_columns(ds), where, src_lang, tgt_lang)


def _read_text_lines(path: Path, on_bad_utf8: str) -> tuple[list[str], int]:
    _check_file(path)
    lines: list[str] = []
    n_bad = 0
    for _, text, bad in _decode_lines(path, on_bad_utf8):
        lines.append(text.strip())
        n_bad += bad
    return lines, n_bad


def load_text_pair(
    src_path: str | os.PathLike[str],
    tgt_path: str | os.PathLike[str],
    on_bad_utf8: str = "error",
) -> tuple[list[Pair], int]:
    """Load two line-aligned plain-text files (optionally ``.gz``).

    Returns:
        ``(pairs, n_replaced)`` where ``n_replaced`` counts lines (over both files) whose
        invalid UTF-8 bytes were replaced by U+FFFD (always 0 with ``on_bad_utf8="error"``).

    Raises:
        DataError: missing file, different line counts (names both files and counts),
            invalid UTF-8 with ``on_bad_utf8="error"`` (names file and line).
    """
    _check_mode(on_bad_utf8)
    src_file, tgt_file = Path(src_path).expanduser(), Path(tgt_path).expanduser()
    src_lines, src_bad = _read_text_lines(src_file, on_bad_utf8)
    tgt_lines, tgt_bad = _read_text_lines(tgt_file, on_bad_utf8)
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"line counts differ: {str(src_file)!r} has {len(src_lines)} lines, "
            f"{str(tgt_file)!r} has {len(tgt_lines)}"
        )
    if src_bad + tgt_bad:
        logger.warning(
            "replaced invalid UTF-8 bytes on %d lines of %s and %d lines of %s",
            src_bad,
            src_file,
            tgt_bad,
            tgt_file,
        )
    return list(zip(src_lines, tgt_lines, strict=True)), src_bad + tgt_bad
