"""Sentence-pair filtering: :func:`filter_pairs` and its per-reason :class:`FilterStats`.

Works on the pair lists that :mod:`data.corpus` loads (``list[tuple[str, str]]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from data.corpus import Pair
from data.errors import DataError


@dataclass
class FilterStats:
    """How many pairs :func:`filter_pairs` saw, kept, and removed per reason."""

    total: int = 0
    kept: int = 0
    empty: int = 0
    too_short: int = 0
    too_long: int = 0
    ratio: int = 0
    identical: int = 0
    duplicate: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        reasons = ", ".join(
            f"{k}={v}" for k, v in self.as_dict().items() if k not in ("total", "kept")
        )
        return f"kept {self.kept}/{self.total} pairs (removed: {reasons})"


def whitespace_length(text: str) -> int:
    """Length of ``text`` in whitespace-separated tokens."""
    return len(text.split())


def filter_pairs(
    pairs: Sequence[Pair],
    min_len: int = 1,
    max_len: int = 100,
    max_ratio: float = 2.5,
    dedupe: bool = True,
    drop_identical: bool = True,
    length_fn: Callable[[str], int] = whitespace_length,
) -> tuple[list[Pair], FilterStats]:
    """Remove unusable pairs; the first failing check (in the order below) is counted.

    Checks: ``empty`` (either side blank), ``too_short`` (either side < ``min_len``),
    ``too_long`` (either side > ``max_len``; 0 = no limit), ``ratio`` (longer/shorter side >
    ``max_ratio``; 0 = off), ``identical`` (source == target), ``duplicate`` (pair seen before).
    Lengths come from ``length_fn`` (whitespace tokens by default; pass a subword counter to
    filter in subword units).

    Raises:
        DataError: invalid thresholds, or no pair survives (message carries the stats).
    """
    if min_len < 0 or max_len < 0 or max_ratio < 0:
        raise DataError(
            f"filter settings must be >= 0: min_len={min_len}, max_len={max_len}, "
            f"max_ratio={max_ratio}"
        )
    if max_len and min_len > max_len:
        raise DataError(f"filter settings: min_len={min_len} > max_len={max_len}")
    stats = FilterStats(total=len(pairs))
    seen: set[Pair] = set()
    kept: list[Pair] = []
    for src, tgt in pairs:
        reason = _reject_reason(src, tgt, min_len, max_len, max_ratio, drop_identical, length_fn)
        if reason is None and dedupe:
            if (src, tgt) in seen:
                reason = "duplicate"
            else:
                seen.add((src, tgt))
        if reason is None:
            kept.append((src, tgt))
        else:
            setattr(stats, reason, getattr(stats, reason) + 1)
    stats.kept = len(kept)
    if not kept:
        raise DataError(
            f"no sentence pairs left after filtering: {stats} "
            f"(settings: min_len={min_len}, max_len={max_len}, max_ratio={max_ratio})"
        )
    return kept, stats


def _reject_reason(
    src: str,
    tgt: str,
    min_len: int,
    max_len: int,
    max_ratio: float,
    drop_identical: bool,
    length_fn: Callable[[str], int],
) -> str | None:
    if not src.strip() or not tgt.strip():
        return "empty"
    ls, lt = length_fn(src), length_fn(tgt)
    if min(ls, lt) < min_len:
        return "too_short"
    if max_len and max(ls, lt) > max_len:
        return "too_long"
    if max_ratio and max(ls, lt) > max_ratio * max(min(ls, lt), 1):
        return "ratio"
    if drop_identical and src.strip() == tgt.strip():
        return "identical"
    return None
