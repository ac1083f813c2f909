"""Cost tables: per-stage time and memory of one micro-batch, saved as JSON.

File format (``save_cost_tables``; the profiler writes it, the simulator/planner read it)::

    {"kind": "pipenmt-cost-table", "version": 1,
     "tables": [ {<CostTable fields>, "stages": [{<StageCost fields>}, ...]}, ...]}

One table per shape bucket (``src_len``, ``tgt_len``, ``micro_batch``); ``weight`` is the
bucket's share of training steps (the planner minimises the weighted mean step time).
Times are medians in milliseconds for one micro-batch of ``micro_batch`` sentences.
``*_floor_ms`` is the latency floor (launch-bound time of a tiny micro-batch; the profiler
can take the time at micro-batch 1): ``at_micro_batch`` scales time as
``max(floor, t * b / micro_batch)`` (roofline).  ``out_bytes_per_mb`` is the size of
what the stage sends to the next one (the gradient sent back has the same size).
``tied_param_bytes``: the parameter shared by stage 0 and the last stage (counted in both
stages' ``param_bytes``; only one copy when both sit on one rank).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from parallel.errors import PlacementError

COST_TABLE_KIND = "pipenmt-cost-table"
COST_TABLE_VERSION = 1
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class StageCost:
    name: str
    fwd_ms: float
    bwd_ms: float
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    act_bytes_per_mb: int
    act_bytes_per_mb_recompute: int
    out_bytes_per_mb: int
    fwd_floor_ms: float = 0.0
    bwd_floor_ms: float = 0.0

    @property
    def static_bytes(self) -> int:
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes


@dataclass(frozen=True)
class CostTable:
    model: str
    device: str
    dtype: str
    src_len: int
    tgt_len: int
    micro_batch: int
    batch: int
    stages: tuple[StageCost, ...]
    tied_param_bytes: int = 0
    weight: float = 1.0
    source: str = "measured"
    notes: str = ""

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def at_micro_batch(self, micro_batch: int) -> CostTable:
        """The table for another micro-batch size (roofline time, linear activations)."""
        if micro_batch < 1:
            raise PlacementError(f"micro_batch must be >= 1, got {micro_batch}")
        return _scaled(self, micro_batch)

    def for_microbatches(self, microbatches: int) -> CostTable:
        """The table for splitting ``batch`` into ``microbatches`` equal micro-batches."""
        if microbatches < 1 or self.batch % microbatches:
            raise PlacementError(
                f"batch {self.batch} does not split into microbatches={microbatches}"
            )
        return self.at_micro_batch(self.batch // microbatches)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any], where: str = "cost table") -> CostTable:
        return _table_from_dict(d, where)


@lru_cache(maxsize=1024)
def _scaled(table: CostTable, micro_batch: int) -> CostTable:
    f = micro_batch / table.micro_batch

    def scale(s: StageCost) -> StageCost:
        return replace(
            s,
            fwd_ms=max(s.fwd_floor_ms, s.fwd_ms * f),
            bwd_ms=max(s.bwd_floor_ms, s.bwd_ms * f),
            act_bytes_per_mb=round(s.act_bytes_per_mb * f),
            act_bytes_per_mb_recompute=round(s.act_bytes_per_mb_recompute * f),
            out_bytes_per_mb=round(s.out_bytes_per_mb * f),
        )

    return replace(table, micro_batch=micro_batch, stages=tuple(scale(s) for s in table.stages))


def digest(tables: list[CostTable]) -> str:
    text = json.dumps([t.to_dict() for t in tables], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_cost_tables(path: str | Path, tables: list[CostTable]) -> None:
    doc = {
        "kind": COST_TABLE_KIND,
        "version": COST_TABLE_VERSION,
        "tables": [t.to_dict() for t in tables],
    }
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def load_cost_tables(path: str | Path) -> list[CostTable]:
    """Load and validate a cost-table file (``PlacementError`` with one line otherwise)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PlacementError(f"cannot read cost table {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != COST_TABLE_KIND:
        raise PlacementError(f"{path}: not a cost table (kind != {COST_TABLE_KIND!r})")
    if doc.get("version") != COST_TABLE_VERSION:
        raise PlacementError(
            f"{path}: cost table version {doc.get('version')!r}, expected {COST_TABLE_VERSION}"
        )
    raw = doc.get("tables")
    if not isinstance(raw, list) or not raw:
        raise PlacementError(f"{path}: 'tables' must be a non-empty list")
    tables = [_table_from_dict(t, f"{path} table {i}") for i, t in enumerate(raw)]
    counts = {t.num_stages for t in tables}
    if len(counts) != 1:
        raise PlacementError(f"{path}: tables disagree on the stage count: {sorted(counts)}")
    return tables


def _field_types(cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(cls)}


def _check(d: Any, cls: type, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise PlacementError(f"{where}: expected an object, got {type(d).__name__}")
    types = _field_types(cls)
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise PlacementError(f"{where}: unknown fields {unknown}")
    out: dict[str, Any] = {}
    for name, value in d.items():
        kind = types[name]
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            "float": isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value >= 0,
        }.get(kind, True)
        if not ok:
            raise PlacementError(f"{where}: field {name}={value!r} must be a non-negative {kind}")
        out[name] = float(value) if kind == "float" else value
    return out


def _table_from_dict(d: dict[str, Any], where: str) -> CostTable:
    vals = _check(d, CostTable, where)
    raw_stages = vals.pop("stages", None)
    if not isinstance(raw_stages, list) or not raw_stages:
        raise PlacementError(f"{where}: 'stages' must be a non-empty list")
    stages = []
    for i, s in enumerate(raw_stages):
        sv = _check(s, StageCost, f"{where} stage {i}")
        try:
            stage = StageCost(**sv)
        except TypeError as e:
            raise PlacementError(f"{where} stage {i}: {e}") from e
        if stage.fwd_floor_ms > stage.fwd_ms or stage.bwd_floor_ms > stage.bwd_ms:
            raise PlacementError(f"{where} stage {i}: floor time exceeds the measured time")
        stages.append(stage)
    try:
        table = CostTable(stages=tuple(stages), **vals)
    except TypeError as e:
        raise PlacementError(f"{where}: {e}") from e
    if table.micro_batch < 1 or table.batch < 1:
        raise PlacementError(
            f"{where}: micro_batch={table.micro_batch} batch={table.batch} must be >= 1"
        )
    return table


# ----------------------------------------------------------------------------- analytic GNMT


def _lstm_params(d_in: int, hidden: int) -> int:
    return 4 * hidden * (d_in + hidden) + 8 * hidden


@dataclass(frozen=True)
class _Work:
    name: str
    flops: float  # forward FLOPs of one micro-batch
    launches: int  # sequential kernel launches in the forward (latency floor)
    params: int
    act: int  # saved activation elements
    act_recompute: int  # elements kept with recompute (the stage input)
    out: int  # elements sent to the next stage
    out_extra_bytes: int = 0  # int64 lengths etc.


def _gnmt_work(layers: int, hidden: int, vocab: int, ts: int, tt: int, b: int) -> list[_Work]:
    """Per-stage forward work of a GNMT-like stage list for one micro-batch of ``b``."""
    h, v = hidden, vocab
    ns, nt = ts * b, tt * b
    lens = 8 * b
    enc_in = ns * 2 * h + nt * h  # Enc1 output (h[2H] + emb_tgt); later encoders send H
    work = [
        _Work(
            "Embed+Enc1",
            2 * 8 * h * (h + h) * ns,
            2 * ts,
            v * h + 2 * _lstm_params(h, h),
            ns * (h + 12 * h) + nt * h,
            3 * b * max(ts, tt),
            enc_in,
            lens,
        )
    ]
    for i in range(2, layers + 1):
        d_in = 2 * h if i == 2 else h
        out = ns * h + nt * h
        work.append(
            _Work(
                f"Enc{i}", 8 * h * (d_in + h) * ns, 2 * ts, _lstm_params(d_in, h),
                ns * (d_in + 6 * h), ns * d_in + nt * h, out, lens,
            )
        )  # fmt: skip
    attn_flops = 2 * h * h * (ns + nt) + 4 * ts * h * nt
    work.append(
        _Work(
            "Dec1+Attention", 8 * h * (h + h) * nt + attn_flops, 6 * tt,
            _lstm_params(h, h) + 2 * h * h + 2 * h + 1,
            nt * (7 * h + 2 * ts + 2 * h) + ns * h, ns * h + nt * h, 2 * nt * h,
        )
    )  # fmt: skip
    for i in range(2, layers + 1):
        work.append(
            _Work(
                f"Dec{i}", 8 * h * (2 * h + h) * nt, 2 * tt, _lstm_params(2 * h, h),
                nt * (8 * h), 2 * nt * h, 2 * nt * h,
            )
        )  # fmt: skip
    work.append(
        _Work("Generator", (2 * h * v + 5 * v) * nt, 3, h * v + v, nt * (h + 2 * v), 2 * nt * h, 0)
    )
    return work


def work_cost(w: _Work, flops_per_s: float, launch_s: float, act: int, out: int) -> StageCost:
    """The roofline cost of one stage's forward work ``w``: time = max(FLOPs / ``flops_per_s``,
    launches * ``launch_s``), backward 2x both; fp32 parameters and gradients, Adam state 2x;
    activations at ``act`` bytes per element, the boundary tensors at ``out``."""
    floor_ms = w.launches * launch_s * 1e3
    fwd_ms = max(floor_ms, w.flops / flops_per_s * 1e3)
    return StageCost(
        name=w.name,
        fwd_ms=fwd_ms,
        bwd_ms=2 * fwd_ms,
        param_bytes=4 * w.params,
        grad_bytes=4 * w.params,
        optimizer_bytes=8 * w.params,
        act_bytes_per_mb=act * w.act,
        act_bytes_per_mb_recompute=act * w.act_recompute,
        out_bytes_per_mb=out * w.out + w.out_extra_bytes,
        fwd_floor_ms=floor_ms,
        bwd_floor_ms=2 * floor_ms,
    )


def analytic_gnmt_costs(
    layers: int,
    hidden: int,
    vocab: int,
    src_len: int,
    tgt_len: int,
    batch: int,
    micro_batch: int,
    flops_per_s: float,
    launch_s: float = 0.0,
    dtype: str = "float32",
    device: str = "analytic",
) -> CostTable:
    """An analytic cost table for gnmt``layers`` (``2*layers+1`` stages).

    Forward time = max(FLOPs / ``flops_per_s``, sequential launches * ``launch_s``) (LSTM
    time steps are sequential: ~2 launches per step per layer, ~6 with attention); backward
    is 2x both.  LSTM FLOPs: 4 gates * 2 * (in + H) * H per token per direction; attention:
    query/key projections plus 4*Ts*H per target token; generator 2*H*V per target token.
    Parameters, gradients fp32; Adam state 2x parameters; activations in ``dtype``.
    """
    if dtype not in DTYPE_BYTES:
        raise PlacementError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPE_BYTES)}")
    if min(layers, hidden, vocab, src_len, tgt_len, batch, micro_batch) < 1 or flops_per_s <= 0:
        raise PlacementError(
            f"analytic costs need positive sizes: layers={layers} hidden={hidden} vocab={vocab} "
            f"src_len={src_len} tgt_len={tgt_len} batch={batch} micro_batch={micro_batch} "
            f"flops_per_s={flops_per_s}"
        )
    ab = DTYPE_BYTES[dtype]
    work = _gnmt_work(layers, hidden, vocab, src_len, tgt_len, micro_batch)
    stages = [work_cost(w, flops_per_s, launch_s, ab, ab) for w in work]
    return CostTable(
        model=f"gnmt{layers}",
        device=device,
        dtype=dtype,
        src_len=src_len,
        tgt_len=tgt_len,
        micro_batch=micro_batch,
        batch=batch,
        stages=tuple(stages),
        tied_param_bytes=4 * hidden * vocab,
        source="analytic",
        notes=f"hidden={hidden} vocab={vocab} flops_per_s={flops_per_s:.3g} "
        f"launch_s={launch_s:.3g}",
    )
