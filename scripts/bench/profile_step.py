"""One training step of gnmt_small: the old path (packed bi-LSTM, full logits) against the new.

    nice -n 10 python -m scripts.bench profile_step                   # shipped corpus, 2 threads
    python -m scripts.bench profile_step --synthetic 64x32 --threads 1  # fixed shape B x T

Variants (same model and weights, same batches, interleaved so that changing load on a shared
machine hits them alike):

* ``old``           packed bi-LSTM (``EmbedEncoder1.packed = True``) + generator and loss on all
                    ``Tt*B`` positions (``GNMT.loss(..., skip_pad=False)``);
* ``dense_bilstm``  the dense (oneDNN) bi-LSTM only;
* ``nonpad``        the non-pad generator/loss only;
* ``new``           both (what ``Trainer.train_step`` runs).

A step = forward (to the loss) + backward + clip + Adam, timed per part. Realistic batches
(default): the first ``--batches`` batches of epoch 0 of a ``Batcher`` (``batch_tokens`` 2048)
over the shipped corpus (``nmt.config.compose_config`` + ``nmt.prepare.splits.prepare_corpus``).
Reports, per variant, the mean over those batches of the median over ``--repeats`` steps by
the wall clock and by process CPU time, and of the fastest repeat (the least disturbed on a
shared machine), the ratios to ``old``, and a torch.profiler table of the top ops of ``old``
and ``new``; writes ``--out`` with the machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from nmt.models.gnmt import GNMT
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec
from scripts.bench.common import command, finish, machine, parser, results_for, set_threads

PAD, BOS, EOS = 0, 2, 3
VARIANTS = {  # name -> (packed bi-LSTM, skip_pad)
    "old": (True, False),
    "dense_bilstm": (False, False),
    "nonpad": (True, True),
    "new": (False, True),
}
Batch = tuple[Tensor, Tensor, Tensor, Tensor, int]  # src, src_len, tgt_in, tgt_out, ntokens


def real_batches(n: int, batch_tokens: int, seed: int) -> tuple[list[Batch], int]:
    """The first ``n`` batches of epoch 0 over the shipped corpus, and the vocabulary size."""
    from data.batching import Batcher
    from nmt.config import compose_config
    from nmt.prepare.splits import prepare_corpus

    cfg = compose_config([])
    corpus = prepare_corpus(cfg.data, seed)
    src, tgt = corpus.ids["train"]
    batcher = Batcher(src, tgt, batch_tokens, int(cfg.data.pad_multiple), 1, seed)
    it = iter(batcher)
    out = []
    for _ in range(n):
        b = next(it)
        out.append((b.src, b.src_len, b.tgt_in, b.tgt_out, b.ntokens))
    return out, corpus.tokenizer.vocab_size


def synthetic_batch(batch: int, length: int, vocab: int, seed: int) -> Batch:
    """``[length, batch]`` ids with lengths uniform in length/2..length (pad after)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(length // 2, length + 1, (2, batch), generator=g)
    src = torch.randint(4, vocab, (length, batch), generator=g)
    tgt = torch.randint(4, vocab, (length + 1, batch), generator=g)
    tgt[0] = BOS
    for b in range(batch):
        src[lens[0, b] - 1, b], src[lens[0, b] :, b] = EOS, PAD
        tgt[lens[1, b], b], tgt[lens[1, b] + 1 :, b] = EOS, PAD
    tgt_in, tgt_out = tgt[:-1].clone(), tgt[1:].clone()
    tgt_in[tgt_in == EOS] = PAD
    return src, lens[0], tgt_in, tgt_out, int((tgt_out != PAD).sum())


def step_parts(
    model: GNMT, opt: torch.optim.Optimizer, batch: Batch, variant: str
) -> tuple[float, tuple[float, ...]]:
    """One training step; returns (loss per token, seconds of (forward, backward, clip+Adam)
    by the wall clock, then the same three by process CPU time)."""
    src, src_len, tgt_in, tgt_out, ntokens = batch
    packed, skip_pad = VARIANTS[variant]
    model.embed_stage.packed = packed
    marks = [(time.perf_counter(), time.process_time())]
    loss_sum, _ = model.loss(src, src_len, tgt_in, tgt_out, PAD, 0.1, skip_pad=skip_pad)
    loss = loss_sum / ntokens
    marks.append((time.perf_counter(), time.process_time()))
    loss.backward()
    marks.append((time.perf_counter(), time.process_time()))
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    marks.append((time.perf_counter(), time.process_time()))
    parts = tuple(marks[i + 1][c] - marks[i][c] for c in (0, 1) for i in range(3))
    return loss.item(), parts


def check_equal(model: GNMT, batch: Batch) -> dict[str, float]:
    """Loss and gradients of ``old`` vs ``new`` on one batch (same dropout masks)."""
    src, src_len, tgt_in, tgt_out, ntokens = batch
    res = []
    for variant in ("old", "new"):
        packed, skip_pad = VARIANTS[variant]
        model.embed_stage.packed = packed
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        loss, _ = model.loss(src, src_len, tgt_in, tgt_out, PAD, 0.1, skip_pad=skip_pad)
        (loss / ntokens).backward()
        res.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    model.zero_grad(set_to_none=True)
    (old_loss, old_g), (new_loss, new_g) = res
    grad_rel = max(
        float((new_g[n] - g).abs().max() / g.abs().max().clamp(min=1e-30)) for n, g in old_g.items()
    )
    return {
        "loss_old": old_loss,
        "loss_new": new_loss,
        "loss_rel_diff": abs(new_loss - old_loss) / abs(old_loss),
        "max_grad_rel_diff": grad_rel,
    }


def top_ops(
    model: GNMT, opt: torch.optim.Optimizer, batches: list[Batch], variants: list[str]
) -> dict[str, dict[str, Any]]:
    """torch.profiler self CPU time per op, one step per batch and variant, the variants
    interleaved (one short profile per step) so that load changes hit them alike."""
    acc: dict[str, dict[str, list[float]]] = {v: {} for v in variants}  # op -> [self us, calls]
    for b in batches:
        for v in variants:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step_parts(model, opt, b, v)
            for e in prof.key_averages():
                row = acc[v].setdefault(e.key, [0.0, 0.0])
                row[0] += e.self_cpu_time_total
                row[1] += e.count
    out = {}
    for v, ops in acc.items():
        total = sum(us for us, _ in ops.values())
        rows = sorted(ops.items(), key=lambda kv: kv[1][0], reverse=True)[:15]
        top = [
            {
                "op": op,
                "self_ms_per_step": round(us / 1e3 / len(batches), 2),
                "self_pct": round(100 * us / total, 1),
                "calls_per_step": round(calls / len(batches), 1),
            }
            for op, (us, calls) in rows
        ]
        lines = [f"{'op':<44} {'ms/step':>9} {'%':>6} {'calls/step':>10}"] + [
            f"{r['op'][:44]:<44} {r['self_ms_per_step']:>9.1f} {r['self_pct']:>6.1f} "
            f"{r['calls_per_step']:>10.1f}"
            for r in top
        ]
        lines.append(f"{'total self CPU':<44} {total / 1e3 / len(batches):>9.1f}")
        out[v] = {"steps": len(batches), "top_ops": top, "table": "\n".join(lines)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=6, help="realistic batches (shapes) to use")
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--synthetic", default=None, help="BxT: one synthetic batch of that shape")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(results_for("train", "profile_step.json")))
    args = ap.parse_args(argv)
    set_threads(args.threads)
    vocab = 8000
    if args.synthetic:
        b, t = (int(x) for x in args.synthetic.lower().split("x"))
        batches = [synthetic_batch(b, t, vocab, args.seed)]
        data = f"synthetic B={b} T={t}, lengths uniform in T/2..T"
    else:
        batches, vocab = real_batches(args.batches, args.batch_tokens, args.seed)
        data = (
            f"shipped corpus, Batcher batch_tokens={args.batch_tokens}, "
            f"first {len(batches)} batches of epoch 0 (seed {args.seed})"
        )
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(hidden=256, enc_layers=4, dec_layers=4, dropout=0.2, init_range=0.1), vocab, PAD
    ).train()  # gnmt_small
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    equal = check_equal(model, batches[0])
    print(f"old vs new on batch 0: {equal}", file=sys.stderr)
    for b in batches:  # warm-up: oneDNN primitives are created once per shape
        for v in VARIANTS:
            step_parts(model, opt, b, v)
    times: dict[str, list[list[tuple[float, ...]]]] = {v: [] for v in VARIANTS}
    for i, b in enumerate(batches):
        per: dict[str, list[tuple[float, ...]]] = {v: [] for v in VARIANTS}
        for r in range(args.repeats):
            order = list(VARIANTS)[r % 4 :] + list(VARIANTS)[: r % 4]  # rotate the order
            for v in order:
                per[v].append(step_parts(model, opt, b, v)[1])
        for v in VARIANTS:
            times[v].append(per[v])
        print(f"batch {i + 1}/{len(batches)} done", file=sys.stderr)

    def summary(v: str, clock: int, stat: Any) -> dict[str, float]:
        """Mean over batches of ``stat`` over repeats, ms; clock 0 = wall, 1 = CPU."""
        parts = [
            [stat(s[3 * clock + k] for s in runs) * 1e3 for runs in times[v]] for k in range(3)
        ]
        fwd, bwd, optim = (statistics.fmean(p) for p in parts)
        return {
            "fwd_ms": round(fwd, 1),
            "bwd_ms": round(bwd, 1),
            "optim_ms": round(optim, 1),
            "step_ms": round(fwd + bwd + optim, 1),
        }

    results: dict[str, dict[str, dict[str, float]]] = {}
    stats = {"wall": (0, statistics.median), "cpu": (1, statistics.median), "wall_min": (0, min)}
    for name, (clock, stat) in stats.items():
        results[name] = {v: summary(v, clock, stat) for v in VARIANTS}
        old = results[name]["old"]
        for v, r in results[name].items():
            r["speedup_vs_old"] = round(old["step_ms"] / r["step_ms"], 3)
            r["fwd_bwd_speedup_vs_old"] = round(
                (old["fwd_ms"] + old["bwd_ms"]) / (r["fwd_ms"] + r["bwd_ms"]), 3
            )
            print(
                f"{name:>8} {v:>12}: {r['step_ms']:7.1f} ms/step (fwd {r['fwd_ms']:.1f}, "
                f"bwd {r['bwd_ms']:.1f}, optim {r['optim_ms']:.1f}) "
                f"x{r['speedup_vs_old']:.2f} vs old",
                file=sys.stderr,
            )
    profiles = top_ops(model, opt, batches, ["old", "new"])
    for v, p in profiles.items():
        print(f"--- {v}: top ops (self CPU, {p['steps']} steps)\n{p['table']}", file=sys.stderr)
    shapes = [
        {
            "Ts": int(s.size(0)),
            "Tt": int(ti.size(0)),
            "B": int(s.size(1)),
            "ntokens": n,
            "src_pad_frac": round(1 - float(sl.sum()) / s.numel(), 3),
            "tgt_pad_frac": round(1 - n / to.numel(), 3),
        }
        for s, sl, ti, to, n in batches
    ]
    report = {
        "command": command(__name__, argv),
        "model": f"gnmt_small (hidden 256, 4+4 layers, vocab {vocab}, dropout 0.2, tied)",
        "data": data,
        "batches": shapes,
        "repeats": args.repeats,
        "variants": {v: {"packed_bilstm": p, "skip_pad": s} for v, (p, s) in VARIANTS.items()},
        "results": results,
        "clocks": "mean over batches of: wall = median perf_counter, cpu = median process_time "
        "(all threads; robust to time slicing on a shared machine, but counts OpenMP "
        "spin-waiting), wall_min = fastest repeat of each part (least disturbed by others)",
        "old_vs_new_check": equal,
        "profiles": profiles,
        "machine": machine(mkldnn=torch.backends.mkldnn.is_available()),
    }
    return finish(report, args.out)
