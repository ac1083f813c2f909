"""Translation speed and BLEU on the test split, every decoding variant side by side in one run.

The variants: beam 1 and 5 x (fp32, bf16 weights, int8: ``nmt/models/int8.py``) x (full
vocabulary, the model's shortlist, beam pruning with each ``--prune`` threshold pair), and
``nmt-translate`` with its defaults.

    python -m scripts.bench translate --checkpoint gnmt-debian-en-de --limit 1000 --threads 2 \
        --prune 0.2,0 --prune 0.3,0 --cli [--out docs/results/translate/epyc/bench_translate.json]

Every variant sets pruning explicitly (none unless ``--prune``), whatever the default is; the
length and coverage penalties are the model's (its ``decode.yaml`` when it has one).

For each variant: sentences/s, target tokens/s (sentencepiece tokens of the output), BLEU and
chrF (sacrebleu) of the same sentences; speed-ups and BLEU differences against fp32 with the
full vocabulary. The variants run ``--repeats`` times in rounds, each kind of weights in a
fresh process per round (the kinds and the variants in another order each round), and the
median time counts: with one run each in one process, a variant's speed depended on its
place in the order and on the kinds run before it. Shortlist variants run only for
a model that carries one (shipped models). Prints a final JSON line with the machine and
writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sacrebleu
import torch

from data.atomic import atomic_write_text
from nmt.checkpoint.files import load
from nmt.config import DecodeConfig
from nmt.decode.inference import load_for_inference
from nmt.decode.translate import translate_lines
from nmt.machine import hostmem
from nmt.prepare.splits import checkpoint_split
from nmt.release.shipped import resolve_checkpoint
from scripts.bench.common import (
    ROOT,
    child_env,
    command,
    finish,
    machine,
    model_decode,
    nmt_command,
    parser,
    set_threads,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
Variant = tuple[str, bool, int, tuple[float, float]]


def settings(base: DecodeConfig, variant: Variant) -> DecodeConfig:
    """The model's decode settings (``base``) with the variant's beam, shortlist and pruning."""
    _, shortlist, beam, (rel, ab) = variant
    return dataclasses.replace(base, beam_size=beam, shortlist=shortlist, prune_relative=rel,
                               prune_absolute=ab)  # fmt: skip


def translate_timed(model: Any, tok: Any, dcfg: DecodeConfig, src: list[str]) -> dict[str, Any]:
    """Seconds to translate ``src`` (after a 50-sentence warm-up), the translations and their
    number of target tokens."""
    translate_lines(model, tok, src[:50], dcfg)  # warm-up
    t = time.perf_counter()
    hyps = [h[0][0] for h in translate_lines(model, tok, src, dcfg)]
    sec = time.perf_counter() - t
    return {"seconds": sec, "hyps": hyps, "tokens": sum(len(x) for x in tok.encode(hyps))}


def worker(
    ckpt: str, base: DecodeConfig, variants: list[Variant], src: list[str], out: Path
) -> None:
    """One process: load the variants' kind of weights, time each variant once, write JSON."""
    kind = variants[0][0]
    quantize = "int8" if kind == "int8" else "none"
    model, tok = load_for_inference(ckpt, quantize, "cpu", DTYPES.get(kind, torch.float32))
    rows = [translate_timed(model, tok, settings(base, v), src) for v in variants]
    atomic_write_text(out, json.dumps(rows))


def rotated(items: list[Any], r: int, repeats: int) -> list[Any]:
    """``items`` starting at another one in each of ``repeats`` rounds (``r``)."""
    k = r * len(items) // repeats if len(items) >= repeats else r % max(len(items), 1)
    return items[k:] + items[:k]


def rounds(args: argparse.Namespace, variants: list[Variant], n: int) -> list[dict[str, Any]]:
    """Every variant ``args.repeats`` times, each kind of weights in a fresh process per round
    (as users run one kind; in one process a variant was slower after other kinds), the
    kinds and the variants in another order each round: per variant the times, translations
    (the same every round: decoding is deterministic) and target tokens."""
    runs: list[dict[str, Any]] = [{"times": [], "hyps": None, "tokens": 0} for _ in variants]
    kinds = list(dict.fromkeys(v[0] for v in variants))
    for r in range(args.repeats):
        for kind in rotated(kinds, r, args.repeats):
            idx = rotated([i for i, v in enumerate(variants) if v[0] == kind], r, args.repeats)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "worker.json"
                cmd = [sys.executable, "-m", "scripts.bench", "translate", "--checkpoint",
                       args.checkpoint, "--split", args.split, "--limit", str(args.limit),
                       "--threads", str(args.threads), "--worker-out", str(out),
                       "--worker", json.dumps([variants[i] for i in idx])]  # fmt: skip
                subprocess.run(cmd, check=True, cwd=ROOT)
                results = json.loads(out.read_text())
            for i, res in zip(idx, results, strict=True):
                run = runs[i]
                if run["hyps"] is not None and run["hyps"] != res["hyps"]:
                    raise SystemExit(f"variant {variants[i]} translated differently in round {r}")
                run["hyps"], run["tokens"] = res["hyps"], res["tokens"]
                run["times"].append(res["seconds"])
                print(f"round {r} {variants[i]}: {n / res['seconds']:7.1f} sent/s", flush=True)
    return runs


def row(variant: Variant, run: dict[str, Any], refs: list[str]) -> dict[str, Any]:
    """The JSON row of a variant: median speed over its rounds, BLEU/chrF of its output."""
    kind, shortlist, beam, prune = variant
    times, hyps = run["times"], run["hyps"]
    sec = statistics.median(times)
    ntok = run["tokens"]
    return {
        "weights": kind,
        "shortlist": shortlist,
        "beam": beam,
        "prune": list(prune),
        "sentences": len(hyps),
        "seconds": round(sec, 2),
        "seconds_each_round": [round(t, 2) for t in times],
        "sent_per_s": round(len(hyps) / sec, 1),
        "tgt_tok_per_s": round(ntok / sec, 1),
        "bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
    }


def cli_defaults(ckpt: str, src: list[str], threads: int) -> dict[str, Any]:
    """``nmt-translate checkpoint=CKPT`` with its default settings, timed as users run it
    (a fresh process: start-up and model loading included, reported apart)."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.txt", Path(tmp) / "out.txt"
        inp.write_text("".join(s + "\n" for s in src[:1]))
        args = [*nmt_command("translate"), f"checkpoint={ckpt}", f"input={inp}", f"output={out}"]
        args += [f"train.threads={threads}"] if threads else []
        env = child_env()
        t = time.perf_counter()
        subprocess.run(args, check=True, env=env, capture_output=True)  # calibrates, if due
        startup = time.perf_counter() - t
        inp.write_text("".join(s + "\n" for s in src))
        t = time.perf_counter()
        run = subprocess.run(args, check=True, env=env, capture_output=True, text=True)
        sec = time.perf_counter() - t
    chosen = [x for x in run.stderr.splitlines() if x.startswith("decode: ")]
    return {
        "arithmetic": chosen[0].removeprefix("decode: ") if chosen else None,
        "command": f"nmt-translate checkpoint={ckpt} input=... output=...",
        "sentences": len(src),
        "seconds": round(sec, 2),
        "startup_seconds": round(startup, 2),
        "sent_per_s": round(len(src) / sec, 1),
        "sent_per_s_after_startup": round(len(src) / (sec - startup), 1),
    }


def main(argv: list[str] | None = None) -> int:
    allocator = hostmem.tune()  # as every command line entry point does
    ap = parser(__name__, __doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=0, help="first N sentences (0 = all)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--weights", default="fp32,bf16,int8", help="comma-separated kinds")
    ap.add_argument("--beams", default="5,1")
    ap.add_argument(
        "--prune", action="append", default=[], metavar="REL,ABS",
        help="also run beam pruning with these thresholds (repeatable; beam > 1, full vocabulary)",
    )  # fmt: skip
    ap.add_argument("--no-shortlist", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all variants (median)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # JSON variants of one kind: time them
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cli", action="store_true", help="also time nmt-translate's defaults")
    ap.add_argument("--out", type=Path, help="also write the JSON here (docs/results/...)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    set_threads(args.threads)
    path = resolve_checkpoint(args.checkpoint)[0]
    model_settings = model_decode(args.checkpoint)
    ckpt = load(path)
    pairs = checkpoint_split(ckpt, args.split)[: args.limit or None]
    src, refs = [s for s, _ in pairs], [t for _, t in pairs]
    has_shortlist = "shortlist" in ckpt
    del ckpt
    if args.worker:
        variants_ = [(k, bool(sl), int(b), (float(p[0]), float(p[1])))
                     for k, sl, b, p in json.loads(args.worker)]  # fmt: skip
        worker(args.checkpoint, model_settings, variants_, src, args.worker_out)
        return 0
    shortlists = (False, True) if has_shortlist and not args.no_shortlist else (False,)
    prunes = [tuple(float(x) for x in p.split(",")) for p in args.prune]
    if any(len(p) != 2 for p in prunes):
        ap.error(f"--prune takes REL,ABS (two numbers), got {args.prune}")
    variants: list[Variant] = []
    for beam in (int(b) for b in args.beams.split(",")):
        for kind in args.weights.split(","):
            variants += [(kind, sl, beam, (0.0, 0.0)) for sl in shortlists]
            variants += [(kind, False, beam, (p[0], p[1])) for p in prunes if beam > 1]
    results = []
    for v, run in zip(variants, rounds(args, variants, len(src)), strict=True):
        r = row(v, run, refs)
        print(
            f"{v[0]} {'shortlist' if v[1] else 'full     '} beam {v[2]} prune {v[3]}: "
            f"{r['sent_per_s']:7.1f} sent/s {r['tgt_tok_per_s']:8.1f} tok/s  "
            f"BLEU {r['bleu']:.2f}  chrF {r['chrf']:.2f}",
            flush=True,
        )
        results.append(r)
    plain = [r for r in results if not r["shortlist"] and r["prune"] == [0.0, 0.0]]
    ref_kind = "fp32" if any(r["weights"] == "fp32" for r in plain) else plain[0]["weights"]
    base = {r["beam"]: r for r in plain if r["weights"] == ref_kind}
    for r in results:
        r["speedup"] = round(r["sent_per_s"] / base[r["beam"]]["sent_per_s"], 2)
        r["bleu_diff"] = round(r["bleu"] - base[r["beam"]]["bleu"], 2)
    summary: dict[str, Any] = {"baseline": ref_kind, "alpha": model_settings.alpha,
                              "beta": model_settings.beta}  # fmt: skip
    if 5 in base:
        best = max((r for r in results if r["beam"] == 5 and r["bleu_diff"] >= -0.5),
                   key=lambda r: r["sent_per_s"])  # fmt: skip
        summary["beam5_baseline_sent_per_s"] = base[5]["sent_per_s"]
        summary["beam5_fastest_within_0.5_bleu"] = {
            k: best[k] for k in ("weights", "shortlist", "prune", "sent_per_s", "bleu_diff")
        }
    if args.cli:
        summary["nmt_translate_defaults"] = cli_defaults(args.checkpoint, src, args.threads)
        print(json.dumps(summary["nmt_translate_defaults"]), flush=True)
    doc = {
        "bench": "translate",
        "command": command(__name__, argv),
        "checkpoint": args.checkpoint,
        "split": args.split,
        "repeats": args.repeats,
        "results": results,
        **summary,
        # allocator: nmt/machine/hostmem.py settings in effect ({}: glibc's defaults)
        "machine": machine(allocator=allocator),
    }
    return finish(doc, args.out)
