"""GNMT on one GPU: the plain training step against the pipelined path (world size 1), bf16.

    python -m scripts.bench pipeline_gpu --model gnmt4 --out DIR

Writes the pipelined run's timeline (timeline.json / timeline.png) into DIR and prints a final
JSON line with tokens/s for each variant and the machine.
"""

from __future__ import annotations

from typing import Any

import torch

from nmt.models.gnmt import build_stages
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec
from parallel.placement import Placement, contiguous
from parallel.runtime.engine import PipelineRunner, init_distributed
from scripts.bench.common import GNMT_SIZES, add_step_args, finish, loss_sum, machine, parser, timed


def tok_per_s(fn: Any, tokens: int, repeats: int) -> int:
    """Tokens per second of ``repeats`` back-to-back calls of ``fn`` (a training step) after 3."""
    for _ in range(3):
        fn()
    sec = timed(lambda: [fn() for _ in range(repeats)], 1, device=torch.device("cuda"))[0]
    return round(tokens * repeats / sec)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--model", default="gnmt4", choices=sorted(GNMT_SIZES))
    add_step_args(ap, batch=128, length=32, repeats=10)
    ap.add_argument("--out", default=".")
    a = ap.parse_args(argv)
    h, enc, dec = GNMT_SIZES[a.model]
    ctx = init_distributed(1, 1, backend="nccl", device="cuda", timeout_s=60)
    dev = ctx.device
    src = torch.randint(4, a.vocab, (a.len, a.batch), device=dev)
    tgt = torch.randint(4, a.vocab, (a.len, a.batch), device=dev)
    src_len = torch.full((a.batch,), a.len, device=dev)
    ntok = a.len * a.batch
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(hidden=h, enc_layers=enc, dec_layers=dec, dropout=0.0, init_range=0.1), a.vocab, 0
    ).to(dev)

    def plain() -> None:
        with bf16:
            loss = loss_sum(model(src, src_len, tgt), tgt) / ntok
        loss.backward()
        model.zero_grad(set_to_none=True)

    results: dict[str, Any] = {"plain": tok_per_s(plain, ntok, a.repeats)}
    n = enc + dec + 1
    two_chunks = Placement.from_groups([list(range(enc)), list(range(enc, n))], 1)
    variants = {
        "pipe_1chunk_gpipe_m1": (contiguous(n, 1), "gpipe", 1),
        "pipe_1chunk_1f1b_m4": (contiguous(n, 1), "1f1b", 4),
        "pipe_looped_2chunks_m4": (two_chunks, "looped_bfs", 4),
    }
    for name, (placement, schedule, m) in variants.items():
        try:
            torch.manual_seed(0)
            runner = PipelineRunner(
                build_stages(a.vocab, h, enc, dec, 0.0, True, 0.1, 0),
                loss_sum,
                ctx=ctx,
                placement=placement,
                schedule=schedule,
                microbatches=m,
            )

            def piped(r: PipelineRunner = runner) -> None:
                with bf16:
                    r.step((src, src_len, tgt), tgt, ntok)
                for mod in r.local_modules():
                    mod.zero_grad(set_to_none=True)

            results[name] = tok_per_s(piped, ntok, a.repeats)
            if name == "pipe_1chunk_1f1b_m4":
                runner.timeline.enable()
                piped()
                piped()
                runner.timeline.disable()
                s = runner.write_timeline(a.out)
                results["timeline"] = (
                    None if s is None else {"busy_fraction": s.busy_fraction, "step_ms": s.step_ms}
                )
        except Exception as err:  # report and go on: one short run on a lent GPU
            results[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    ctx.close()
    doc = {"bench": "pipeline_gpu", "model": a.model, "batch": a.batch, "len": a.len,
           "tok_per_s": results, "machine": machine(dev)}  # fmt: skip
    return finish(doc, None)
