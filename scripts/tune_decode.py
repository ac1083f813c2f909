"""Tune the beam search's length penalty on the dev split (never on test).

    python scripts/tune_decode.py --checkpoint gnmt-debian-en-de --sentences 1000 \
        --alpha 0.6 0.8 1.0 1.2 --beta 0.0 0.1 [--beam 5] [--threads 1]

Translates the first ``--sentences`` dev sentences of the checkpoint's own corpus once per
(alpha, beta) of GNMT's length penalty ``((5 + |Y|) / 6) ** alpha`` and coverage penalty
``beta``, scores each with sacrebleu (BLEU, chrF, brevity penalty, length ratio) in the same
run, and writes ``docs/results/decode_tuning.json`` (with the machine). The best alpha/beta
by dev BLEU are what ``decode=beam5`` should use for that model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sacrebleu
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nmt.checkpoint import load, require_single_device  # noqa: E402
from nmt.config import dict_to_config  # noqa: E402
from nmt.corpus import load_text  # noqa: E402
from nmt.inference import model_from_checkpoint  # noqa: E402
from nmt.metrics import cpu_model  # noqa: E402
from nmt.shipped import resolve_checkpoint  # noqa: E402
from nmt.translate import translate_texts  # noqa: E402

OUT = Path("docs/results/decode_tuning.json")


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def decode_cfg(beam: int, alpha: float, beta: float) -> SimpleNamespace:
    return SimpleNamespace(
        name=f"beam{beam}",
        beam_size=beam,
        alpha=alpha,
        beta=beta,
        max_len_a=1.5,
        max_len_b=10,
        nbest=1,
        batch_tokens=4000,
        quantize="none",
    )


def tune(
    checkpoint: str, sentences: int, alphas: list[float], betas: list[float], beam: int
) -> dict[str, Any]:
    path, name = resolve_checkpoint(checkpoint)
    ckpt = require_single_device(load(path), str(path))
    model, tok = model_from_checkpoint(ckpt, str(path))
    pairs = load_text(dict_to_config(ckpt["config"]["data"]), ("dev",))["dev"][:sentences]
    srcs, refs = [s for s, _ in pairs], [t for _, t in pairs]
    rows = []
    for alpha in alphas:
        for beta in betas:
            start = time.perf_counter()
            hyps = translate_texts(model, tok, srcs, decode_cfg(beam, alpha, beta))
            b = sacrebleu.metrics.BLEU().corpus_score(hyps, [refs])
            c = sacrebleu.metrics.CHRF().corpus_score(hyps, [refs])
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
            "beam": beam, "machine": machine(), "rows": rows, "best": best}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a checkpoint file or a shipped model name")
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.6, 0.8, 1.0, 1.2])
    ap.add_argument("--beta", type=float, nargs="+", default=[0.0, 0.1])
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = tune(args.checkpoint, args.sentences, args.alpha, args.beta, args.beam)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"best: {result['best']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
