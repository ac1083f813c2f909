"""Where a beam-search step spends its time: torch profiler over translating the first
``--sentences`` test sentences, self CPU time per operator as a share of the total.

    python scripts/profile_decode.py --checkpoint gnmt-debian-en-de --sentences 150 --threads 1 \
        --out docs/results/profile_decode.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nmt.checkpoint.files import load  # noqa: E402
from nmt.decode.inference import load_for_inference  # noqa: E402
from nmt.decode.translate import translate_texts  # noqa: E402
from nmt.prepare.splits import checkpoint_split  # noqa: E402
from nmt.release.shipped import resolve_checkpoint  # noqa: E402
from nmt.train.metrics import cpu_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--sentences", type=int, default=150)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default="fp32",
                    help="int8: nmt/models/int8.py weights, fp32 elsewhere")  # fmt: skip
    ap.add_argument("--prune", type=float, default=0.0, help="decode.prune_relative")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path, _ = resolve_checkpoint(args.checkpoint)
    src = [s for s, _ in checkpoint_split(load(path), "test")[: args.sentences]]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    quantize = "int8" if args.dtype == "int8" else "none"
    model, tok = load_for_inference(args.checkpoint, quantize, "cpu", dtype)
    d = SimpleNamespace(beam_size=args.beam, alpha=0.6, beta=0.1, max_len_a=1.5, max_len_b=10,
                        nbest=1, batch_tokens=4000, shortlist=False,
                        prune_relative=args.prune)  # fmt: skip
    translate_texts(model, tok, src[:10], d)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        translate_texts(model, tok, src, d)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    shares = {e.key: round(e.self_cpu_time_total / total, 4) for e in top}
    for k, v in shares.items():
        print(f"{v:6.1%}  {k}")
    machine = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__}
    doc = {"checkpoint": args.checkpoint, "sentences": len(src), "beam": args.beam,
           "dtype": args.dtype, "prune_relative": args.prune, "self_cpu_share": shares,
           "total_ms": round(total / 1000, 1),
           "machine": machine}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
