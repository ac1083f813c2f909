"""Helpers for the pipeline tests: a toy stage list that follows the stage boundary contract
(docs/DESIGN.md), a label-smoothed loss, deterministic batches, and a small multi-process
harness (one process per rank, a TCPStore hosted by the test process, hard timeouts).

The real GNMT stages (``nmt.models.gnmt.build_stages``) are used when that module exists; the toy
model keeps the properties the engine must cope with: int64 tensors passed between stages,
a float input a stage passes through without using it (encoder stages forward ``emb_tgt``),
a final stage that ignores one of its inputs (the generator ignores ``ctx``), and one
parameter shared by stage 0 (embedding) and the last stage (output projection).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
PAD = 0


# --------------------------------------------------------------------------- toy model


class ToyEmbedEnc1(nn.Module):
    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden, padding_idx=PAD)
        self.rnn = nn.LSTM(hidden, hidden, bidirectional=True)

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> tuple[Tensor, ...]:
        x = self.embed(src)
        h, _ = self.rnn(x)
        mask = (torch.arange(src.size(0), device=src.device)[:, None] < src_len[None, :]).unsqueeze(
            -1
        )
        return h * mask, src_len, self.embed(tgt_in)


class ToyEnc(nn.Module):
    def __init__(self, d_in: int, hidden: int, residual: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, hidden)
        self.residual = residual

    def forward(self, h: Tensor, src_len: Tensor, emb_tgt: Tensor) -> tuple[Tensor, ...]:
        out = torch.tanh(self.lin(h))
        if self.residual:
            out = out + h
        return out, src_len, emb_tgt  # emb_tgt passes through unused


class ToyDec1(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(hidden, hidden)
        self.query = nn.Linear(hidden, hidden)

    def forward(self, enc_out: Tensor, src_len: Tensor, emb_tgt: Tensor) -> tuple[Tensor, ...]:
        h, _ = self.rnn(emb_tgt)
        scores = torch.einsum("tbh,sbh->bts", self.query(h), enc_out)
        mask = (
            torch.arange(enc_out.size(0), device=enc_out.device)[None, None, :]
            >= src_len[:, None, None]
        )
        attn = scores.masked_fill(mask, -1e9).softmax(-1)
        ctx = torch.einsum("bts,sbh->tbh", attn, enc_out)
        return h, ctx


class ToyDec(nn.Module):
    def __init__(self, hidden: int, residual: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(2 * hidden, hidden)
        self.residual = residual

    def forward(self, h: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        out = torch.tanh(self.lin(torch.cat([h, ctx], -1)))
        return (out + h if self.residual else out), ctx


class ToyGenerator(nn.Module):
    def __init__(self, embed: nn.Embedding) -> None:
        super().__init__()
        self.proj = nn.Linear(embed.embedding_dim, embed.num_embeddings, bias=False)
        self.proj.weight = embed.weight  # tied

    def forward(self, h: Tensor, ctx: Tensor) -> Tensor:  # ctx is deliberately unused
        out: Tensor = self.proj(h)
        return out


def toy_stages(
    vocab: int = 40, hidden: int = 8, enc_layers: int = 2, dec_layers: int = 2, seed: int = 0
) -> list[nn.Module]:
    torch.manual_seed(seed)
    first = ToyEmbedEnc1(vocab, hidden)
    stages: list[nn.Module] = [first]
    for i in range(2, enc_layers + 1):
        stages.append(ToyEnc(2 * hidden if i == 2 else hidden, hidden, residual=i >= 3))
    stages.append(ToyDec1(hidden))
    for i in range(2, dec_layers + 1):
        stages.append(ToyDec(hidden, residual=i >= 3))
    stages.append(ToyGenerator(first.embed))
    return stages


def gnmt_stages(
    vocab: int = 40, hidden: int = 16, enc_layers: int = 2, dec_layers: int = 2, seed: int = 0
) -> list[nn.Module] | None:
    """The real GNMT stage list (dropout 0) when ``nmt.models.gnmt.build_stages`` exists, else
    None."""
    try:
        from nmt.models.gnmt import build_stages
    except ImportError:
        return None
    torch.manual_seed(seed)
    return list(
        build_stages(
            vocab_size=vocab,
            hidden=hidden,
            enc_layers=enc_layers,
            dec_layers=dec_layers,
            dropout=0.0,
            tie_embeddings=True,
            init_range=0.1,
            pad_id=PAD,
        )
    )


def make_stages(
    vocab: int = 40, hidden: int = 8, enc_layers: int = 2, dec_layers: int = 2, seed: int = 0
) -> list[nn.Module]:
    """GNMT stages if available (env PIPE_TEST_TOY=1 forces the toy model), else toy stages."""
    if os.environ.get("PIPE_TEST_TOY") != "1":
        real = gnmt_stages(vocab, 16, enc_layers, dec_layers, seed)
        if real is not None:
            return real
    return toy_stages(vocab, hidden, enc_layers, dec_layers, seed)


def model_kind() -> str:
    if os.environ.get("PIPE_TEST_TOY") == "1":
        return "toy"
    return "gnmt" if gnmt_stages(seed=0) is not None else "toy"


def smoothed_loss_sum(logits: Tensor, target: Tensor, eps: float = 0.1) -> Tensor:
    """Label-smoothed cross entropy SUMMED over non-pad target positions."""
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(-1)
    loss = (1.0 - eps) * nll + eps * smooth
    return (loss * (target != PAD)).sum()


@dataclass
class ToyBatch:
    src: Tensor
    src_len: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    ntokens: int

    @property
    def inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        return (self.src, self.src_len, self.tgt_in)


def make_batch(ts: int, tt: int, b: int, vocab: int = 40, seed: int = 0) -> ToyBatch:
    """A padded time-major batch (pad=0, eos=3) with varying lengths and one filler row."""
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(ts, b, dtype=torch.long)
    tgt_in = torch.zeros(tt, b, dtype=torch.long)
    tgt_out = torch.zeros(tt, b, dtype=torch.long)
    src_len = torch.randint(1, ts + 1, (b,), generator=g)
    tgt_len = torch.randint(1, tt + 1, (b,), generator=g)
    for j in range(b):
        n = int(src_len[j])
        src[: n - 1, j] = torch.randint(4, vocab, (n - 1,), generator=g)
        src[n - 1, j] = 3
        m = int(tgt_len[j])
        y = torch.randint(4, vocab, (m - 1,), generator=g)
        tgt_in[0, j] = 2
        tgt_in[1:m, j] = y
        tgt_out[: m - 1, j] = y
        tgt_out[m - 1, j] = 3
    if b > 1:  # a filler row: src=[eos], tgt all pad
        src[:, -1] = 0
        src[0, -1] = 3
        src_len[-1] = 1
        tgt_in[:, -1] = 0
        tgt_out[:, -1] = 0
    ntokens = int((tgt_out != PAD).sum())
    return ToyBatch(src, src_len, tgt_in, tgt_out, ntokens)


def reference_step(
    stages: Sequence[nn.Module], batch: ToyBatch, normaliser: float
) -> tuple[float, dict[str, Tensor]]:
    """Single-process forward/backward; returns the loss and grads keyed '<stage>.<param>'."""
    for s in stages:
        s.zero_grad(set_to_none=True)
    x: tuple[Tensor, ...] = batch.inputs
    out: object = None
    for s in stages:
        out = s(*x)
        x = out if isinstance(out, tuple) else (out,)
    assert isinstance(out, Tensor)
    loss = smoothed_loss_sum(out, batch.tgt_out) / normaliser
    loss.backward()  # type: ignore[no-untyped-call]
    return loss.item(), grads_by_name(stages, range(len(stages)))


def grads_by_name(stages: Sequence[nn.Module], indices: Sequence[int] | range) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for i in indices:
        for name, p in stages[i].named_parameters(remove_duplicate=False):
            if p.grad is not None:
                out[f"{i}.{name}"] = p.grad.detach().clone()
    return out


def assert_close(a: Tensor, b: Tensor, what: str, rel: float = 1e-5, atol: float = 1e-7) -> None:
    scale = max(float(b.abs().max()), 1e-6)
    err = float((a - b).abs().max())
    assert err <= rel * scale + atol, f"{what}: max abs err {err:.3g} (scale {scale:.3g})"


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerResult:
    rank: int
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    ended: float  # time.time() when the harness saw it exit


def run_ranks(
    scenario: str,
    world_size: int,
    *,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> list[WorkerResult]:
    """Run ``tests/pipeline_worker.py SCENARIO`` as WORLD_SIZE processes (ranks) on 127.0.0.1.

    The test process hosts the TCPStore (so a killed rank 0 does not take the store with it).
    Every process is killed when ``timeout`` expires; the results say who did what.
    """
    from torch._C._distributed_c10d import TCPStore

    port = free_port()
    store = TCPStore("127.0.0.1", port, world_size, is_master=True, wait_for_workers=False)
    procs: list[subprocess.Popen[str]] = []
    t0 = time.time()
    base = dict(os.environ)
    base.update(env or {})
    base.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world_size),
        PIPENMT_STORE_EXTERNAL="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO) + os.pathsep + base.get("PYTHONPATH", ""),
    )
    worker = "tests.pipeline_helpers"
    for rank in range(world_size):
        e = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", worker, scenario, *args],
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=str(REPO),
            )
        )
    import threading

    outs: dict[int, tuple[str, str, float]] = {}

    def collect(rank: int, p: subprocess.Popen[str]) -> None:
        out, err = p.communicate()
        outs[rank] = (out, err, time.time())

    threads = [
        threading.Thread(target=collect, args=(r, p), daemon=True) for r, p in enumerate(procs)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for rank, (t, p) in enumerate(zip(threads, procs, strict=True)):
        t.join(max(0.1, deadline - time.monotonic()))
        if t.is_alive():
            p.kill()
            t.join(30)
            out, err, ended = outs.get(rank, ("", "", time.time()))
            outs[rank] = (
                out,
                err + f"\n[harness] rank {rank} killed after {timeout}s timeout",
                ended,
            )
    results = [
        WorkerResult(r, p.returncode, *outs[r][:2], outs[r][2] - t0, outs[r][2])
        for r, p in enumerate(procs)
    ]
    del store
    return results


def check_ok(results: Sequence[WorkerResult]) -> None:
    bad = [r for r in results if r.returncode != 0]
    if bad:
        msg = "\n".join(
            f"--- rank {r.rank} rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
            for r in bad
        )
        raise AssertionError(f"worker(s) failed:\n{msg}")


# --------------------------------------------------------------------------- worker scenarios
# Run as ``python -m tests.pipeline_helpers SCENARIO`` by :func:`run_ranks`: one process per
# rank, several checks per process group (process start-up dominates on 2 vCPUs).


def _log(msg: str) -> None:
    rank = os.environ.get("RANK", "0")
    print(f"[rank {rank}] {msg}", flush=True)


def _check_grads(runner: object, ref: dict[str, Tensor], what: str, rel: float = 1e-5) -> int:
    from parallel.runtime.pipeline import PipelineRunner

    assert isinstance(runner, PipelineRunner)
    n = 0
    for s, mod in zip(runner.local_stages, runner.local_modules(), strict=True):
        for name, p in mod.named_parameters(remove_duplicate=False):
            key = f"{s}.{name}"
            assert p.grad is not None, f"{what}: {key} has no gradient"
            assert_close(p.grad, ref[key], f"{what}: grad {key}", rel)
            n += 1
    return n


def _runner(
    ctx: object,
    stages: list[nn.Module],
    placement: object,
    schedule: str,
    m: int,
    recompute: bool = False,
) -> object:
    from parallel.placement import Placement
    from parallel.runtime.distenv import DistContext
    from parallel.runtime.pipeline import PipelineRunner

    assert isinstance(ctx, DistContext) and isinstance(placement, Placement)
    return PipelineRunner(
        stages,
        smoothed_loss_sum,
        ctx=ctx,
        placement=placement,
        schedule=schedule,
        microbatches=m,
        recompute=recompute,
    )


def check_equivalence(
    ctx: object,
    configs: Sequence[tuple[str, object, str, int, bool]],
    shapes: Sequence[tuple[int, int, int]] = ((6, 5, 8),),
    build: Callable[..., list[nn.Module]] | None = None,
) -> None:
    """Loss and every gradient == single process, for each (name, placement, schedule, M)."""
    from parallel.runtime.pipeline import PipelineRunner

    for name, placement, schedule, m, recompute in configs:
        build = build or make_stages
        stages = build(seed=1)
        ref_stages = build(seed=1)
        runner = _runner(ctx, stages, placement, schedule, m, recompute)
        assert isinstance(runner, PipelineRunner)
        for i, (ts, tt, b) in enumerate(shapes):
            batch = make_batch(ts, tt, b, seed=i)
            for mod in runner.local_modules():
                mod.zero_grad(set_to_none=True)
            loss = runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
            ref_loss, ref = reference_step(ref_stages, batch, batch.ntokens)
            assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), f"{name}: {loss} vs {ref_loss}"
            n = _check_grads(runner, ref, f"{name} shape {(ts, tt, b)}")
        _log(f"CHECK {name}: loss {loss:.6f} == {ref_loss:.6f}, {n} grads match")


def scenario_equiv2(ctx: object) -> None:
    """World size 2: schedules x micro-batches, gnmt/looped, buckets, Adam, state dicts."""
    import tempfile

    from parallel.placement import contiguous, gnmt
    from parallel.runtime.distenv import DistContext
    from parallel.runtime.pipeline import PipelineRunner
    from parallel.runtime.stagewrap import ShapeGuardError

    assert isinstance(ctx, DistContext)
    n = len(make_stages())
    cont = contiguous(n, 2, [2, n - 2])
    auto_bal = contiguous(
        n, 2, None, [sum(p.numel() for p in s.parameters()) for s in make_stages()]
    )
    gn = gnmt(2, 2, 2, n)
    configs = [
        ("gpipe M=1", cont, "gpipe", 1, False),
        ("gpipe M=2", cont, "gpipe", 2, False),
        ("gpipe M=4", auto_bal, "gpipe", 4, False),
        ("gpipe M=8", cont, "gpipe", 8, False),
        ("1f1b M=2", cont, "1f1b", 2, False),
        ("1f1b M=4", cont, "1f1b", 4, False),
        ("1f1b M=8 recompute", cont, "1f1b", 8, True),
        ("gnmt interleaved_1f1b M=2", gn, "interleaved_1f1b", 2, False),
        ("gnmt interleaved_1f1b M=4", gn, "interleaved_1f1b", 4, False),
        ("gnmt looped_bfs M=2", gn, "looped_bfs", 2, False),
    ]
    check_equivalence(ctx, configs)
    # the toy model: int64 src_len crosses ranks, the generator ignores ctx (no grad at all)
    toy = toy_stages()
    toy_cont = contiguous(len(toy), 2, [2, len(toy) - 2])
    check_equivalence(
        ctx,
        [
            ("toy gpipe M=2", toy_cont, "gpipe", 2, False),
            ("toy 1f1b M=4 recompute", toy_cont, "1f1b", 4, True),
        ],
        build=toy_stages,
    )
    # several bucket shapes alternating between steps (cached pipelines per shape)
    shapes = [(6, 5, 8), (9, 7, 8), (6, 5, 8), (9, 7, 4), (9, 7, 8), (6, 5, 8)]
    check_equivalence(ctx, [("buckets 1f1b M=4", cont, "1f1b", 4, False)], shapes)
    check_equivalence(ctx, [("buckets gnmt M=2", gn, "interleaved_1f1b", 2, False)], shapes)

    # N Adam steps (with global-norm clipping) == single device
    stages, ref_stages = make_stages(seed=2), make_stages(seed=2)
    runner = _runner(ctx, stages, gn, "interleaved_1f1b", 2)
    assert isinstance(runner, PipelineRunner)
    opt = torch.optim.Adam(runner.parameters(), lr=1e-2)
    ref_params = list(nn.ModuleList(ref_stages).parameters())
    ref_opt = torch.optim.Adam(ref_params, lr=1e-2)
    for i in range(4):
        batch = make_batch(6 + i % 2, 5, 8, seed=10 + i)
        opt.zero_grad()
        runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
        norm = runner.clip_grad_norm_(0.5)
        opt.step()
        ref_opt.zero_grad()
        reference_step(ref_stages, batch, batch.ntokens)
        ref_norm = float(torch.nn.utils.clip_grad_norm_(ref_params, 0.5))
        ref_opt.step()
        assert abs(norm - ref_norm) <= 1e-5 * ref_norm, (norm, ref_norm)
    ref_sd = nn.ModuleList(ref_stages).state_dict()
    for k, v in runner.state_dict().items():
        # Adam divides by sqrt(v): near-zero gradients amplify rounding -> absolute slack
        assert_close(v, ref_sd[k], f"adam weight {k}", atol=1e-5)
    _log(f"CHECK adam x4 + clip: weights match (last norm {norm:.4f})")

    # validation loss (forward-only schedule, eval mode)
    batch = make_batch(7, 6, 6, seed=99)
    val = runner.forward_only(batch.inputs, batch.tgt_out)
    x: object = batch.inputs
    with torch.no_grad():
        for s in ref_stages:
            x = s(*x) if isinstance(x, tuple) else s(x)
    assert isinstance(x, Tensor)
    ref_val = float(smoothed_loss_sum(x, batch.tgt_out))
    assert abs(val - ref_val) <= 1e-5 * abs(ref_val), (val, ref_val)
    _log(f"CHECK forward_only: {val:.5f} == {ref_val:.5f}")

    # gather to a full single-device state dict, then re-place it into another placement
    full = runner.full_state_dict(prefix="stages.")
    if ctx.rank == 0:
        assert full is not None
        assert set(full) == {f"stages.{k}" for k in ref_sd}, "state dict keys"
        for k, v in ref_sd.items():
            assert_close(full[f"stages.{k}"], v, f"full state {k}", atol=1e-5)
    obj: list[object] = [full]
    torch.distributed.broadcast_object_list(obj, src=0)
    full_all = obj[0]
    assert isinstance(full_all, dict)
    other = _runner(ctx, make_stages(seed=7), cont, "1f1b", 2)
    assert isinstance(other, PipelineRunner)
    other.load_full_state_dict(full_all, prefix="stages.")
    for k, v in other.state_dict().items():
        assert_close(v, ref_sd[k], f"re-placed {k}", atol=1e-5)
    b2 = make_batch(6, 5, 8, seed=5)
    l_a = other.step(b2.inputs, b2.tgt_out, b2.ntokens)
    l_b = runner.step(b2.inputs, b2.tgt_out, b2.ntokens)
    assert abs(l_a - l_b) <= 1e-5 * abs(l_b), (l_a, l_b)
    _log("CHECK full_state_dict + load into another placement")

    # timeline
    runner.timeline.enable()
    for i in range(2):
        b3 = make_batch(6, 5, 8, seed=i)
        runner.step(b3.inputs, b3.tgt_out, b3.ntokens)
    runner.timeline.disable()
    out_dir = os.environ.get("PIPE_TEST_OUT") or tempfile.mkdtemp()
    summary = runner.write_timeline(out_dir)
    assert summary is not None and summary.steps == 2, summary
    if ctx.rank == 0:
        doc = json.loads((Path(out_dir) / "timeline.json").read_text())
        kinds = {e["name"][0] for e in doc["traceEvents"] if e.get("ph") == "X"}
        assert {"F", "B"} <= kinds, kinds
        assert (Path(out_dir) / "timeline.png").stat().st_size > 1000
    _log(
        f"CHECK timeline: bubble {summary.bubble_fraction:.2f} "
        f"theory {summary.theory_bubble_fraction:.2f}"
    )

    # shape guard: ranks handed different shapes fail fast, on every rank, and recover
    bad = make_batch(6 if ctx.rank == 0 else 7, 5, 8)
    try:
        runner.step(bad.inputs, bad.tgt_out, bad.ntokens)
    except ShapeGuardError as e:
        assert "rank 0" in str(e) and "rank 1" in str(e), str(e)
    else:
        raise AssertionError("shape mismatch between ranks not detected")
    good = make_batch(6, 5, 8)
    runner.step(good.inputs, good.tgt_out, good.ntokens)
    _log("CHECK shape guard")


def scenario_dp2pp2(ctx: object) -> None:
    """dp=2 x pp=2: each replica a different half batch == single device on the whole."""
    from parallel.placement import contiguous, gnmt
    from parallel.runtime.distenv import DistContext

    assert isinstance(ctx, DistContext)
    n = len(make_stages())
    for name, placement, schedule, m in (
        ("dp2 x pp2 1f1b M=2", contiguous(n, 2, [2, n - 2]), "1f1b", 2),
        ("dp2 x pp2 gnmt interleaved M=2", gnmt(2, 2, 2, n), "interleaved_1f1b", 2),
    ):
        stages, ref_stages = make_stages(seed=3), make_stages(seed=3)
        runner = _runner(ctx, stages, placement, schedule, m)
        full = make_batch(6, 5, 8, seed=4)
        lo, hi = 4 * ctx.dp_rank, 4 * ctx.dp_rank + 4
        mine = ToyBatch(
            full.src[:, lo:hi],
            full.src_len[lo:hi],
            full.tgt_in[:, lo:hi],
            full.tgt_out[:, lo:hi],
            int((full.tgt_out[:, lo:hi] != PAD).sum()),
        )
        from parallel.runtime.pipeline import PipelineRunner

        assert isinstance(runner, PipelineRunner)
        loss = runner.step(mine.inputs, mine.tgt_out, mine.ntokens)
        ref_loss, ref = reference_step(ref_stages, full, full.ntokens)
        assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), (loss, ref_loss)
        k = _check_grads(runner, ref, name)
        _log(f"CHECK {name}: loss {loss:.6f} == {ref_loss:.6f}, {k} grads match")
    if os.environ.get("PIPE_TEST_KILL") == "1":
        _kill_rank1(runner)


def _kill_rank1(runner: object) -> None:
    """Rank 1 is SIGKILLed as the next step starts; the others must exit naming it."""
    import signal

    from parallel.runtime.pipeline import PipelineRunner

    assert isinstance(runner, PipelineRunner)
    batch = make_batch(6, 5, 8)
    if runner.ctx.rank == 1:
        _log(f"KILL at {time.time():.3f}")
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.5)  # let the others be blocked in the step's collectives
    runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
    raise AssertionError("the step after rank 1 died should have failed")


def scenario_hang(ctx: object) -> None:
    """Rank 1 stops taking part (alive, stuck): the others time out and exit."""
    from parallel.placement import contiguous
    from parallel.runtime.distenv import DistContext
    from parallel.runtime.pipeline import PipelineRunner

    assert isinstance(ctx, DistContext)
    n = len(make_stages())
    runner = _runner(ctx, make_stages(), contiguous(n, ctx.pp), "gpipe", 2)
    assert isinstance(runner, PipelineRunner)
    batch = make_batch(6, 5, 8)
    runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
    if ctx.rank == 1:
        time.sleep(3600)
    runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
    raise AssertionError("second step should have failed")


SCENARIOS = {
    "equiv2": (1, 2, scenario_equiv2),
    "dp2pp2": (2, 2, scenario_dp2pp2),
    "hang2": (1, 2, scenario_hang),
}


def _worker_main(name: str) -> None:
    from parallel.runtime.distenv import init_distributed

    torch.set_num_threads(1)
    dp, pp, fn = SCENARIOS[name]
    timeout = float(os.environ.get("PIPE_TEST_TIMEOUT", "60"))
    ctx = init_distributed(dp, pp, backend="gloo", device="cpu", timeout_s=timeout)
    _log(f"model {model_kind()} dp={dp} pp={pp}")
    fn(ctx)
    _log(f"SCENARIO {name} OK")
    ctx.close()


if __name__ == "__main__":
    from parallel.runtime.launch import run_worker

    run_worker(_worker_main, sys.argv[1])


# --------------------------------------------------------------------------- launch() entries
# Module-level so the elastic agent's spawned workers can unpickle them.


def launch_entry(seed: int) -> float:
    """A worker of ``parallel.runtime.launch.launch``: one pipelined step on 2 ranks, its loss."""
    from parallel.placement import contiguous
    from parallel.runtime.distenv import init_distributed
    from parallel.runtime.pipeline import PipelineRunner

    torch.set_num_threads(1)
    ctx = init_distributed(1, 2, backend="gloo", device="cpu", timeout_s=60)
    stages = make_stages(seed=seed)
    runner = _runner(ctx, stages, contiguous(len(stages), 2, [2, len(stages) - 2]), "1f1b", 2)
    assert isinstance(runner, PipelineRunner)
    batch = make_batch(6, 5, 8, seed=seed)
    loss = runner.step(batch.inputs, batch.tgt_out, batch.ntokens)
    ctx.close()
    return loss


def launch_kill_entry(seed: int) -> float:
    """Like :func:`launch_entry` but rank 1 is SIGKILLed before the step."""
    import signal

    if os.environ.get("RANK") == "1":
        time.sleep(2.0)
        os.kill(os.getpid(), signal.SIGKILL)
    return launch_entry(seed)


def phase_wait_entry(wait_s: float) -> str:
    """Rank 0 works alone for ``wait_s`` (longer than the 2 s collective timeout) while
    rank 1 waits on the phase group (``phase_timeout_s``); then one ordinary all-reduce."""
    import torch.distributed as dist

    from parallel.runtime.distenv import init_distributed

    ctx = init_distributed(1, 2, backend="gloo", device="cpu", timeout_s=2, phase_timeout_s=60)
    box: list[object] = [None]
    if ctx.rank == 0:
        time.sleep(wait_s)
        box[0] = "decoded"
    dist.broadcast_object_list(box, src=0, group=ctx.phase_group)
    x = torch.ones(1)
    dist.all_reduce(x)
    ctx.close()
    return f"{box[0]} {int(x.item())}"
