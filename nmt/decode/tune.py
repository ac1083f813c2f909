"""``nmt-tune-decode``: the beam search's length penalty tuned on the dev split (never on test).

    nmt-tune-decode --checkpoint gnmt-debian-en-de --sentences 1000 \\
        --alpha 0.6 0.8 1.0 1.2 --beta 0.0 0.1 [--beam 5] [--threads 1]

Translates the first ``--sentences`` dev sentences of the checkpoint's own corpus once per
(alpha, beta) of GNMT's length penalty ``((5 + |Y|) / 6) ** alpha`` and coverage penalty
``beta``, scores each with sacrebleu (BLEU, chrF, brevity penalty, length ratio) in the same
run, and writes ``docs/results/decode_tuning.json`` (with the machine). Decoding is
``nmt-translate``'s default on the CPU (int8, beam pruning; ``--plain``: fp32, no pruning).
The best alpha/beta by dev BLEU are the model's own settings: ``--decode-yaml
models/NAME/decode.yaml`` writes them where ``nmt-translate checkpoint=NAME`` reads them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF

from data.atomic import atomic_write_text, write_json_result
from nmt.checkpoint.files import load, require_single_device
from nmt.config import DecodeConfig
from nmt.decode.inference import load_for_decoding
from nmt.decode.translate import translate_texts
from nmt.machine.capability import machine_record
from nmt.prepare.splits import checkpoint_split
from nmt.release.shipped import resolve_checkpoint
from nmt.tool import parser, run_tool

OUT = Path("docs/results/decode_tuning.json")


def decode_cfg(beam: int, alpha: float, beta: float, plain: bool) -> DecodeConfig:
    """``nmt-translate``'s defaults (DecodeConfig, on the CPU) with this beam, alpha and beta;
    ``plain``: fp32 weights, no beam pruning."""
    d = DecodeConfig(device="cpu", name=f"beam{beam}", beam_size=beam, alpha=alpha, beta=beta)
    if plain:
        d = dataclasses.replace(d, quantize="none", dtype="fp32", prune_relative=0.0)
    return d


def tune(
    checkpoint: str,
    sentences: int,
    alphas: list[float],
    betas: list[float],
    beam: int,
    plain: bool = False,
) -> dict[str, Any]:
    """One row per (alpha, beta): dev BLEU, chrF, brevity penalty, length ratio, seconds."""
    path, name = resolve_checkpoint(checkpoint)
    ckpt = require_single_device(load(path), str(path))
    setup = decode_cfg(beam, 0.0, 0.0, plain)
    model, tok, arith = load_for_decoding(str(path), setup, ckpt)
    decoding = arith.record() | {"prune_relative": setup.prune_relative}
    pairs = checkpoint_split(ckpt, "dev")[:sentences]
    srcs, refs = [s for s, _ in pairs], [t for _, t in pairs]
    rows = []
    for alpha in alphas:
        for beta in betas:
            start = time.perf_counter()
            hyps = translate_texts(model, tok, srcs, decode_cfg(beam, alpha, beta, plain))
            b = BLEU().corpus_score(hyps, [refs])
            c = CHRF().corpus_score(hyps, [refs])
            row = {
                "alpha": alpha,
                "beta": beta,
                "bleu": round(b.score, 2),
                "chrf": round(c.score, 2),
                "bp": round(b.bp, 3),
                "ratio": round(b.sys_len / max(b.ref_len, 1), 3),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    best = max(rows, key=lambda r: (r["bleu"], r["chrf"]))
    return {"checkpoint": checkpoint, "model_name": name, "split": "dev", "sentences": len(srcs),
            "beam": beam, "decoding": decoding, "machine": machine_record(), "rows": rows,
            "best": best}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = parser("nmt-tune-decode", __doc__)
    ap.add_argument("--checkpoint", required=True, help="a checkpoint file or a shipped model name")
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.6, 0.8, 1.0, 1.2])
    ap.add_argument("--beta", type=float, nargs="+", default=[0.0, 0.1])
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--plain", action="store_true", help="fp32, no pruning (default: the CLI's)")
    ap.add_argument(
        "--decode-yaml",
        type=Path,
        help="also write the best alpha/beta here "
        "(a model folder's decode.yaml: nmt-translate's settings for that model)",
    )
    args = ap.parse_args(argv)
    if args.sentences < 1 or args.beam < 1:
        ap.error("--sentences and --beam must be at least 1")

    def body() -> int:
        if args.threads:
            torch.set_num_threads(args.threads)
        result = tune(args.checkpoint, args.sentences, args.alpha, args.beta, args.beam,
                      args.plain)  # fmt: skip
        write_json_result(args.out, result)
        best = result["best"]
        print(f"best: {best}; wrote {args.out}")
        if args.decode_yaml:
            atomic_write_text(args.decode_yaml,
                              f"# tuned on the first {result['sentences']} dev sentences, beam "
                              f"{args.beam}, by nmt-tune-decode: {args.out}\n"
                              f"alpha: {best['alpha']}\nbeta: {best['beta']}\n")  # fmt: skip
            print(f"wrote {args.decode_yaml}")
        return 0

    return run_tool("nmt-tune-decode", body)
