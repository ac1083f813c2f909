"""Tune the beam search's length penalty on the dev split (never on test).

    python scripts/tune_decode.py --checkpoint gnmt-debian-en-de --sentences 1000 \
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

from nmt.checkpoint.files import load, require_single_device  # noqa: E402
from nmt.config import DecodeConfig  # noqa: E402
from nmt.decode.inference import load_for_decoding  # noqa: E402
from nmt.decode.translate import translate_texts  # noqa: E402
from nmt.prepare.splits import checkpoint_split  # noqa: E402
from nmt.release.shipped import resolve_checkpoint  # noqa: E402
from nmt.train.metrics import cpu_model  # noqa: E402

OUT = Path("docs/results/decode_tuning.json")


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def decode_cfg(beam: int, alpha: float, beta: float, plain: bool) -> SimpleNamespace:
    """``nmt-translate``'s defaults (DecodeConfig, on the CPU) with this beam, alpha and beta;
    ``plain``: fp32 weights, no beam pruning."""
    d = SimpleNamespace(**vars(DecodeConfig(device="cpu")))
    d.name, d.beam_size, d.alpha, d.beta = f"beam{beam}", beam, alpha, beta
    if plain:
        d.quantize, d.dtype, d.prune_relative, d.prune_absolute = "none", "fp32", 0.0, 0.0
    return d


def tune(
    checkpoint: str,
    sentences: int,
    alphas: list[float],
    betas: list[float],
    beam: int,
    plain: bool = False,
) -> dict[str, Any]:
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
            "beam": beam, "decoding": decoding, "machine": machine(), "rows": rows,
            "best": best}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    if args.threads:
        torch.set_num_threads(args.threads)
    result = tune(args.checkpoint, args.sentences, args.alpha, args.beta, args.beam, args.plain)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"best: {result['best']}; wrote {args.out}")
    if args.decode_yaml:
        best = result["best"]
        text = (f"# tuned on the first {result['sentences']} dev sentences, beam {args.beam}, "
                f"by scripts/tune_decode.py: {args.out}\nalpha: {best['alpha']}\n"
                f"beta: {best['beta']}\n")  # fmt: skip
        tmp = args.decode_yaml.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.decode_yaml)
        print(f"wrote {args.decode_yaml}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
