"""Token-budget batching into a small, fixed set of shapes; resumable and deterministic.

Every training batch has a shape ``(Ts, Tt, B)`` from :meth:`Batcher.shapes`:
``Ts``/``Tt`` are the source/target lengths (with eos / bos added) rounded up to
``pad_multiple``; a bucket holds all pairs with the same ``(Ts, Tt)``;
``B = batch_tokens // max(Ts, Tt)`` rounded down to a multiple of ``batch_multiple``
(at least ``batch_multiple``). A bucket's last, partial batch is completed with filler rows
(``src=[eos]``, ``src_len=1``, target all pad, ``tgt_len=0``) so it has the bucket's shape.

All tensors are int64, time-major ``(T, B)`` and contiguous; pad id 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch

from data.errors import DataError

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3
T = TypeVar("T")
IntArray = npt.NDArray[np.int64]


@dataclass
class Batch:
    """One training batch (time-major).

    Attributes:
        src: ``[Ts, B]`` source ids + eos, pad 0.
        src_len: ``[B]`` source lengths incl. eos (>= 1; 1 for filler rows).
        tgt_in: ``[Tt, B]`` bos + target ids.
        tgt_out: ``[Tt, B]`` target ids + eos.
        tgt_len: ``[B]`` non-pad positions of ``tgt_in``/``tgt_out`` (0 for filler rows).
        ntokens: non-pad positions of ``tgt_out`` (the loss normaliser).
        nsentences: real (non-filler) rows.
        indices: ``[B]`` index of each row's pair in the Batcher's input, -1 for filler rows.
    """

    src: torch.Tensor
    src_len: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    tgt_len: torch.Tensor
    ntokens: int
    nsentences: int
    indices: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Ts, Tt, B)``."""
        return (int(self.src.shape[0]), int(self.tgt_in.shape[0]), int(self.src.shape[1]))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Copy the tensors to ``device`` (ntokens etc. stay Python ints)."""

        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(
            mv(self.src),
            mv(self.src_len),
            mv(self.tgt_in),
            mv(self.tgt_out),
            mv(self.tgt_len),
            self.ntokens,
            self.nsentences,
            self.indices,
        )


@dataclass
class InferenceBatch:
    """A translation batch: ``src[Ts, B]`` (+ eos, pad 0), ``src_len[B]``, and ``indices[B]`` the
    positions of its rows in the input list (use :func:`restore_order`)."""

    src: torch.Tensor
    src_len: torch.Tensor
    indices: list[int]


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n`` (and >= ``multiple``)."""
    return max(multiple, -(-n // multiple) * multiple)


class _Flat:
    """Ragged id sequences stored as one flat int64 array plus offsets."""

    def __init__(self, seqs: Sequence[Sequence[int]]) -> None:
        self.lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        self.offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(self.lens, out=self.offsets[1:])
        flat = np.fromiter(
            (i for s in seqs for i in s), dtype=np.int64, count=int(self.offsets[-1])
        )
        self.flat = flat

    def fill(self, rows: IntArray, out: IntArray, shift: int) -> None:
        """Copy sequences ``rows`` into ``out[r, shift:shift+len]`` (``out`` is ``[R, T]``)."""
        width = out.shape[1] - shift
        lens = self.lens[rows]
        cols = np.arange(width, dtype=np.int64)
        mask = cols[None, :] < lens[:, None]
        pos = self.offsets[rows][:, None] + cols[None, :]
        out[:, shift:][mask] = self.flat[pos[mask]]


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))


class Batcher:
    """Resumable, deterministic token-budget batch iterator over (source, target) id pairs.

    Iterating yields the remaining batches of the current epoch; after the last one the position
    moves to the next epoch, so ``for epoch ...: for batch in batcher`` works, and so does
    :meth:`forever`. Shuffling (sentences within buckets, then batch order) depends only on
    ``(seed, epoch)``; with ``shuffle=False`` batches come bucket by bucket in length order.

    Args:
        src_ids, tgt_ids: token ids per pair, without bos/eos (same number of pairs).
        batch_tokens: budget of padded positions ``max(Ts, Tt) * B`` per batch.
        pad_multiple: ``Ts``/``Tt`` are multiples of this.
        batch_multiple: ``B`` is a multiple of this (the number of microbatches).
        seed: shuffling seed.
        shuffle: shuffle sentence and batch order per epoch.
        merge_tails: move the pairs of a bucket's last, partial batch into the filler slots of
            larger buckets when they all fit there (fixed assignment, same for every epoch):
            removes that partial batch (and the shape, if the bucket empties) at no padding cost.
    """

    def __init__(
        self,
        src_ids: Sequence[Sequence[int]],
        tgt_ids: Sequence[Sequence[int]],
        batch_tokens: int,
        pad_multiple: int = 8,
        batch_multiple: int = 1,
        seed: int = 1,
        shuffle: bool = True,
        merge_tails: bool = True,
    ) -> None:
        if len(src_ids) != len(tgt_ids):
            raise DataError(
                f"Batcher: {len(src_ids)} source sequences but {len(tgt_ids)} target sequences"
            )
        if not src_ids:
            raise DataError("Batcher: no sentence pairs to batch")
        for name, value in (
            ("batch_tokens", batch_tokens),
            ("pad_multiple", pad_multiple),
            ("batch_multiple", batch_multiple),
        ):
            if value < 1:
                raise DataError(f"Batcher: {name}={value} must be >= 1")
        self.batch_tokens = batch_tokens
        self.pad_multiple = pad_multiple
        self.batch_multiple = batch_multiple
        self.seed = seed
        self.shuffle = shuffle
        self.merge_tails = merge_tails
        self._src = _Flat(src_ids)
        self._tgt = _Flat(tgt_ids)
        ts = -(-(self._src.lens + 1) // pad_multiple) * pad_multiple
        tt = -(-(self._tgt.lens + 1) // pad_multiple) * pad_multiple
        self._buckets: dict[tuple[int, int], IntArray] = {}
        keys = ts * (int(tt.max()) + 1) + tt
        order = np.argsort(keys, kind="stable")
        _, starts = np.unique(keys[order], return_index=True)
        for members in np.split(order, starts[1:]):
            self._buckets[(int(ts[members[0]]), int(tt[members[0]]))] = members
        self._sizes = {key: self.bucket_batch_size(*key) for key in self._buckets}
        if merge_tails:
            self._merge_tails()
        self._epoch = 0
        self._index = 0
        self._plan_cache: tuple[int, list[tuple[tuple[int, int], IntArray]]] | None = None

    def _merge_tails(self) -> None:
        """Greedy tail merging. Buckets are visited largest key first, so every bucket that could
        take a pair of bucket ``(ts, tt)`` (``Ts' >= ts`` and ``Tt' >= tt``) has already decided
        whether it keeps its partial batch; kept partial batches offer their filler slots.
        A tail moves only if it fits completely (a partial move would save nothing)."""
        free: dict[tuple[int, int], int] = {}
        for key in sorted(self._buckets, reverse=True):
            members = self._buckets[key]
            size = self._sizes[key]
            rem = len(members) % size
            if rem == 0:
                continue
            hosts = sorted(
                (k for k, n in free.items() if n and k[0] >= key[0] and k[1] >= key[1]),
                key=lambda k: (k[0] + k[1], k),
            )
            if sum(free[k] for k in hosts) < rem:
                free[key] = size - rem
                continue
            tail, self._buckets[key] = members[len(members) - rem :], members[: len(members) - rem]
            for host in hosts:
                take, tail = tail[: free[host]], tail[free[host] :]
                self._buckets[host] = np.sort(np.concatenate([self._buckets[host], take]))
                free[host] -= len(take)
                if not len(tail):
                    break
        for key in [k for k, m in self._buckets.items() if not len(m)]:
            del self._buckets[key], self._sizes[key]

    # ------------------------------------------------------------------ shapes / stats
    def bucket_batch_size(self, ts: int, tt: int) -> int:
        """``B`` for bucket ``(ts, tt)``: budget // max(ts, tt) rounded down to the multiple."""
        b = self.batch_tokens // max(ts, tt)
        return max(self.batch_multiple, b // self.batch_multiple * self.batch_multiple)

    def shapes(self) -> list[tuple[int, int, int]]:
        """All batch shapes ``(Ts, Tt, B)`` this batcher produces, sorted."""
        return sorted((ts, tt, self._sizes[(ts, tt)]) for ts, tt in self._buckets)

    def __len__(self) -> int:
        """Batches per epoch."""
        return sum(-(-len(m) // self._sizes[k]) for k, m in self._buckets.items())

    @property
    def num_pairs(self) -> int:
        return len(self._src.lens)

    def padding_overhead(self) -> dict[str, float]:
        """Padded positions / real tokens - 1 over one epoch, for ``"src"`` (incl. eos) and
        ``"tgt"`` (``tgt_out`` incl. eos); filler rows count as padding."""
        padded_src = padded_tgt = 0
        for (ts, tt), members in self._buckets.items():
            n_batches = -(-len(members) // self._sizes[(ts, tt)])
            padded_src += ts * self._sizes[(ts, tt)] * n_batches
            padded_tgt += tt * self._sizes[(ts, tt)] * n_batches
        real_src = int(self._src.lens.sum()) + self.num_pairs
        real_tgt = int(self._tgt.lens.sum()) + self.num_pairs
        return {"src": padded_src / real_src - 1.0, "tgt": padded_tgt / real_tgt - 1.0}

    def fingerprint(self) -> str:
        """sha256 of the lengths and settings: store it with :meth:`state_dict` to detect a
        resume against different data or settings."""
        h = hashlib.sha256()
        for arr in (self._src.lens, self._tgt.lens):
            h.update(arr.tobytes())
        settings = (self.batch_tokens, self.pad_multiple, self.batch_multiple, self.seed)
        h.update(repr((settings, self.shuffle, self.merge_tails)).encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ epoch plan
    def plan(self, epoch: int) -> list[tuple[tuple[int, int], IntArray]]:
        """The batches of ``epoch`` in order: ``((Ts, Tt), pair indices)`` (<= B indices)."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = _rng(self.seed, epoch)
        batches: list[tuple[tuple[int, int], IntArray]] = []
        for key in sorted(self._buckets):
            members = self._buckets[key]
            if self.shuffle:
                members = members[rng.permutation(len(members))]
            size = self._sizes[key]
            batches.extend((key, members[i : i + size]) for i in range(0, len(members), size))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches)).tolist()]
        self._plan_cache = (epoch, batches)
        return batches

    def make_batch(self, key: tuple[int, int], rows: IntArray) -> Batch:
        """Build the padded tensors for pairs ``rows`` in bucket ``key``; rows are sorted by
        source length (descending, stable) and followed by filler rows up to the bucket's B."""
        ts, tt = key
        size = self._sizes[key]
        if len(rows) > size:
            raise ValueError(f"make_batch: {len(rows)} rows exceed B={size} of bucket {key}")
        rows = rows[np.argsort(-self._src.lens[rows], kind="stable")]
        n = len(rows)
        src = np.zeros((size, ts), dtype=np.int64)
        tgt_in = np.zeros((size, tt), dtype=np.int64)
        tgt_out = np.zeros((size, tt), dtype=np.int64)
        self._src.fill(rows, src[:n], 0)
        self._tgt.fill(rows, tgt_out[:n], 0)
        self._tgt.fill(rows, tgt_in[:n], 1)
        ar = np.arange(n)
        src_len = np.ones(size, dtype=np.int64)
        src_len[:n] = self._src.lens[rows] + 1
        src[ar, src_len[:n] - 1] = EOS_ID
        src[n:, 0] = EOS_ID
        tgt_len = np.zeros(size, dtype=np.int64)
        tgt_len[:n] = self._tgt.lens[rows] + 1
        tgt_in[:n, 0] = BOS_ID
        tgt_out[ar, tgt_len[:n] - 1] = EOS_ID
        indices = np.full(size, -1, dtype=np.int64)
        indices[:n] = rows
        return Batch(
            src=torch.from_numpy(np.ascontiguousarray(src.T)),
            src_len=torch.from_numpy(src_len),
            tgt_in=torch.from_numpy(np.ascontiguousarray(tgt_in.T)),
            tgt_out=torch.from_numpy(np.ascontiguousarray(tgt_out.T)),
            tgt_len=torch.from_numpy(tgt_len),
            ntokens=int(tgt_len.sum()),
            nsentences=n,
            indices=torch.from_numpy(indices),
        )

    # ------------------------------------------------------------------ iteration / state
    @property
    def epoch(self) -> int:
        return self._epoch

    def __iter__(self) -> Iterator[Batch]:
        """Yield the rest of the current epoch; the position advances as batches are yielded."""
        epoch = self._epoch
        plan = self.plan(epoch)
        while self._epoch == epoch and self._index < len(plan):
            key, rows = plan[self._index]
            self._index += 1
            if self._index == len(plan):
                self._epoch, self._index = epoch + 1, 0
            yield self.make_batch(key, rows)

    def forever(self) -> Iterator[Batch]:
        """Yield batches across epochs without end."""
        while True:
            yield from self

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch: ``{"epoch": e, "index": i}``."""
        return {"epoch": self._epoch, "index": self._index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue exactly where :meth:`state_dict` was taken (call before iterating)."""
        try:
            epoch, index = int(state["epoch"]), int(state["index"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"batcher state {state!r} lacks integer 'epoch' and 'index'") from None
        if epoch < 0 or not 0 <= index < len(self):
            raise DataError(
                f"batcher state epoch={epoch}, index={index} is out of range "
                f"(this data has {len(self)} batches per epoch; did data or batch settings change?)"
            )
        self._epoch, self._index = epoch, index


def inference_batches(
    src_ids: Sequence[Sequence[int]], batch_tokens: int, pad_multiple: int = 8
) -> list[InferenceBatch]:
    """Batch sources for translation, longest first, no shuffling and no filler rows.

    Each batch is ``src[Ts, B]`` with ``Ts`` a multiple of ``pad_multiple`` and ``Ts * B <=
    batch_tokens`` (at least one sentence). Empty sources become ``[eos]`` (``src_len`` 1).
    """
    if batch_tokens < 1 or pad_multiple < 1:
        raise DataError(
            f"inference_batches: batch_tokens={batch_tokens}, pad_multiple={pad_multiple} "
            f"must be >= 1"
        )
    if not src_ids:
        return []
    flat = _Flat(src_ids)
    order = np.argsort(-flat.lens, kind="stable")
    batches: list[InferenceBatch] = []
    start = 0
    while start < len(order):
        ts = round_up(int(flat.lens[order[start]]) + 1, pad_multiple)
        size = max(1, batch_tokens // ts)
        rows = order[start : start + size]
        n = len(rows)
        src = np.zeros((n, ts), dtype=np.int64)
        flat.fill(rows, src, 0)
        src_len = flat.lens[rows] + 1
        src[np.arange(n), src_len - 1] = EOS_ID
        batches.append(
            InferenceBatch(
                src=torch.from_numpy(np.ascontiguousarray(src.T)),
                src_len=torch.from_numpy(np.ascontiguousarray(src_len)),
                indices=rows.tolist(),
            )
        )
        start += n
    return batches


def restore_order(items: Sequence[T], indices: Sequence[int]) -> list[T]:
    """Put per-row results back in input order: ``out[indices[k]] = items[k]``."""
    if len(items) != len(indices) or sorted(indices) != list(range(len(indices))):
        raise ValueError(
            f"restore_order: {len(items)} items for {len(indices)} indices that are not a "
            f"permutation of 0..{len(indices) - 1}"
        )
    out = list(items)
    for k, item in zip(indices, items, strict=True):
        out[k] = item
    return out
