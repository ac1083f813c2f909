"""The prediction half of ``python -m scripts.bench wavefront``: per-layer chunk costs measured
in this process on the benchmark's own batches, the link and all-reduce measured between two
processes, and :func:`parallel.planning.wavefront_sim.simulate_wavefront` on them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from data.batching import Batch, Batcher
from data.tokenizer import PAD_ID
from nmt.config import AppConfig
from nmt.machine import hostmem
from nmt.models.dropout import seed_masks
from nmt.models.gnmt import GNMT
from nmt.models.gnmt_layers import attend
from nmt.models.wavefront import chunk_bounds
from nmt.prepare.splits import prepare_corpus
from nmt.train.build import autocast_dtype, build_from_config, output_prior, seed_everything
from nmt.train.trainer import adam
from nmt.train.wave_memory import as_leaves
from nmt.train.wave_program import WaveProgram
from parallel.planning.links import Link
from parallel.planning.wavefront_sim import WaveLayer, WaveResult, simulate_wavefront
from parallel.runtime.engine import init_distributed, launch
from parallel.runtime.timeline import TimelineRecorder
from parallel.runtime.wave import Carried, Wire
from scripts.bench._wave_parts import encoder_costs, generator_costs


def run_batches(cfg: AppConfig, steps: int) -> tuple[GNMT, list[Batch]]:
    """The run's model (seeded as ``nmt-train`` seeds it) and its first ``steps`` batches."""
    corpus = prepare_corpus(cfg.data, cfg.train.seed)
    src, tgt = corpus.ids["train"]
    tc = cfg.train
    batcher = Batcher(src, tgt, cfg.data.batch_tokens, cfg.data.pad_multiple, 1, tc.seed)
    seed_everything(tc.seed)
    model = build_from_config(
        cfg.model, corpus.tokenizer.vocab_size, output_prior(cfg.model, corpus)
    )
    assert isinstance(model, GNMT)
    it = iter(batcher)
    return model, [next(it) for _ in range(steps)]


def unit_costs(cfg: AppConfig, model: GNMT, batches: list[Batch], chunks: int) -> dict[str, float]:
    """Mean ms per batch of each piece of the wave, measured on one thread with the wave's
    own code (all layers in this process; after one untimed pass over the batches):
    ``enc1_F/B`` (whole), ``enc_F/B`` (encoder chunks), ``dec1_F/B`` (Dec1+Attention chunks,
    the memory and embedding backward), ``dec_F/B`` (Dec2..DecD chunks), ``gen``
    (generator forward + backward, all chunks), ``step`` (the whole wave), ``extra``
    (clip + Adam over every parameter)."""
    amp = autocast_dtype(cfg.train.precision, torch.device("cpu"))
    rec = TimelineRecorder(0)
    owners = [0] * len(model.stages)
    program = WaveProgram(model, owners, 0, chunks, Wire(torch.device("cpu")), rec)
    opt = adam(list(model.parameters()), 1e-9)
    model.train()
    totals: dict[str, float] = {}
    for b in batches:  # warm-up: oneDNN primitives, allocator
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            program.run(b, 1.0 / max(b.ntokens, 1), PAD_ID, cfg.train.label_smoothing)
        model.zero_grad(set_to_none=True)
    rec.enable()
    for i, b in enumerate(batches):
        seed_masks(model, cfg.train.seed, i)
        rec.events.clear()
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            program.run(b, 1.0 / max(b.ntokens, 1), PAD_ID, cfg.train.label_smoothing)
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        add(totals, "step", (t1 - t0) * 1e3)
        add(totals, "extra", (time.perf_counter() - t1) * 1e3)
        for e in rec.events:
            add(totals, piece(e.stage, e.kind, model), (e.end_ns - e.start_ns) / 1e6)
    out = {k: v / len(batches) for k, v in totals.items()}
    with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        upper = upper_decoder_costs(model, batches, chunks)
        attention = attention_costs(model, batches, chunks)
    for kind in ("F", "B"):  # one process runs Dec1..DecD as one segment: take Dec2..D out
        out[f"dec_{kind}"] = upper[kind]
        out[f"dec1_{kind}"] = max(out[f"dec1_{kind}"] - upper[kind], 0.0)
        out[f"attn_{kind}"] = min(attention[kind], out[f"dec1_{kind}"])  # part of Dec1's
    return out


def attention_costs(model: GNMT, batches: list[Batch], chunks: int) -> dict[str, float]:
    """Mean ms per batch of Dec1's attention alone (a part of ``dec1_F/B``): the memory
    and every target chunk's attention forward; every chunk's backward (last first) and the
    memory's; random inputs of the batch's shapes; one untimed pass first. With
    ``parallel.attention_split`` each of two ranks is taken to run half of it."""
    attention = model.attn_stage.attention
    totals = {"F": 0.0, "B": 0.0}
    for rep in range(2):
        for b in batches:
            spans = chunk_bounds(b.tgt_in.size(0), chunks)
            batch, hidden = b.tgt_in.size(1), model.hidden
            enc = torch.randn(b.src.size(0), batch, hidden, requires_grad=True)
            queries = [torch.randn(e - a, batch, hidden, requires_grad=True) for a, e in spans]
            t0 = time.perf_counter()
            memory = as_leaves(model, enc, b.src_len)
            outs = [attend(attention, q, memory.memory) for q in queries]
            t1 = time.perf_counter()
            for y in reversed(outs):
                torch.autograd.backward([y], [torch.ones_like(y)])
            memory.backward()
            t2 = time.perf_counter()
            if rep:
                totals["F"] += (t1 - t0) * 1e3
                totals["B"] += (t2 - t1) * 1e3
    model.zero_grad(set_to_none=True)
    return {k: v / len(batches) for k, v in totals.items()}


def upper_decoder_costs(model: GNMT, batches: list[Batch], chunks: int) -> dict[str, float]:
    """Mean ms per batch of Dec2..DecD over the batch's target chunks, forward and backward,
    run as a wavefront rank runs them (:class:`parallel.runtime.wave.Carried`: one call per
    chunk, the carried state's gradient handed back); random inputs of the batch's shapes,
    one untimed pass first."""
    rec = TimelineRecorder(0)
    for rep in range(2):
        if rep:
            rec.enable()
        for i, b in enumerate(batches):
            seed_masks(model, 0, rep, i)  # every batch draws its masks, as in a run
            spans = chunk_bounds(b.tgt_in.size(0), chunks)
            total, batch = b.tgt_in.size(0), b.tgt_in.size(1)
            for stage in model.dec_stages:
                seg = Carried(upper_chunk(stage, spans, total), 0, rec)
                for c, (a, e) in enumerate(spans):
                    shape = (e - a, batch, model.hidden)
                    seg.forward(c, tuple(torch.randn(shape, requires_grad=True) for _ in "hc"))
                for c in reversed(range(len(spans))):
                    a, e = spans[c]
                    seg.backward(c, [torch.ones(e - a, batch, model.hidden)])
    model.zero_grad(set_to_none=True)
    totals = {"F": 0.0, "B": 0.0}
    for ev in rec.events:
        totals[ev.kind] += (ev.end_ns - ev.start_ns) / 1e6
    return {k: v / len(batches) for k, v in totals.items()}


def upper_chunk(stage: Any, spans: list[tuple[int, int]], total: int) -> Any:
    """A :data:`parallel.runtime.wave.ChunkFn` of one upper decoder layer: (h, ctx) -> (h',)."""

    def run(c: int, x: tuple[Tensor, ...], state: Any) -> tuple[tuple[Tensor, ...], Any]:
        y, new = stage.chunk(x[0], x[1], state, (spans[c][0], total))
        return (y,), new

    return run


def unit_costs_together(
    overrides: list[str],
    steps: int,
    skip: int,
    chunks: list[int],
    shares: list[float],
    encoder_shares: list[tuple[float, float]],
) -> dict[int, dict[str, float]]:
    """:func:`unit_costs` for each C, measured in two processes at once (each with its own
    model and the same batches ``skip..steps``): a wavefront rank's pieces run while the other
    rank computes, and the two slow each other down (memory bandwidth, caches), with
    :func:`~scripts.bench._wave_parts.generator_costs` for each of ``shares`` (C > 1) and
    :func:`~scripts.bench._wave_parts.encoder_costs` for each of ``encoder_shares`` (C = 1).
    Rank 0's."""
    args = (overrides, steps, skip, chunks, shares, encoder_shares)
    out = launch(_together_worker, *args, nproc=2, timeout_s=900)
    return dict(out[0])


def _together_worker(
    overrides: list[str],
    steps: int,
    skip: int,
    chunks: list[int],
    shares: list[float],
    encoder_shares: list[tuple[float, float]],
) -> dict[int, dict[str, float]]:
    from nmt.config import compose_config

    hostmem.tune()
    hostmem.cap_onednn_cache()
    torch.set_num_threads(1)
    ctx = init_distributed(1, 2, backend="gloo", device="cpu", timeout_s=900)
    try:
        cfg = compose_config(overrides)
        model, batches = run_batches(cfg, steps)
        amp = autocast_dtype(cfg.train.precision, torch.device("cpu"))
        res = {}
        for c in chunks:
            dist.barrier()  # both start each C together
            res[c] = unit_costs(cfg, model, batches[skip:], c)
            with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                if c > 1:  # the wave's chunks (C = 1: the split encoder's whole-sequence costs)
                    eps = cfg.train.label_smoothing
                    res[c] |= generator_costs(model, batches[skip:], c, shares, eps)
                else:
                    res[c] |= encoder_costs(model, batches[skip:], encoder_shares)
    finally:
        ctx.close()
    return res


def add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


def piece(unit: int, kind: str, model: GNMT) -> str:
    if unit == 0:
        return f"enc1_{kind}"
    if unit < model.n_enc:
        return f"enc_{kind}"
    if unit == model.n_enc:
        return f"dec1_{kind}"
    if unit < len(model.stages) - 1:
        return f"dec_{kind}"
    return "gen"


@dataclass(frozen=True)
class WaveSpec:
    """One wavefront run of the benchmark: ``c4``, ``c4/split``, ``c4/split/b3-2/s0.5``,
    ``c4/split/b3-2/s0.6/attn``, ``c4/split/b3-2/s0.6/e0.45/attn/thr`` (time chunks,
    ``parallel.encoder_split``, ``parallel.balance``, ``generator_share``, rank 0's share
    of the split encoder's sentences (``encoder_shares=[E,1-E]``; 0: equal),
    ``attention_split``, ``wave_threads``: the ranks as threads of one process; ``sync``:
    ``overlap_gradients=false``)."""

    chunks: int
    split: bool = False
    balance: tuple[int, ...] = ()
    share: float = 0.0
    attention: bool = False
    threads: bool = False
    encoder: float = 0.0
    sync: bool = False

    @classmethod
    def parse(cls, text: str) -> WaveSpec:
        head, *rest = text.split("/")
        split, attention, threads = "split" in rest, "attn" in rest, "thr" in rest
        balance = tuple(int(x) for r in rest if r.startswith("b") for x in r[1:].split("-"))
        share = next((float(r[1:]) for r in rest if r[:1] == "s" and r[1:2].isdigit()), 0.0)
        encoder = next((float(r[1:]) for r in rest if r[:1] == "e" and r[1:2].isdigit()), 0.0)
        chunks, sync = int(head.removeprefix("c")), "sync" in rest
        return cls(chunks, split, balance, share, attention, threads, encoder, sync)

    @property
    def name(self) -> str:
        parts = [f"c{self.chunks}"] + ["split"] * self.split
        parts += [f"b{'-'.join(map(str, self.balance))}"] if self.balance else []
        parts += [f"s{self.share}"] if self.share else []
        parts += [f"e{self.encoder}"] if self.encoder else []
        parts += ["attn"] * self.attention + ["thr"] * self.threads
        return "_".join(parts + ["sync"] * self.sync)

    @property
    def encoder_shares(self) -> tuple[float, float]:
        """Ranks 0 and 1's shares of the split encoder's sentences."""
        e = self.encoder or 0.5
        return (e, 1.0 - e)

    def overrides(self) -> list[str]:
        balance = ",".join(map(str, self.balance))
        out = ["parallel=wavefront", "parallel.pp=2", f"parallel.time_chunks={self.chunks}",
               f"parallel.encoder_split={str(self.split).lower()}",
               f"parallel.generator_share={self.share}",
               f"parallel.attention_split={str(self.attention).lower()}",
               f"parallel.wave_threads={str(self.threads).lower()}",
               f"parallel.overlap_gradients={str(not self.sync).lower()}"]  # fmt: skip
        out += [f"parallel.balance=[{balance}]"] if self.balance else []
        shares = ",".join(str(round(x, 6)) for x in self.encoder_shares)
        return out + ([f"parallel.encoder_shares=[{shares}]"] if self.encoder else [])


def predict(
    costs: dict[str, float],
    spec: WaveSpec,
    sizes: dict[str, float],
    link: dict[str, float],
    whole: dict[str, float],
) -> WaveResult:
    """The simulator's step for 2 processes (the default balance: every layer but the
    generator on rank 0; ``b3-2``: the last decoder layer with the generator on rank 1):
    Enc1 (whole) and the encoder chunks on rank 0, or with ``split`` one encoder layer
    split over both ranks (whole-sequence costs ``whole``; with
    :func:`~scripts.bench._wave_parts.encoder_costs` in ``whole``: scaled by the parts' sum
    over the whole, the shares the parts' fractions of it); Dec1+Attention (gather);
    Dec2..D; the generator (loss per chunk), its ``share`` of the sentences split off to
    rank 0 (with :func:`~scripts.bench._wave_parts.generator_costs` in ``costs``: the
    generator's time scaled by the parts' sum over the whole, the shares the parts' fractions
    of it). ``sizes``: mean
    target and source length, batch, hidden; tensors travel in float32 (``link``: between
    processes, or copies in memory between threads)."""
    tt, ts, bt, hidden = sizes["tt"], sizes["ts"], sizes["bt"], int(sizes["hidden"])
    steps = max(round(tt), spec.chunks)
    dec_bytes = int(2 * 4 * tt * bt * hidden)
    shares, gen_ms = (spec.share, 1.0 - spec.share), costs["gen"]
    parts = [costs.get(f"gen_s{spec.share}_{r}", 0.0) for r in (0, 1)]
    if spec.share > 0 and min(parts) > 0:  # the ranks' parts, timed at their own shapes
        gen_ms *= sum(parts) / costs[f"gen_s{spec.share}_whole"]
        shares = (parts[0] / sum(parts), parts[1] / sum(parts))
    if spec.balance not in ((), (4, 1), (3, 2)):
        raise SystemExit(f"{spec.name}: the prediction models balance 4-1 and 3-2 (gnmt_demo)")
    if spec.attention and not (spec.split and spec.balance == (3, 2)):
        raise SystemExit(f"{spec.name}: attn needs split and b3-2")
    rest = 1 if spec.balance == (3, 2) else 0
    decoder = [WaveLayer("Dec1", costs["dec1_F"], costs["dec1_B"], dec_bytes, steps, gather=True)]
    placement = [0]
    if spec.attention:  # Dec1 with the attention of rank 0's share; rank 1's on rank 1
        decoder = attention_layers(costs, dec_bytes, steps, spec.encoder_shares)
        placement = [0, 1]
    layers = [
        *decoder,
        WaveLayer("Dec", costs["dec_F"], costs["dec_B"], dec_bytes, steps),
        WaveLayer("Generator", gen_ms, 0.0, 0, steps, False, chunk_loss=True,
                  split=spec.share > 0, shares=shares if spec.share > 0 else ()),
    ]  # fmt: skip
    placement += [rest, 1]
    if spec.split:
        fwd, bwd = whole["enc1_F"] + whole["enc_F"], whole["enc1_B"] + whole["enc_B"]
        enc_shares = spec.encoder_shares
        key = f"enc_e{enc_shares[0]}"
        parts = [whole.get(f"{key}_{r}", 0.0) for r in (0, 1)]
        if min(parts) > 0:  # the ranks' parts, timed at their own shapes
            scale = sum(parts) / whole[f"{key}_whole"]
            fwd, bwd = fwd * scale, bwd * scale
            enc_shares = (parts[0] / sum(parts), parts[1] / sum(parts))
        encoder = [WaveLayer("Encoder", fwd, bwd, int(4 * ts * bt * hidden), max(round(ts), 1),
                             False, True, split=True, shares=enc_shares)]  # fmt: skip
    else:
        encoder = [WaveLayer("Embed+Enc1", costs["enc1_F"], costs["enc1_B"], 0, steps, False, True),
                   WaveLayer("Enc", costs["enc_F"], costs["enc_B"], 0, steps)]  # fmt: skip
    name = "memory" if spec.threads else "gloo-loopback"
    wire = Link(name, link["bytes_per_s"], link["latency_ms"] / 1e3)
    return simulate_wavefront([*encoder, *layers], [0] * len(encoder) + placement, spec.chunks,
                              wire, step_extra_ms=extra_ms(costs, link))  # fmt: skip


def extra_ms(costs: dict[str, float], link: dict[str, float]) -> float:
    """The simulator's time after the wave: the gradient sum, clip and Adam, the loop."""
    return link["allreduce_ms"] + costs["extra"] + costs.get("loop", 0.0)


def attention_layers(
    costs: dict[str, float], dec_bytes: int, steps: int, shares: tuple[float, float]
) -> list[WaveLayer]:
    """``attention_split`` over two ranks, each with its ``shares`` of the sentences of the
    split encoder: Dec1 (its LSTM and the attention of rank 0's sentences, over rank 0's
    part of the encoder) on rank 0, the attention of rank 1's (over rank 1's part) on rank
    1; Dec1 sends h and rank 0's part of the context."""
    theirs = {k: costs[f"attn_{k}"] * shares[1] for k in "FB"}
    own = {k: costs[f"dec1_{k}"] - theirs[k] for k in "FB"}
    sent = int(dec_bytes * (0.5 + shares[0] / 2))  # h for every sentence, ctx for rank 0's
    return [
        WaveLayer("Dec1", own["F"], own["B"], sent, steps, gather=True, memory_parts=(0,)),
        WaveLayer("Attention", theirs["F"], theirs["B"], dec_bytes, steps, False, gather=True,
                  memory_from=2, memory_parts=(1,)),
    ]  # fmt: skip


def summary(result: WaveResult) -> dict[str, Any]:
    return {"step_ms": round(result.step_ms, 1),
            "busy_frac": [round(x, 3) for x in result.busy_frac]}  # fmt: skip
