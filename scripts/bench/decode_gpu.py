"""Beam-5 search speed of one 128-sentence batch on a GPU (gnmt_small, gnmt4): sent/s, tok/s.

    python -m scripts.bench decode_gpu --out docs/gpu/bench_decode.json        # on a GPU
    python -m scripts.bench decode_gpu --device cpu --dtype fp32 --size 16,2,2 --sentences 4

Each model has random weights (seeded; its sizes from ``--model`` or ``--size H,ENC,DEC``, an
8,000-piece vocabulary) and decodes ``--sentences`` random sources of ``--src-len`` tokens with
the beam search of ``nmt-translate`` (``nmt/decode/search.py``; no pruning, length penalty 0.6, no
coverage penalty, max length 1.5 x source + 10). An untrained model seldom emits eos, so most
hypotheses run to the max length: per sentence this is the slowest case, and the tokens/s count
the tokens of every sentence's best hypothesis (eos included) as generated. One warm-up batch,
then ``--repeats`` batches, the median (the device synchronised around each). NVIDIA's GNMT v2
anchor (28.2k target tok/s, beam 5, one A100) is on real data with a trained model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import torch

from nmt.decode.inference import DTYPES
from nmt.decode.search import SearchSettings, beam_search
from nmt.models.registry import build_model
from nmt.models.seq2seq import ModelSpec
from scripts.bench.common import GNMT_SIZES, command, finish, machine, parser, timed

VOCAB, PAD, BOS, EOS = 8000, 0, 2, 3


def sources(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``src[length, batch]`` of random pieces (ids 4..V-1) ending in eos, ``src_len[batch]``."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (length, batch), generator=g)
    src[-1] = EOS
    return src, torch.full((batch,), length)


def bench(
    size: tuple[int, int, int], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Median seconds of one batch's beam search and the target tokens it produced."""
    hidden, enc, dec = size
    torch.manual_seed(args.seed)
    model = build_model(
        ModelSpec(hidden=hidden, enc_layers=enc, dec_layers=dec, dropout=0.0, init_range=0.1),
        VOCAB,
        PAD,
    ).eval()
    model = model.to(device=device, dtype=DTYPES[args.dtype])
    src, src_len = sources(args.sentences, args.src_len, args.seed)

    def run() -> list[list[int]]:
        hyps = beam_search(
            model,
            src,
            src_len,
            SearchSettings(beam_size=args.beam, alpha=0.6, beta=0.0, max_len=(1.5, 10), nbest=1),
        )
        return [h[0].tokens for h in hyps]

    out: list[list[list[int]]] = []
    times = timed(lambda: out.append(run()), args.repeats, warmup=1, device=device)
    tokens = sum(len(toks) + 1 for toks in out[-1])
    sec = statistics.median(times)
    return {
        "hidden": hidden,
        "enc_layers": enc,
        "dec_layers": dec,
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": round(sec, 4),
        "seconds_each": [round(t, 4) for t in times],
        "sent_per_s": round(args.sentences / sec, 1),
        "tgt_tokens": tokens,
        "tgt_tok_per_s": round(tokens / sec, 1),
        "max_len": int(1.5 * args.src_len + 10),
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--model", action="append", choices=sorted(GNMT_SIZES))
    ap.add_argument("--size", action="append", default=[], metavar="H,ENC,DEC")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--sentences", type=int, default=128)
    ap.add_argument("--src-len", type=int, default=30)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"decode_gpu: --device {args.device}: no CUDA device here", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.sentences < 1 or args.src_len < 2:
        ap.error("need --repeats >= 1, --sentences >= 1, --src-len >= 2")
    try:
        sizes = {s: tuple(int(x) for x in s.split(",")) for s in args.size}
    except ValueError:
        ap.error(f"--size takes H,ENC,DEC (three integers), got {args.size}")
    if any(len(v) != 3 for v in sizes.values()):
        ap.error(f"--size takes H,ENC,DEC (three integers), got {args.size}")
    names = args.model or ([] if sizes else ["gnmt_small", "gnmt4"])
    runs = {**{n: GNMT_SIZES[n] for n in names}, **sizes}
    results = []
    for name, size in runs.items():
        r = {"model": name, **bench(size, args, device)}  # type: ignore[arg-type]
        print(f"{name}: {r['sent_per_s']} sent/s, {r['tgt_tok_per_s']} target tok/s", flush=True)
        results.append(r)
    doc = {
        "bench": "decode_gpu",
        "command": command(__name__, argv),
        "beam": args.beam,
        "sentences": args.sentences,
        "src_len": args.src_len,
        "dtype": args.dtype,
        "results": results,
        "machine": machine(device),
    }
    return finish(doc, args.out)
