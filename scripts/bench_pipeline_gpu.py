"""GNMT on one GPU: plain training step vs the pipelined path (world size 1), bf16 autocast.

    python scripts/bench_pipeline_gpu.py --model gnmt4 --out DIR

Writes the pipelined run's timeline (timeline.json / timeline.png) into DIR and prints a final
JSON line with tokens/s for each variant and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nmt.models.gnmt import build_model, build_stages  # noqa: E402
from nmt.models.loss import label_smoothed_nll  # noqa: E402
from parallel.placement import Placement, contiguous  # noqa: E402
from parallel.runtime.engine import PipelineRunner, init_distributed  # noqa: E402

SIZES = {"gnmt4": (1024, 4, 4), "gnmt8": (1024, 8, 8), "gnmt_small": (256, 4, 4)}


def loss_sum(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return label_smoothed_nll(out, tgt, 0, 0.1)[0]


def timed(fn: Any, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gnmt4", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--len", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    h, enc, dec = SIZES[a.model]
    ctx = init_distributed(1, 1, backend="nccl", device="cuda", timeout_s=60)
    dev = ctx.device
    src = torch.randint(4, a.vocab, (a.len, a.batch), device=dev)
    tgt = torch.randint(4, a.vocab, (a.len, a.batch), device=dev)
    src_len = torch.full((a.batch,), a.len, device=dev)
    ntok = a.len * a.batch
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = build_model(a.vocab, h, enc, dec, 0.0, True, 0.1, 0).to(dev)

    def plain() -> None:
        with bf16:
            loss = loss_sum(model(src, src_len, tgt), tgt) / ntok
        loss.backward()
        model.zero_grad(set_to_none=True)

    results: dict[str, Any] = {"plain": round(ntok / timed(plain, a.repeats))}
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

            results[name] = round(ntok / timed(piped, a.repeats))
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
    print(
        json.dumps(
            {
                "bench": "pipeline_gpu",
                "model": a.model,
                "batch": a.batch,
                "len": a.len,
                "tok_per_s": results,
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
