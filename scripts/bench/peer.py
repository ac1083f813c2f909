"""Peer comparison: pipenmt's gnmt_small against Joey NMT 2.3.0's RNN encoder-decoder (CPU).

    python -m scripts.bench peer [--minutes 8] [--threads 2] [--test-limit 0] [--dev-limit 1000]

Same machine, same run, one after the other: the embedded corpus
(``nmt.prepare.splits.load_text``), the
same sentencepiece model (exported from our checkpoint), the same token batch size, thread count
and wall-clock training budget (validation included in both), matched model sizes (both counts
reported). Measured: training target tokens/s (validation excluded), dev and test BLEU/chrF
(sacrebleu, beam 5, length penalty 0.6), beam-5 sentences/s on the test split (ours with
``nmt-translate``'s defaults and with the plain fp32 beam search), peak resident memory of each
training process. Writes ``peer.json``, ``bleu_vs_time.png`` and ``loss_curves.png`` into
``--results`` (``docs/results/peer/<machine>/``, committed) and work files into ``--out``
(``outputs/bench``); prints a final JSON line with the ratios (ours / Joey NMT).

Joey NMT runs in its own virtual environment (``scripts/bench/_joey.py``: built on first use;
exit status 3 before training anything if it cannot be). Joey NMT 2.3.0 on torch 2.13: its
``plateau`` scheduler fails and ``decaying`` silently uses step size 1, so it trains at a
constant rate (our peak 2e-3). It has no time budget: its trainer runs in-process inside the
venv and stops after the budget, validating at 50 % and 100 % of it on
``--peer-val-sentences`` dev sentences (ours: about four validations on ``--val-sentences``).
A recovery run can keep a finished run of ours: ``--reuse-ours``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nmt.release.plot import read_metrics
from scripts.bench import _joey as joey
from scripts.bench import common
from scripts.bench.common import (
    ROOT,
    child_env,
    command,
    finish,
    machine,
    nmt_command,
    parser,
)

JOEY_SCRIPT = Path(joey.__file__).resolve()
RESULTS = common.results_for("peer", "")
SECS_PER_STEP_OURS = 1.7  # gnmt_small, 2,048-token batches, 2 vCPUs (README, `make demo`)


# --------------------------------------------------------------------------- process + memory


def run_watched(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``cmd``; poll its VmHWM (peak resident set) from /proc every 0.2 s."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        peak = 0

        def poll() -> None:
            nonlocal peak
            status = Path(f"/proc/{p.pid}/status")
            while p.poll() is None:
                try:
                    m = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
                    if m:
                        peak = max(peak, int(m.group(1)))
                except OSError:
                    pass
                time.sleep(0.2)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        rc = p.wait()
        th.join()
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-25:])
        sys.exit(f"[peer] command failed ({rc}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak / 1024, 1)}


# --------------------------------------------------------------------------- ours


def train_ours(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run_dir = out / "ours"
    saved = run_dir / "bench_proc.json"
    if args.reuse_ours and saved.exists():  # recovery: keep a finished run of ours
        proc = json.loads(saved.read_text())
        eval_every = proc["eval_every"]
        return _ours_result(run_dir, proc, eval_every)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    steps = args.minutes * 60 / SECS_PER_STEP_OURS
    eval_every = args.eval_every or max(10, int(round(steps / 4 / 10)) * 10)
    base = nmt_command("train")
    cmd = [
        *base,
        "model=gnmt_small",
        "train=demo",
        f"data.batch_tokens={args.batch_tokens}",
        f"data.max_dev_sentences={args.val_sentences}",
        f"train.max_minutes={args.minutes}",
        f"train.eval_every={eval_every}",
        f"train.threads={args.threads}",
        f"hydra.run.dir={run_dir}",
    ]
    print(f"[peer] ours: nmt-train {' '.join(cmd[len(base) :])}", file=sys.stderr)
    proc = run_watched(cmd, child_env(args.threads), out / "ours_train.log")
    saved.write_text(json.dumps({**proc, "eval_every": eval_every}))
    return _ours_result(run_dir, proc, eval_every)


def _ours_result(run_dir: Path, proc: dict[str, Any], eval_every: int) -> dict[str, Any]:
    rows = read_metrics(run_dir / "metrics.jsonl")
    steps_rows = [r for r in rows if "tok_per_s" in r]
    val_rows = [r for r in rows if "val_bleu" in r]
    # throughput without validation: a log window that follows a validation contains it
    val_steps = {r["step"] for r in val_rows}
    tok = sec = 0.0
    prev = 0
    for r in steps_rows:
        if not any(prev <= s < r["step"] for s in val_steps):
            tok += r["tokens"]
            sec += r["tokens"] / r["tok_per_s"]
        prev = r["step"]
    curve = []
    for v in val_rows:
        before = [r["wall_s"] for r in steps_rows if r["step"] <= v["step"]]
        curve.append(
            {
                "step": v["step"],
                "wall_s": round(max(before) if before else 0.0, 1),
                "dev_bleu_greedy": round(v["val_bleu"], 2),
            }
        )
    ckpt = run_dir / "checkpoints" / "best.pt"
    from nmt.checkpoint.files import load

    c = load(str(ckpt))
    # unique tensors: the tied embedding / output projection is stored once
    seen = {v.data_ptr(): v.numel() for v in c["model"].values() if hasattr(v, "numel")}
    n_params = sum(seen.values())
    return {
        "checkpoint": str(ckpt),
        "eval_every": eval_every,
        "steps": max((r["step"] for r in rows), default=0),
        "train_tok_per_s": round(tok / sec, 1) if sec else None,
        "train_tokens": int(sum(r["tokens"] for r in steps_rows)),
        "params": int(n_params),
        "peak_rss_mb": proc["peak_rss_mb"],
        "process_wall_s": proc["wall_s"],
        "dev_curve": curve,
        "loss_curve": [[r["wall_s"], r["step"], r["loss"]] for r in steps_rows],
        "_ckpt": c,
    }


def translate_ours(
    ckpt: str, src: list[str], threads: int, defaults: bool
) -> tuple[list[str], float]:
    """Beam 5 over ``src``: ``nmt-translate``'s defaults (``DecodeConfig``: the arithmetic
    calibrated for this CPU, beam pruning) or, ``defaults=False``, the plain fp32 beam search
    (no pruning), as Joey's."""
    import torch

    from nmt.config import DecodeConfig
    from nmt.decode.inference import load_for_decoding
    from nmt.decode.translate import translate_lines

    torch.set_num_threads(threads)
    dcfg = DecodeConfig(device="cpu")
    if not defaults:
        dcfg = DecodeConfig(device="cpu", quantize="none", dtype="fp32", prune_relative=0.0)
    model, tok, _ = load_for_decoding(ckpt, dcfg)
    translate_lines(model, tok, src[:20], dcfg)  # warm-up
    t = time.perf_counter()
    hyps = [h[0][0] for h in translate_lines(model, tok, src, dcfg)]
    return hyps, time.perf_counter() - t


# --------------------------------------------------------------------------- scoring + plots


def score(hyps: list[str], refs: list[str]) -> dict[str, Any]:
    import sacrebleu

    return {
        "bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
        "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
    }


def plots(ours: dict[str, Any], peer: dict[str, Any], out: Path) -> list[str]:
    """``bleu_vs_time.png`` (dev BLEU against training minutes) and ``loss_curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = (("pipenmt gnmt_small", ours, "o-"), ("Joey NMT 2.3.0 RNN", peer, "s-"))
    figures = {
        "bleu_vs_time.png": ("training wall-clock (min, validation included)",
                             "dev BLEU (greedy, validation subset)"),
        "loss_curves.png": ("training wall-clock (min)",
                            "training loss per target token (label smoothing 0.1)"),
    }  # fmt: skip
    for name, (xlabel, ylabel) in figures.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, r, mark in systems:
            if name == "bleu_vs_time.png":
                xs = [0.0] + [p["wall_s"] / 60 for p in r["dev_curve"]]
                ys = [0.0] + [p["dev_bleu_greedy"] or 0.0 for p in r["dev_curve"]]
                ax.plot(xs, ys, mark, label=f"{label} (test BLEU {r['test']['bleu']:.2f}, beam 5)")
                ax.set_title("BLEU vs wall-clock, same 2-vCPU machine")
            elif r["loss_curve"]:
                c = r["loss_curve"]
                ax.plot([x[0] / 60 for x in c], [x[2] for x in c], label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    return [str(out / name) for name in figures]


# --------------------------------------------------------------------------- main


def run_joey(
    args: argparse.Namespace, out: Path, data: dict[str, Any]
) -> tuple[dict[str, Any], Path]:
    """Train Joey NMT for the budget in its venv; returns its result and config path."""
    jdir = out / "joey"
    if jdir.exists():
        shutil.rmtree(jdir)
    jdir.mkdir(parents=True)
    cfg_path = out / "joey_config.yaml"
    cfg_path.write_text(joey.joey_config(args, data, jdir / "model"))
    print(f"[peer] joey: training {args.minutes} min ({cfg_path})", file=sys.stderr)
    result = jdir / "train.json"
    cmd = [str(joey.venv_python()), str(JOEY_SCRIPT), "--joey-train", str(cfg_path),
           str(args.minutes * 60), str(args.threads), str(result)]  # fmt: skip
    proc = run_watched(cmd, child_env(args.threads), out / "joey_train.log")
    peer = json.loads(result.read_text())
    peer.update(peak_rss_mb=proc["peak_rss_mb"], process_wall_s=proc["wall_s"])
    return peer, cfg_path


def translate_both(
    args: argparse.Namespace,
    out: Path,
    ours: dict[str, Any],
    peer: dict[str, Any],
    cfg_path: Path,
    splits: dict[str, Any],
) -> dict[str, Any]:
    """Beam-5 dev and test translations of both systems, scored; test timed."""
    refs = {s: [t for _, t in splits[s]] for s in ("dev", "test")}
    srcs = {s: [x for x, _ in splits[s]] for s in ("dev", "test")}
    print("[peer] ours: beam-5 translation of dev and test", file=sys.stderr)
    hyp_d, _ = translate_ours(ours["checkpoint"], srcs["dev"], args.threads, defaults=True)
    hyp_t, sec = translate_ours(ours["checkpoint"], srcs["test"], args.threads, defaults=True)
    plain_t, plain_sec = translate_ours(
        ours["checkpoint"], srcs["test"], args.threads, defaults=False
    )
    (out / "ours.hyp.test").write_text("\n".join(hyp_t) + "\n")
    ours.update(dev=score(hyp_d, refs["dev"]), test=score(hyp_t, refs["test"]))
    ours["beam5_sent_per_s"] = round(len(hyp_t) / sec, 1)
    ours["test_plain_fp32"] = score(plain_t, refs["test"])
    ours["beam5_plain_fp32_sent_per_s"] = round(len(plain_t) / plain_sec, 1)

    print("[peer] joey: beam-5 translation of dev and test", file=sys.stderr)
    jdir = out / "joey"
    cmd = [str(joey.venv_python()), str(JOEY_SCRIPT), "--joey-test", str(cfg_path),
           peer["best_ckpt"], str(args.threads), str(jdir / "hyp"),
           str(jdir / "test.json")]  # fmt: skip
    run_watched(cmd, child_env(args.threads), out / "joey_test.log")
    tj = json.loads((jdir / "test.json").read_text())
    for s in ("dev", "test"):
        peer[s] = score((jdir / f"hyp.{s}").read_text().splitlines(), refs[s])
    peer["beam5_sent_per_s"] = round(tj["test"]["sentences"] / tj["test"]["seconds"], 1)
    return refs


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--minutes", type=float, default=8.0, help="training budget per system")
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--test-limit", type=int, default=0, help="first N test sentences (0 = all)")
    ap.add_argument("--dev-limit", type=int, default=1000, help="first N dev sentences scored")
    ap.add_argument("--val-sentences", type=int, default=500, help="dev sentences per validation")
    ap.add_argument(
        "--peer-val-sentences",
        type=int,
        default=100,
        help="Joey NMT: dev sentences per validation (its greedy decoding of an early model "
        "runs to the length limit: 500 sentences took 2 min 18 s here)",
    )
    ap.add_argument("--eval-every", type=int, default=0, help="ours; 0 = about 4 per budget")
    ap.add_argument("--peer-hidden", type=int, default=256)
    ap.add_argument("--peer-enc-layers", type=int, default=2)
    ap.add_argument("--peer-dec-layers", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench"), help="work files")
    ap.add_argument("--results", default=str(RESULTS), help="peer.json, plots")
    ap.add_argument(
        "--reuse-ours", action="store_true", help="keep a finished run of ours in --out"
    )
    args = ap.parse_args(argv)
    out, results = Path(args.out).resolve(), Path(args.results).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    venv_info = joey.ensure_venv()
    print(f"[peer] Joey NMT environment: {joey.VENV} {venv_info}", file=sys.stderr)
    t_all = time.perf_counter()

    ours = train_ours(args, out)  # 1. ours: train for the budget
    ckpt = ours.pop("_ckpt")
    data = joey.export_data(ckpt, out, args.dev_limit, args.test_limit)
    del ckpt
    peer, cfg_path = run_joey(args, out, data)  # 2. Joey: same data, spm, tokens, budget
    splits = data.pop("splits")
    refs = translate_both(args, out, ours, peer, cfg_path, splits)  # 3. both translate

    ratios = {
        "train_tok_per_s": ratio(ours["train_tok_per_s"], peer["train_tok_per_s"]),
        "beam5_sent_per_s": ratio(ours["beam5_sent_per_s"], peer["beam5_sent_per_s"]),
        "beam5_plain_fp32_sent_per_s": ratio(
            ours["beam5_plain_fp32_sent_per_s"], peer["beam5_sent_per_s"]
        ),
        "peak_rss": ratio(ours["peak_rss_mb"], peer["peak_rss_mb"]),
        "params": ratio(ours["params"], peer["params"]),
        "test_bleu_diff": round(ours["test"]["bleu"] - peer["test"]["bleu"], 2),
    }
    goals = {
        "train_tok_per_s_10x": (ratios["train_tok_per_s"] or 0) >= 10,
        "beam5_sent_per_s_10x": (ratios["beam5_sent_per_s"] or 0) >= 10,
        "test_bleu_20": ours["test"]["bleu"] >= 20,
    }
    pngs = plots(ours, peer, results)
    for r in (ours, peer):
        r.pop("loss_curve", None)
    summary = {
        "bench": "peer",
        "command": command(__name__, argv),
        "peer": "joeynmt 2.3.0 (recurrent encoder-decoder, Bahdanau attention, input feeding)",
        "minutes": args.minutes,
        "batch_tokens": args.batch_tokens,
        "threads": args.threads,
        "dev_sentences": len(refs["dev"]),
        "test_sentences": len(refs["test"]),
        "ours_decoding": "nmt-translate defaults (DecodeConfig on the CPU); plain fp32 beam 5 too",
        "ours": ours,
        "joeynmt": peer,
        "ratios": ratios,
        "goals": goals,
        "plots": [str(Path(p).relative_to(ROOT)) if p.startswith(str(ROOT)) else p for p in pngs],
        "total_wall_s": round(time.perf_counter() - t_all, 1),
        "machine": machine(),
    }
    return finish(summary, results / "peer.json")
