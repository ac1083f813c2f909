"""Per-rank pipeline timelines: record, gather, write Chrome trace + Gantt chart, bubble stats.

Every rank records forward (``F``), backward (``B``), weight-grad (``W``) and loss compute
per micro-batch, the time it sat waiting for a receive (``recv_F`` / ``recv_B``: from when the
receive was posted, or the end of the previous compute if later, until the compute that
consumed it started) and instants for the sends.  The engine's stage class feeds the
recorder (:mod:`parallel.runtime.stagewrap`); recording is off unless
:meth:`TimelineRecorder.enable`
was called, so the training hot path pays one attribute check per call.

:func:`gather_and_write` collects every rank's events on rank 0 and writes ``timeline.json``
(Chrome trace format: open in https://ui.perfetto.dev or chrome://tracing) and
``timeline.png`` (one row per rank, micro-batches coloured, backward hatched), and returns
per-rank busy fractions and the bubble fraction next to the theory ``(K-1)/(V*M+K-1)``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

COMPUTE_KINDS: frozenset[str] = frozenset({"F", "B", "W", "loss"})


@dataclass
class Event:
    rank: int
    stage: int
    kind: str  # F | B | W | loss | recv_F | recv_B | send_F | send_B
    mb: int
    start_ns: int
    end_ns: int
    step: int
    nbytes: int = 0


@dataclass
class _CudaPending:
    ev: Event
    start: Any
    end: Any


class TimelineRecorder:
    """Collects this rank's events while enabled (``enable()`` / ``disable()``)."""

    def __init__(self, rank: int, device: torch.device | None = None) -> None:
        self.rank = rank
        self.enabled = False
        self.events: list[Event] = []
        self.step = -1
        self._recv_posted: dict[tuple[str, int, int], int] = {}
        self._last_end = 0
        self._cuda = device is not None and device.type == "cuda"
        self._pending: list[_CudaPending] = []
        self._ref: Any = None
        self._ref_ns = 0

    # -- control
    def enable(self) -> None:
        if self._cuda and self._ref is None:
            torch.cuda.synchronize()
            self._ref = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            self._ref.record()
            torch.cuda.synchronize()
            self._ref_ns = time.monotonic_ns()
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    def clear(self) -> None:
        self.events.clear()
        self._pending.clear()
        self._recv_posted.clear()
        self.step = -1

    def begin_step(self) -> None:
        if self.enabled:
            self.step += 1
            self._recv_posted.clear()

    # -- recording (called by the stage wrapper)
    @staticmethod
    def now() -> int:
        return time.monotonic_ns()

    def recv_posted(self, kind: str, stage: int, mb: int) -> None:
        if self.enabled:
            self._recv_posted[(kind, stage, mb)] = self.now()

    def instant(self, kind: str, stage: int, mb: int, nbytes: int) -> None:
        if self.enabled:
            t = self.now()
            self.events.append(Event(self.rank, stage, kind, mb, t, t, self.step, nbytes))

    @contextmanager
    def compute(self, kind: str, stage: int, mb: int, recv: str | None = None) -> Iterator[None]:
        """Time a compute block; ``recv`` names the receive it waited for (``recv_F``...)."""
        if not self.enabled:
            yield
            return
        t0 = self.now()
        if recv is not None:
            posted = self._recv_posted.pop((recv, stage, mb), None)
            if posted is not None:
                start = max(posted, self._last_end)
                if t0 > start:
                    self.events.append(Event(self.rank, stage, recv, mb, start, t0, self.step))
        if self._cuda:
            start_ev = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end_ev = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start_ev.record()
            yield
            end_ev.record()
            ev = Event(self.rank, stage, kind, mb, t0, t0, self.step)
            self._pending.append(_CudaPending(ev, start_ev, end_ev))
            self.events.append(ev)
            self._last_end = self.now()
            return
        yield
        t1 = self.now()
        self._last_end = t1
        self.events.append(Event(self.rank, stage, kind, mb, t0, t1, self.step))

    def resolve(self) -> list[Event]:
        """Events with GPU compute times resolved (synchronises CUDA once)."""
        if self._pending:
            torch.cuda.synchronize()
            for p in self._pending:
                p.ev.start_ns = self._ref_ns + int(self._ref.elapsed_time(p.start) * 1e6)
                p.ev.end_ns = self._ref_ns + int(self._ref.elapsed_time(p.end) * 1e6)
            self._pending.clear()
        return list(self.events)


# ----------------------------------------------------------------------------- stats


@dataclass
class TimelineSummary:
    ranks: int
    microbatches: int
    stages_per_rank: int
    schedule: str
    steps: int
    step_ms: float  # mean wall time of a recorded step (first compute to last compute)
    busy_fraction: list[float]  # per rank
    busy_ms: list[float]  # per rank, per step
    stage_busy_ms: dict[int, float]  # per virtual stage, per step
    bubble_fraction: float  # 1 - mean busy fraction
    theory_bubble_fraction: float  # (K-1) / (V*M + K-1)
    extra: dict[str, Any] = field(default_factory=dict)


def theory_bubble(ranks: int, microbatches: int, stages_per_rank: int = 1) -> float:
    k, m, v = ranks, microbatches, stages_per_rank
    return (k - 1) / (v * m + k - 1)


def summarize(
    events: Sequence[Event],
    ranks: int,
    microbatches: int,
    stages_per_rank: int = 1,
    schedule: str = "",
) -> TimelineSummary:
    compute = [e for e in events if e.kind in COMPUTE_KINDS]
    steps = sorted({e.step for e in compute})
    spans: list[float] = []
    busy = [0.0] * ranks
    stage_busy: dict[int, float] = {}
    for s in steps:
        evs = [e for e in compute if e.step == s]
        spans.append((max(e.end_ns for e in evs) - min(e.start_ns for e in evs)) / 1e6)
        for e in evs:
            d = (e.end_ns - e.start_ns) / 1e6
            if 0 <= e.rank < ranks:
                busy[e.rank] += d
            stage_busy[e.stage] = stage_busy.get(e.stage, 0.0) + d
    n = max(len(steps), 1)
    total = sum(spans)
    frac = [b / total if total > 0 else 0.0 for b in busy]
    return TimelineSummary(
        ranks=ranks,
        microbatches=microbatches,
        stages_per_rank=stages_per_rank,
        schedule=schedule,
        steps=len(steps),
        step_ms=total / n,
        busy_fraction=frac,
        busy_ms=[b / n for b in busy],
        stage_busy_ms={k: v / n for k, v in sorted(stage_busy.items())},
        bubble_fraction=1.0 - sum(frac) / ranks if ranks else 0.0,
        theory_bubble_fraction=theory_bubble(ranks, microbatches, stages_per_rank),
    )


# ----------------------------------------------------------------------------- output


def chrome_trace(events: Sequence[Event], summary: TimelineSummary | None = None) -> dict[str, Any]:
    t0 = min((e.start_ns for e in events), default=0)
    out: list[dict[str, Any]] = []
    for r in sorted({e.rank for e in events}):
        out.append({"name": "process_name", "ph": "M", "pid": r, "args": {"name": f"rank {r}"}})
    for e in events:
        ts = (e.start_ns - t0) / 1e3
        args = {"mb": e.mb, "stage": e.stage, "step": e.step}
        if e.kind.startswith("send"):
            args["bytes"] = e.nbytes
            out.append(
                {
                    "name": f"{e.kind}{e.mb}",
                    "cat": "comm",
                    "ph": "i",
                    "s": "t",
                    "ts": ts,
                    "pid": e.rank,
                    "tid": e.stage,
                    "args": args,
                }
            )
            continue
        cat = (
            "comm"
            if e.kind.startswith("recv")
            else {"F": "forward", "loss": "forward"}.get(e.kind, "backward")
        )
        out.append(
            {
                "name": f"{e.kind}{e.mb}",
                "cat": cat,
                "ph": "X",
                "ts": ts,
                "dur": (e.end_ns - e.start_ns) / 1e3,
                "pid": e.rank,
                "tid": e.stage,
                "args": args,
            }
        )
    doc: dict[str, Any] = {"traceEvents": out, "displayTimeUnit": "ms"}
    if summary is not None:
        doc["otherData"] = asdict(summary)
    return doc


def gantt(
    events: Sequence[Event], path: str | Path, summary: TimelineSummary | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ranks = sorted({e.rank for e in events})
    t0 = min((e.start_ns for e in events), default=0)
    mbs = max((e.mb for e in events), default=0) + 1
    cmap = plt.get_cmap("tab10" if mbs <= 10 else "tab20")
    # one sub-row per virtual stage held by a rank (looped / gnmt placements)
    lanes: dict[int, list[int]] = {}
    for e in events:
        lanes.setdefault(e.rank, [])
        if e.stage not in lanes[e.rank]:
            lanes[e.rank].append(e.stage)
    for stages in lanes.values():
        stages.sort()
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.8 * max(len(ranks), 1)))
    for e in events:
        if e.kind.startswith("send"):
            continue
        x, w = (e.start_ns - t0) / 1e6, (e.end_ns - e.start_ns) / 1e6
        n = len(lanes[e.rank])
        lane_h = 0.8 / n
        y = e.rank - 0.4 + (lanes[e.rank].index(e.stage) + 0.5) * lane_h
        if e.kind.startswith("recv"):
            ax.barh(y, w, left=x, height=lane_h * 0.35, color="0.85", edgecolor="none")
            continue
        color = "0.35" if e.kind == "loss" else cmap(e.mb % cmap.N)
        hatch = "//" if e.kind in ("B", "W") else None
        ax.barh(
            y,
            w,
            left=x,
            height=lane_h * 0.9,
            color=color,
            edgecolor="black",
            linewidth=0.3,
            hatch=hatch,
        )
        label = f"{e.stage}{e.kind}{e.mb}" if n > 1 else f"{e.kind}{e.mb}"
        if e.kind != "loss" and w > 0:
            ax.text(x + w / 2, y, label, ha="center", va="center", fontsize=6, clip_on=True)
    ax.set_yticks(ranks, [f"rank {r}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    title = "pipeline timeline"
    if summary is not None:
        title += (
            f" - {summary.schedule} K={summary.ranks}"
            + (f" V={summary.stages_per_rank}" if summary.stages_per_rank > 1 else "")
            + f" M={summary.microbatches}: bubble "
            f"{summary.bubble_fraction:.2f} (theory {summary.theory_bubble_fraction:.2f})"
        )
    ax.set_title(title, fontsize=9)
    ax.legend(
        handles=[
            Patch(facecolor="white", edgecolor="black", label="forward"),
            Patch(facecolor="white", edgecolor="black", hatch="//", label="backward"),
            Patch(facecolor="0.85", label="waiting for recv"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_timeline(
    events: Sequence[Event], out_dir: str | Path, summary: TimelineSummary | None = None
) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, ppath = out / "timeline.json", out / "timeline.png"
    jpath.write_text(json.dumps(chrome_trace(events, summary)))
    gantt(events, ppath, summary)
    return jpath, ppath


def gather_events(
    recorder: TimelineRecorder, group: dist.ProcessGroup | None = None
) -> list[Event]:
    """All ranks' events on every rank of ``group`` (one clock when on one host)."""
    mine = recorder.resolve()
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return mine
    # Align clocks: monotonic clocks agree on one host; otherwise use a barrier as origin.
    dist.barrier(group=group)
    origin = time.monotonic_ns()
    payload = (socket.gethostname(), origin, [asdict(e) for e in mine])
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, payload, group=group)
    same_host = len({g[0] for g in gathered}) == 1
    events: list[Event] = []
    for _host, org, evs in gathered:
        shift = 0 if same_host else origin - org
        for d in evs:
            e = Event(**d)
            e.start_ns += shift
            e.end_ns += shift
            events.append(e)
    return events


def gather_and_write(
    recorder: TimelineRecorder,
    out_dir: str | Path,
    *,
    ranks: int,
    microbatches: int,
    stages_per_rank: int = 1,
    schedule: str = "",
    group: dist.ProcessGroup | None = None,
    rank_map: dict[int, int] | None = None,
) -> TimelineSummary | None:
    """Collective: gather on all ranks of ``group``; rank 0 of it writes the files.

    ``rank_map`` maps global ranks to rows (e.g. pipeline ranks of one data-parallel
    replica); events of unmapped ranks are dropped.
    """
    events = gather_events(recorder, group)
    if rank_map is not None:
        kept = []
        for e in events:
            if e.rank in rank_map:
                e.rank = rank_map[e.rank]
                kept.append(e)
        events = kept
    summary = summarize(events, ranks, microbatches, stages_per_rank, schedule)
    if dist.is_initialized() and dist.get_rank(group) != 0:
        return summary
    write_timeline(events, out_dir, summary)
    return summary
