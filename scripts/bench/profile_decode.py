"""Where a beam-search step spends its time: torch profiler, self CPU time per operator.

The profiler runs over translating the first ``--sentences`` test sentences of the checkpoint's
corpus; each operator's self CPU time is reported as a share of the total.

    python -m scripts.bench profile_decode --checkpoint gnmt-debian-en-de --sentences 150 \
        --threads 1 --out docs/results/translate/<machine>/profile_decode.json
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from nmt.checkpoint.files import load
from nmt.config import DecodeConfig
from nmt.decode.inference import load_for_inference
from nmt.decode.translate import translate_texts
from nmt.prepare.splits import checkpoint_split
from nmt.release.shipped import resolve_checkpoint
from scripts.bench.common import command, finish, machine, parser, set_threads


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--sentences", type=int, default=150)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default="fp32",
                    help="int8: nmt/models/int8.py weights, fp32 elsewhere")  # fmt: skip
    ap.add_argument("--prune", type=float, default=0.0, help="decode.prune_relative")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    path, _ = resolve_checkpoint(args.checkpoint)
    src = [s for s, _ in checkpoint_split(load(path), "test")[: args.sentences]]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    quantize = "int8" if args.dtype == "int8" else "none"
    model, tok = load_for_inference(args.checkpoint, quantize, "cpu", dtype)
    d = DecodeConfig(device="cpu", beam_size=args.beam, prune_relative=args.prune)
    translate_texts(model, tok, src[:10], d)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        translate_texts(model, tok, src, d)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    shares = {e.key: round(e.self_cpu_time_total / total, 4) for e in top}
    for k, v in shares.items():
        print(f"{v:6.1%}  {k}")
    doc = {"command": command(__name__, argv), "checkpoint": args.checkpoint,
           "sentences": len(src), "beam": args.beam, "dtype": args.dtype,
           "prune_relative": args.prune, "self_cpu_share": shares,
           "total_ms": round(total / 1000, 1), "machine": machine()}  # fmt: skip
    return finish(doc, args.out)
