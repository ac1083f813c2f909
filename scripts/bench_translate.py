"""Translation speed and BLEU: beam 1 and beam 5, fp32 and dynamic int8, on the test split.

    python scripts/bench_translate.py --checkpoint runs/demo/checkpoints/best.pt [--limit 1000]

For each variant: sentences/s, target tokens/s (sentencepiece tokens of the output), BLEU and
chrF (sacrebleu) of the same sentences; the int8 speed-up and BLEU difference against fp32.
Prints a final JSON line with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import sacrebleu
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nmt.checkpoint import load  # noqa: E402
from nmt.config import dict_to_config  # noqa: E402
from nmt.corpus import load_text  # noqa: E402
from nmt.translate import load_for_inference, translate_lines  # noqa: E402


class Decode:
    alpha, beta, max_len_a, max_len_b, nbest, batch_tokens = 0.6, 0.1, 1.5, 10, 1, 4000

    def __init__(self, beam: int) -> None:
        self.beam_size = beam


def run(ckpt: str, quantize: str, beam: int, src: list[str], refs: list[str]) -> dict:
    model, tok = load_for_inference(ckpt, quantize)
    translate_lines(model, tok, src[:50], Decode(beam))  # warm-up
    t = time.perf_counter()
    hyps = [h[0][0] for h in translate_lines(model, tok, src, Decode(beam))]
    sec = time.perf_counter() - t
    ntok = sum(len(x) for x in tok.encode(hyps))
    return {
        "quantize": quantize,
        "beam": beam,
        "sentences": len(src),
        "seconds": round(sec, 2),
        "sent_per_s": round(len(src) / sec, 1),
        "tgt_tok_per_s": round(ntok / sec, 1),
        "bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="first N sentences (0 = all)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dcfg = dict_to_config(load(args.checkpoint)["config"]["data"])
    pairs = load_text(dcfg, (args.split,))[args.split][: args.limit or None]
    src, refs = [s for s, _ in pairs], [t for _, t in pairs]
    results = []
    for quantize in ("none", "int8"):
        for beam in (1, 5):
            r = run(args.checkpoint, quantize, beam, src, refs)
            print(
                f"{quantize:>4} beam {beam}: {r['sent_per_s']:7.1f} sent/s "
                f"{r['tgt_tok_per_s']:8.1f} tok/s  BLEU {r['bleu']:.2f}  chrF {r['chrf']:.2f}"
            )
            results.append(r)
    by = {(r["quantize"], r["beam"]): r for r in results}
    summary = {
        "int8_speedup_beam5": round(by["int8", 5]["sent_per_s"] / by["none", 5]["sent_per_s"], 2),
        "int8_bleu_diff_beam5": round(by["int8", 5]["bleu"] - by["none", 5]["bleu"], 2),
        "beam5_fp32_sent_per_s": by["none", 5]["sent_per_s"],
    }
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(
        json.dumps(
            {
                "bench": "translate",
                "checkpoint": args.checkpoint,
                "split": args.split,
                "results": results,
                **summary,
                "machine": machine,
            }
        )
    )


if __name__ == "__main__":
    main()
