"""Translation speed and BLEU on the test split, every decoding variant side by side in one run:
beam 1 and 5 x (fp32, bf16 weights, dynamic int8) x (full vocabulary, the model's shortlist).

    python scripts/bench_translate.py --checkpoint gnmt-debian-en-de --limit 1000 --threads 2 \
        [--out docs/results/bench_translate.json]

For each variant: sentences/s, target tokens/s (sentencepiece tokens of the output), BLEU and
chrF (sacrebleu) of the same sentences; speed-ups and BLEU differences against fp32 with the
full vocabulary. Shortlist variants run only for a model that carries one (shipped models).
Prints a final JSON line with the machine and writes it to ``--out`` when given.
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
from nmt.inference import load_for_inference  # noqa: E402
from nmt.metrics import cpu_model  # noqa: E402
from nmt.shipped import resolve_checkpoint  # noqa: E402
from nmt.translate import translate_lines  # noqa: E402


class Decode:
    alpha, beta, max_len_a, max_len_b, nbest, batch_tokens = 0.6, 0.1, 1.5, 10, 1, 4000

    def __init__(self, beam: int, shortlist: bool) -> None:
        self.beam_size, self.shortlist = beam, shortlist


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run(ckpt: str, variant: tuple[str, bool, int], src: list[str], refs: list[str]) -> dict:
    kind, shortlist, beam = variant
    quantize = "int8" if kind == "int8" else "none"
    model, tok = load_for_inference(ckpt, quantize, "cpu", DTYPES.get(kind, torch.float32))
    translate_lines(model, tok, src[:50], Decode(beam, shortlist))  # warm-up
    t = time.perf_counter()
    hyps = [h[0][0] for h in translate_lines(model, tok, src, Decode(beam, shortlist))]
    sec = time.perf_counter() - t
    ntok = sum(len(x) for x in tok.encode(hyps))
    return {
        "weights": kind,
        "shortlist": shortlist,
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
    ap.add_argument("--out", type=Path, help="also write the JSON here (docs/results/...)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dcfg = dict_to_config(load(resolve_checkpoint(args.checkpoint)[0])["config"]["data"])
    pairs = load_text(dcfg, (args.split,))[args.split][: args.limit or None]
    src, refs = [s for s, _ in pairs], [t for _, t in pairs]
    has_shortlist = "shortlist" in load(resolve_checkpoint(args.checkpoint)[0])
    results = []
    for beam in (5, 1):
        for kind in ("fp32", "bf16", "int8"):
            for shortlist in (False, True) if has_shortlist else (False,):
                r = run(args.checkpoint, (kind, shortlist, beam), src, refs)
                print(
                    f"{kind} {'shortlist' if shortlist else 'full     '} beam {beam}: "
                    f"{r['sent_per_s']:7.1f} sent/s {r['tgt_tok_per_s']:8.1f} tok/s  "
                    f"BLEU {r['bleu']:.2f}  chrF {r['chrf']:.2f}",
                    flush=True,
                )
                results.append(r)
    base = {r["beam"]: r for r in results if r["weights"] == "fp32" and not r["shortlist"]}
    for r in results:
        r["speedup"] = round(r["sent_per_s"] / base[r["beam"]]["sent_per_s"], 2)
        r["bleu_diff"] = round(r["bleu"] - base[r["beam"]]["bleu"], 2)
    best = max((r for r in results if r["beam"] == 5 and r["bleu_diff"] >= -0.5),
               key=lambda r: r["sent_per_s"])  # fmt: skip
    summary = {
        "beam5_fp32_sent_per_s": base[5]["sent_per_s"],
        "beam5_fastest_within_0.5_bleu": {
            k: best[k] for k in ("weights", "shortlist", "sent_per_s", "bleu_diff")
        },
    }
    machine = {
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    doc = {
        "bench": "translate",
        "checkpoint": args.checkpoint,
        "split": args.split,
        "results": results,
        **summary,
        "machine": machine,
    }
    print(json.dumps(doc))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
