"""The wavefront across processes (``nmt-train parallel=wavefront parallel.pp=N``, gloo on
CPU): losses and weights after 6 steps with dropout 0.2 equal one device's
``parallel=none`` (rel 1e-5; per tensor, relative to its norm or 1, whichever is larger)
for several cuts of the layers into ranks (the split encoder's sentences shared equally or by
weights), with recompute; two replicas (``parallel.dp=2``)
equal one device with ``train.accumulate=2``; a run stopped at step 3 and resumed equals the
straight run bitwise; the settings it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from nmt.checkpoint import files as ckpt_io
from nmt.errors import user_error_types
from nmt.train.run import train
from nmt.train.wave_checks import wave_owners

ROOT = Path(__file__).resolve().parent.parent
COMMON = ("train.max_steps=6", "train.warmup_steps=0", "train.decay_steps=0",
          "model.dropout=0.2", "parallel.timeout_s=60")  # fmt: skip


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in records(out) if "loss" in r]


def weights(out: Path) -> dict[str, torch.Tensor]:
    model: dict[str, torch.Tensor] = ckpt_io.load(out / "checkpoints" / "last.pt")["model"]
    return model


def nmt_train(corpus: dict[str, Path], tmp: Path, name: str, *extra: str) -> Path:
    """The real ``nmt-train`` command in a subprocess; its run folder."""
    from tests.conftest import tiny_overrides

    out = tmp / name
    args = tiny_overrides(corpus, tmp / "cache", out)
    code = "import sys; from nmt.cli import train_main; sys.argv[0] = 'nmt-train'; train_main()"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", code, *args, *COMMON, *extra, f"hydra.run.dir={out}"],
        capture_output=True, text=True, cwd=tmp, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def plain(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nmt_train(tiny_corpus, tmp_path_factory.mktemp("plain"), "plain", "parallel=none")


@pytest.mark.parametrize(
    "ranks",
    [("parallel.pp=2",),  # the other layouts are slow tests (make test-slow)
     pytest.param(("parallel.pp=2", "parallel.balance=[2,3]"), marks=pytest.mark.slow),
     pytest.param(("parallel.pp=3", "parallel.balance=[1,2,2]"), marks=pytest.mark.slow),
     pytest.param(("parallel.pp=2", "parallel.generator_share=0.3"), marks=pytest.mark.slow),
     pytest.param(("parallel.pp=2", "parallel.encoder_split=true"), marks=pytest.mark.slow),
     pytest.param(("parallel.pp=3", "parallel.encoder_split=true", "parallel.balance=[2,2,1]"),
                  marks=pytest.mark.slow),
     pytest.param(("parallel.pp=2", "parallel.encoder_split=true", "parallel.balance=[3,2]",
                   "parallel.generator_share=0.3", "parallel.overlap_gradients=false"),
                  marks=pytest.mark.slow),
     pytest.param(("parallel.pp=2", "parallel.balance=[2,3]", "parallel.generator_share=0.4"),
                  marks=pytest.mark.slow),
     pytest.param(("parallel.pp=2", "parallel.encoder_split=true", "parallel.balance=[3,2]",
                   "parallel.generator_share=0.3", "parallel.attention_split=true"),
                  marks=pytest.mark.slow),  # the default suite: as threads, and with dp=2
     # (there with weighted encoder shares)
     pytest.param(("parallel.pp=3", "parallel.encoder_split=true", "parallel.balance=[2,1,2]",
                   "parallel.attention_split=true"), marks=pytest.mark.slow),
     pytest.param(("parallel.pp=3", "parallel.encoder_split=true", "parallel.balance=[3,1,1]",
                   "parallel.attention_split=true"), marks=pytest.mark.slow),
     pytest.param(("parallel.pp=3", "parallel.balance=[1,2,2]", "parallel.recompute=true"),
                  marks=pytest.mark.slow),
     ("parallel.pp=2", "parallel.encoder_split=true", "parallel.balance=[3,2]",
      "parallel.generator_share=0.3", "parallel.attention_split=true",
      "parallel.wave_threads=true"),
     pytest.param(("parallel.pp=2", "parallel.encoder_split=true", "parallel.balance=[3,2]",
                   "parallel.generator_share=0.3", "parallel.attention_split=true",
                   "parallel.encoder_shares=[0.3,0.7]"), marks=pytest.mark.slow),
     pytest.param(("parallel.pp=3", "parallel.balance=[1,2,2]", "parallel.wave_threads=true"),
                  marks=pytest.mark.slow)],
    ids=["gen-alone", "encoder-decoder", "three", "generator-share", "encoder-split",
         "encoder-split-three", "split-helper", "helper-without-decoder", "attention-split",
         "attention-split-three", "attention-split-middle", "recompute", "threads",
         "encoder-shares", "threads-three"],
)  # fmt: skip
def test_ranks_equal_one_device_with_dropout(
    plain: Path, tiny_corpus: dict[str, Path], tmp_path: Path, ranks: tuple[str, ...]
) -> None:
    """Same losses and weights after 6 steps as one device, dropout 0.2 (rel 1e-5)."""
    out = nmt_train(
        tiny_corpus, tmp_path, "wave", "parallel=wavefront", "parallel.time_chunks=3", *ranks
    )
    assert losses(out) == pytest.approx(losses(plain), rel=1e-5)
    assert len(losses(out)) == 6
    ref, got = weights(plain), weights(out)
    for k, w in ref.items():  # floor 1: attention.b starts at 0 (Adam magnifies rounding)
        assert float((got[k] - w).norm()) <= 1e-5 * max(float(w.norm()), 1.0), k
    assert (out / "timeline.png").is_file()
    if "parallel.balance=[3,2]" in ranks:
        assert_generator_in_the_backward(out, chunks=3)


def timeline_order(out: Path, rank: int) -> list[tuple[int, str, int]]:
    """(unit, F/B, chunk) of the first recorded step's events on ``rank``, in time order."""
    events = json.loads((out / "timeline.json").read_text())["traceEvents"]
    mine = [e for e in events if e.get("ph") == "X" and e["pid"] == rank and e["args"]["step"] == 0]
    mine.sort(key=lambda e: e["ts"])
    return [(e["args"]["stage"], e["name"][0], e["args"]["mb"]) for e in mine]


def assert_generator_in_the_backward(out: Path, chunks: int) -> None:
    """``balance=[3,2]`` (units 0-2 on rank 0; Dec2 = unit 3 and the generator = unit 4 on
    rank 1): rank 1 runs each chunk's generator just before that chunk's Dec2 backward, last
    chunk first; rank 0 runs its share of the generator last chunk first."""
    last_first = list(reversed(range(chunks)))
    on_1 = [x for x in timeline_order(out, 1) if x[:2] in ((4, "F"), (3, "B"))]
    assert on_1 == [x for c in last_first for x in ((4, "F", c), (3, "B", c))]
    on_0 = [c for u, kind, c in timeline_order(out, 0) if u == 4]
    assert on_0 == last_first


@pytest.fixture(scope="module")
def plain_two_batches(
    tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    tmp = tmp_path_factory.mktemp("plain2")
    return nmt_train(tiny_corpus, tmp, "plain", "parallel=none", "train.accumulate=2")


@pytest.mark.parametrize(
    "ranks",
    [("parallel.encoder_split=true", "parallel.balance=[3,2]", "parallel.generator_share=0.3",
      "parallel.attention_split=true", "parallel.recompute=true",
      "parallel.encoder_shares=[0.3,0.7]"),
     pytest.param(("parallel.balance=[2,3]",), marks=pytest.mark.slow)],
    ids=["split-attention-recompute", "encoder-decoder"],
)  # fmt: skip
def test_replicas_equal_one_device_with_both_batches(
    plain_two_batches: Path, tiny_corpus: dict[str, Path], tmp_path: Path, ranks: tuple[str, ...]
) -> None:
    """``parallel.dp=2 parallel.pp=2`` (4 processes): replica r trains on the step's batch r;
    losses and weights after 6 steps as one device with ``train.accumulate=2`` (rel 1e-5),
    dropout 0.2 (each batch's masks as one device draws them)."""
    out = nmt_train(
        tiny_corpus, tmp_path, "wave", "parallel=wavefront", "parallel.time_chunks=3",
        "parallel.pp=2", "parallel.dp=2", *ranks,
    )  # fmt: skip
    assert losses(out) == pytest.approx(losses(plain_two_batches), rel=1e-5)
    assert len(losses(out)) == 6
    ref, got = weights(plain_two_batches), weights(out)
    for k, w in ref.items():
        assert float((got[k] - w).norm()) <= 1e-5 * max(float(w.norm()), 1.0), k
    assert timeline_order(out, 1)  # replica 0's ranks are the timeline's rows


@pytest.mark.slow
def test_generator_share_of_one_sentence_batches(
    tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    """Batches of one sentence leave the helper rank no share (it rounds to 0), and Dec2's
    rank no sentence to attend for: no message is expected either way (a deadlock until the
    timeout otherwise); losses as one device."""
    small = ("data.batch_tokens=8", "train.max_steps=3")
    ref = nmt_train(tiny_corpus, tmp_path, "plain", "parallel=none", *small)
    out = nmt_train(
        tiny_corpus, tmp_path, "wave", "parallel=wavefront", "parallel.time_chunks=2",
        "parallel.pp=2", "parallel.encoder_split=true", "parallel.balance=[3,2]",
        "parallel.generator_share=0.3", "parallel.attention_split=true",
        "parallel.timeout_s=20", *small,
    )  # fmt: skip
    assert losses(out) == pytest.approx(losses(ref), rel=1e-5)
    assert len(losses(out)) == 3


@pytest.mark.parametrize(
    "how",
    [pytest.param("parallel.wave_threads=false", marks=pytest.mark.slow),
     "parallel.wave_threads=true"],
    ids=["processes", "threads"],
)  # fmt: skip
def test_ranks_resume_exactly(tiny_cfg: Any, how: str) -> None:
    """Stopped after 3 steps and resumed to 6: the straight run's losses, validations and
    weights (threads: every replica takes the resumed weights)."""
    wave = (
        "parallel=wavefront",
        "parallel.time_chunks=3",
        "parallel.pp=2",
        "train.save_every=3",
        "train.eval_every=3",
        how,
    )  # validation on rank 0 while rank 1 waits
    straight = tiny_cfg(*COMMON, *wave, out="straight")
    train(straight)
    first = tiny_cfg(*COMMON, *wave, "train.max_steps=3", out="halted")
    train(first)
    resumed = tiny_cfg(*COMMON, *wave, "train.resume=auto", out="halted")
    assert train(resumed)["step"] == 6
    a, b = Path(straight.train.out_dir), Path(resumed.train.out_dir)
    assert losses(b) == losses(a)
    val = [[r["val_loss"] for r in records(x) if "val_loss" in r] for x in (a, b)]
    assert len(val[0]) == 2 and val[1] == val[0]
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_owners_default_and_balance() -> None:
    assert wave_owners(5, 2, None) == [0, 0, 0, 0, 1]
    assert wave_owners(5, 3, None) == [0, 0, 1, 1, 2]
    assert wave_owners(5, 2, [2, 3]) == [0, 0, 1, 1, 1]
    with pytest.raises(user_error_types(), match="summing"):
        wave_owners(5, 2, [2, 2])


@pytest.mark.parametrize(
    ("extra", "match"),
    [(("parallel.pp=1", "parallel.dp=2"), "replicas need parallel.pp >= 2"),
     (("parallel.microbatches=2",), "cuts batches"), (("parallel.pp=9",), "more ranks"),
     (("parallel.pp=1", "parallel.encoder_split=true"), "needs the wavefront across"),
     (("parallel.attention_split=true",), "needs parallel.encoder_split"),
     (("parallel.encoder_split=true", "parallel.attention_split=true"), "Dec2 on another rank"),
     (("parallel.wave_threads=true", "parallel.dp=2"), "one pipeline in one process"),
     (("parallel.pp=1", "parallel.wave_threads=true"), "needs the wavefront's ranks"),
     (("parallel.encoder_shares=[1,1]",), "encoder_shares needs parallel.encoder_split"),
     (("parallel.encoder_split=true", "parallel.encoder_shares=[1,1,1]"), "needs 2 finite weights"),
     (("parallel.encoder_split=true", "parallel.encoder_shares=[0,0]"), "not all 0"),
     (("parallel.encoder_split=true", "parallel.encoder_shares=[inf,1]"), "finite weights")],
)  # fmt: skip
def test_refused_in_one_line(tiny_cfg: Any, extra: tuple[str, ...], match: str) -> None:
    cfg = tiny_cfg("parallel=wavefront", "parallel.pp=2", "train.max_steps=1", *extra)
    with pytest.raises(user_error_types(), match=match):
        train(cfg)


def test_a_failing_thread_rank_ends_the_run_at_once(
    tiny_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``parallel.wave_threads``: rank 1 fails in its forward; rank 0, waiting for its
    message, is woken at once (not after parallel.timeout_s), and the run raises rank 1's
    own error."""
    from nmt.train.wave_program import WaveProgram

    run = WaveProgram.run

    def failing(self: WaveProgram, *args: Any) -> tuple[float, float]:
        if self.rank == 1:
            raise RuntimeError("boom")
        return run(self, *args)

    monkeypatch.setattr(WaveProgram, "run", failing)
    wave = ("parallel=wavefront", "parallel.time_chunks=3", "parallel.pp=2", "train.max_steps=2")
    cfg = tiny_cfg(*wave, "parallel.wave_threads=true", "parallel.timeout_s=60")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="^boom$"):
        train(cfg)
    assert time.monotonic() - start < 30
