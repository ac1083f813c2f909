"""Tests for data.batching: shapes, coverage, determinism, resume, filler rows, inference."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from data.batching import Batch, Batcher, inference_batches, restore_order
from data.errors import DataError

PAD, BOS, EOS = 0, 2, 3


def make_pairs(n: int = 500, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        ls = rng.randint(1, 40)
        lt = max(1, int(ls * rng.uniform(0.6, 1.6)))
        src.append([rng.randint(4, 99) for _ in range(ls)])
        tgt.append([rng.randint(4, 99) for _ in range(lt)])
    return src, tgt


def make_batcher(seed: int = 7, **kw: int) -> Batcher:
    src, tgt = make_pairs()
    args = {"batch_tokens": 512, "pad_multiple": 8, "batch_multiple": 4, **kw}
    return Batcher(src, tgt, seed=seed, **args)


def fingerprint(batches: list[Batch]) -> list[tuple[int, ...]]:
    return [tuple(b.indices.tolist()) for b in batches]


def test_shapes_are_multiples_and_known() -> None:
    b = make_batcher()
    shapes = b.shapes()
    assert shapes and len(shapes) == len(set(shapes))
    for ts, tt, bs in shapes:
        assert ts % 8 == 0 and tt % 8 == 0 and bs % 4 == 0 and bs >= 4
        assert bs == max(4, 512 // max(ts, tt) // 4 * 4)
    seen = set()
    for batch in b:
        assert batch.shape in shapes
        seen.add(batch.shape)
        for t in (batch.src, batch.tgt_in, batch.tgt_out):
            assert t.dtype == torch.int64 and t.is_contiguous() and t.dim() == 2
        assert batch.src_len.shape == batch.tgt_len.shape == (batch.shape[2],)
    assert seen == set(shapes)


def test_every_pair_once_per_epoch_with_correct_content() -> None:
    src, tgt = make_pairs()
    b = Batcher(src, tgt, batch_tokens=512, batch_multiple=4, seed=1)
    for _ in range(2):
        counts: Counter[int] = Counter()
        for batch in b:
            for col, idx in enumerate(batch.indices.tolist()):
                if idx < 0:
                    continue
                counts[idx] += 1
                s, t = src[idx], tgt[idx]
                n_pad = batch.shape[0] - len(s) - 1
                assert batch.src[:, col].tolist() == [*s, EOS] + [PAD] * n_pad
                assert batch.tgt_in[: len(t) + 1, col].tolist() == [BOS, *t]
                assert batch.tgt_out[: len(t) + 1, col].tolist() == [*t, EOS]
                assert batch.tgt_out[len(t) + 1 :, col].eq(PAD).all()
                assert batch.src_len[col] == len(s) + 1 and batch.tgt_len[col] == len(t) + 1
            assert batch.ntokens == int(batch.tgt_out.ne(PAD).sum())
        assert counts == Counter(range(len(src)))
    assert b.epoch == 2


def test_filler_rows() -> None:
    b = make_batcher()
    n_filler = padded_src = padded_tgt = real_src = real_tgt = 0
    for batch in b:
        padded_src += batch.src.numel()
        padded_tgt += batch.tgt_out.numel()
        real_src += int(batch.src_len[batch.indices >= 0].sum())  # filler eos is overhead
        real_tgt += batch.ntokens
        fill = batch.indices < 0
        n_filler += int(fill.sum())
        if fill.any():
            assert batch.src_len[fill].eq(1).all() and batch.tgt_len[fill].eq(0).all()
            assert batch.src[0, fill].eq(EOS).all() and batch.src[1:, fill].eq(PAD).all()
            assert batch.tgt_in[:, fill].eq(PAD).all() and batch.tgt_out[:, fill].eq(PAD).all()
            assert batch.nsentences == int((~fill).sum())
            assert batch.ntokens == int(batch.tgt_len.sum())
    assert n_filler > 0  # the test data must exercise partial batches
    overhead = b.padding_overhead()
    assert overhead["src"] == pytest.approx(padded_src / real_src - 1)
    assert overhead["tgt"] == pytest.approx(padded_tgt / real_tgt - 1)


def test_deterministic_and_epochs_differ() -> None:
    a, b = make_batcher(seed=3), make_batcher(seed=3)
    epoch0_a, epoch0_b = list(a), list(b)
    assert fingerprint(epoch0_a) == fingerprint(epoch0_b)
    assert all(torch.equal(x.src, y.src) for x, y in zip(epoch0_a, epoch0_b, strict=True))
    epoch1 = list(a)
    assert fingerprint(epoch1) != fingerprint(epoch0_a)
    assert sorted(fingerprint(epoch1)) != sorted(fingerprint(epoch0_a))  # sentences reshuffled
    assert fingerprint(list(make_batcher(seed=4))) != fingerprint(epoch0_a)


def test_resume_continues_exactly() -> None:
    ref = make_batcher()
    stream = ref.forever()
    full = [next(stream) for _ in range(2 * len(ref) + 5)]
    for stop in (0, 3, len(ref) - 1, len(ref), len(ref) + 4):
        run = make_batcher()
        it = run.forever()
        for _ in range(stop):
            next(it)
        state = run.state_dict()
        assert set(state) == {"epoch", "index"}
        resumed = make_batcher()
        resumed.load_state_dict(state)
        rest = resumed.forever()
        got = [next(rest) for _ in range(len(full) - stop)]
        assert fingerprint(got) == fingerprint(full[stop:])


def test_state_after_last_batch_points_to_next_epoch() -> None:
    b = make_batcher()
    n = len(list(b))
    assert n == len(b) and b.state_dict() == {"epoch": 1, "index": 0}
    with pytest.raises(DataError, match=f"index={n} is out of range"):
        b.load_state_dict({"epoch": 0, "index": n})


def test_no_shuffle_is_length_sorted() -> None:
    b = make_batcher(shuffle=False)
    shapes = [batch.shape[:2] for batch in b]
    assert shapes == sorted(shapes)


def test_budget_smaller_than_length_still_gives_batch_multiple() -> None:
    b = Batcher([[5] * 30], [[6] * 30], batch_tokens=8, batch_multiple=2)
    assert b.shapes() == [(32, 32, 2)]
    (batch,) = list(b)
    assert batch.nsentences == 1 and batch.indices.tolist() == [0, -1]


def test_batcher_input_errors() -> None:
    with pytest.raises(DataError, match="2 source sequences but 1 target"):
        Batcher([[4], [5]], [[6]], batch_tokens=64)
    with pytest.raises(DataError, match="batch_tokens=0"):
        Batcher([[4]], [[6]], batch_tokens=0)


def test_inference_batches_restore_order() -> None:
    src = [[4, 5], [], list(range(4, 30)), [7], [8, 9, 10]]
    batches = inference_batches(src, batch_tokens=16, pad_multiple=8)
    order = [i for b in batches for i in b.indices]
    assert sorted(order) == list(range(len(src)))
    lens = [len(src[i]) for i in order]
    assert lens == sorted(lens, reverse=True)
    rows: list[list[int]] = []
    for b in batches:
        ts, bs = b.src.shape
        assert ts % 8 == 0 and (ts * bs <= 16 or bs == 1) and b.src.is_contiguous()
        for col in range(bs):
            n = int(b.src_len[col])
            assert b.src[n - 1, col] == EOS and b.src[n:, col].eq(PAD).all()
            rows.append(b.src[: n - 1, col].tolist())
    assert restore_order(rows, order) == src
    assert inference_batches([], 16) == []


def test_merge_tails_reduces_padding_and_keeps_coverage() -> None:
    src, tgt = make_pairs(800, seed=5)
    plain = Batcher(src, tgt, batch_tokens=512, batch_multiple=4, merge_tails=False)
    merged = Batcher(src, tgt, batch_tokens=512, batch_multiple=4, merge_tails=True)
    assert set(merged.shapes()) <= set(plain.shapes())
    assert len(merged) < len(plain)
    for side in ("src", "tgt"):
        assert merged.padding_overhead()[side] < plain.padding_overhead()[side]
    seen = sorted(i for batch in merged for i in batch.indices.tolist() if i >= 0)
    assert seen == list(range(len(src)))
    # every bucket but the merged-into ones has at most one partial batch
    partial = Counter(b.shape for b in merged if b.nsentences < b.shape[2])
    assert all(n == 1 for n in partial.values())
