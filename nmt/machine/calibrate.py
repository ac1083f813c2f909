"""The fastest correct arithmetic for this machine, by measurement, cached per machine.

``decode.quantize=auto`` / ``decode.dtype=auto`` and ``train.precision=auto`` on a CPU do not
trust CPU flags: the candidates this torch can run (:mod:`nmt.machine.capability`) are timed on the
model's own shapes (translation batches of changing shapes: :func:`decoding_workload`; a
training step: :func:`training_workload`), and the fastest wins.
fp32 is the reference: another candidate must beat it by :data:`MARGIN`, so a default is never
slower than plain fp32 (int8 without VNNI can be several times slower). The choice, with each
candidate's milliseconds, is cached in ``~/.cache/pipenmt/calibration.json`` (or the file
``PIPENMT_CALIBRATION`` names) under a key of the machine (CPU, flags, forced ISA, threads,
torch version) and the model's shape, printed once on stderr (:func:`announce`), and recorded
by the caller in the run's metrics or the eval JSON.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data.atomic import atomic_write_text
from nmt.machine.capability import machine_record
from nmt.models.seq2seq import Seq2Seq

MARGIN = 1.05  # a candidate other than fp32 must be this much faster to be chosen
REPEATS = 3  # timed runs per candidate (after one warm-up); the fastest counts
BASELINE = "fp32"


def cache_file() -> Path:
    """Where choices are cached (``PIPENMT_CALIBRATION`` overrides the default)."""
    env = os.environ.get("PIPENMT_CALIBRATION")
    return Path(env).expanduser() if env else Path("~/.cache/pipenmt/calibration.json").expanduser()


@dataclass(frozen=True)
class Choice:
    """What a calibration chose for ``task`` and how fast each candidate ran (ms)."""

    task: str  # "decode" | "train"
    name: str  # the chosen candidate, e.g. "int8"
    ms: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    key: str = ""

    @property
    def speedup(self) -> float:
        """The chosen candidate's speed over fp32 (1.0 when fp32 was not measured)."""
        if BASELINE not in self.ms or self.name not in self.ms or not self.ms[self.name]:
            return 1.0
        return self.ms[BASELINE] / self.ms[self.name]

    def record(self) -> dict[str, Any]:
        """The JSON the run's metrics / eval report carries."""
        return {
            "task": self.task,
            "chosen": self.name,
            "speedup_over_fp32": round(self.speedup, 3),
            "ms": self.ms,
            "cached": self.cached,
            "machine": machine_record(),
        }

    def line(self) -> str:
        """One line for stderr."""
        if not self.ms:
            return f"{self.task}: {self.name} (the only candidate here: {self.key})"
        times = ", ".join(f"{k} {v:.1f} ms" for k, v in self.ms.items())
        how = "cached calibration" if self.cached else "calibrated now"
        return (
            f"{self.task}: {self.name} ({self.speedup:.2f}x fp32; {how}: {times}; {cache_file()})"
        )


def _key(task: str, shape: dict[str, Any]) -> str:
    m = machine_record()
    ident = {k: m[k] for k in ("cpu", "flags", "forced_isa", "threads", "torch")} | {
        "task": task,
        "shape": shape,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def _load_cache() -> dict[str, Any]:
    try:
        doc = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _save(key: str, choice: Choice, shape: dict[str, Any]) -> None:
    doc = _load_cache()
    doc[key] = {"chosen": choice.name, "ms": choice.ms, "shape": shape} | {
        "machine": machine_record()
    }
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file(), json.dumps(doc, indent=1, sort_keys=True) + "\n")
    except OSError as err:  # a read-only home: the choice still holds for this run
        print(f"calibration: cannot write {cache_file()} ({err})", file=sys.stderr)


def _measure(workloads: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Each workload's fastest run in ms: one warm-up each, then :data:`REPEATS` rounds that
    take the candidates in turn (a passing load on the machine hits them alike)."""
    for run in workloads.values():
        run()
    best = dict.fromkeys(workloads, float("inf"))
    for _ in range(REPEATS):
        for name, run in workloads.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(t * 1000.0, 2) for name, t in best.items()}


_printed: set[tuple[str, str]] = set()


def choose(
    task: str, shape: dict[str, Any], candidates: Mapping[str, Callable[[], Callable[[], object]]]
) -> Choice:
    """The fastest of ``candidates`` (name -> a factory of the workload to time; fp32 first,
    the reference), from the cache when this machine and shape were measured before. Prints
    nothing: :func:`announce` does."""
    names = list(candidates)
    if len(names) == 1:
        return Choice(task, names[0])
    key = _key(task, shape | {"candidates": names})
    hit = _load_cache().get(key)
    if isinstance(hit, dict) and hit.get("chosen") in candidates:
        choice = Choice(task, str(hit["chosen"]), dict(hit.get("ms", {})), True, key)
    else:
        ms = _measure({name: make() for name, make in candidates.items()})
        best = min(ms, key=lambda n: ms[n] * (1.0 if n == BASELINE else MARGIN))
        choice = Choice(task, best, ms, False, key)
        _save(key, choice, shape)
    return choice


def announce(choice: Choice | None) -> None:
    """Print ``choice`` on stderr, once per process and choice (the caller does so once its
    settings and inputs are known to be good, so a user error stays one line)."""
    if choice is None or (choice.task, choice.key) in _printed:
        return
    _printed.add((choice.task, choice.key))
    print(choice.line(), file=sys.stderr)


def training_workload(
    model: Seq2Seq, amp: torch.dtype | None, batch_tokens: int
) -> Callable[[], object]:
    """Forward and backward of one batch of about ``batch_tokens`` target tokens (sentences of
    24 tokens, the corpus' typical length) under autocast ``amp`` (None: fp32)."""
    length, vocab = 24, model.vocab_size
    rows = max(1, batch_tokens // length)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (length, rows), generator=g)
    tgt = torch.randint(4, vocab, (length + 1, rows), generator=g)
    src_len = torch.full((rows,), length)
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss, _ = model.loss(src, src_len, tgt[:-1], tgt[1:], 0, 0.1)
        torch.autograd.backward(loss)

    return step


def decoding_workload(model: Seq2Seq, batch_tokens: int = 2000) -> Callable[[], object]:
    """What translation batches run, with their changing shapes: each call takes the next
    source length (12, 20, 32 tokens in turn) and ``batch_tokens // length`` random sources,
    runs the encoder once, then ``length`` decoder steps over a number of hypothesis rows
    that changes every step (1 to 3 per sentence, as beam 5 with pruning keeps), greedy
    feedback. Every new batch size is a new kernel for some back-ends (oneDNN's LSTM), which
    is part of the cost. No search bookkeeping: it is the same for every arithmetic."""
    vocab = model.vocab_size
    device = model.input_embedding().weight.device
    g = torch.Generator().manual_seed(0)
    lengths = iter(itertools.cycle((12, 20, 32)))

    def run() -> None:
        length = next(lengths)
        sentences = max(1, batch_tokens // length)
        src = torch.randint(4, vocab, (length, sentences), generator=g).to(device)
        src[-1] = 3  # eos
        src_len = torch.full((sentences,), length, device=device)
        with torch.inference_mode():
            memory = model.prepare_memory(model.encode(src, src_len), src_len)
            for _ in range(length):
                rows = torch.randint(1, 4, (sentences,), generator=g)
                row_sent = torch.arange(sentences).repeat_interleave(rows).to(device)
                state = model.reorder_state(model.init_state(sentences), row_sent)
                y = torch.randint(4, vocab, (row_sent.numel(),), generator=g).to(device)
                model.step(y, state, memory.for_rows(row_sent), None)

    return run
