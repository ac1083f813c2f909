"""Why training sat at unigram perplexity: the training NLL of four inits and rates, side by side.

Each variant trains the same model (default: 2+2 layers x 256, the shipped corpus, 2,048-token
batches, seed 1, one thread) for ``--steps`` optimizer steps through
:class:`nmt.train.trainer.Trainer` and records the mean training NLL per 10 steps. The
variants differ only in the overrides named; the first is the old default (NVIDIA GNMT v2:
every weight, the generator bias included, U(-0.1, 0.1); Adam 2e-3). Writes ``--out`` (JSON)
and the plot beside it (``.png``).

    python -m scripts.bench plateau --steps 100
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from nmt.prepare.splits import Corpus
from scripts.bench.common import command, finish, machine, parser, results_for, set_threads

VARIANTS = {
    "NVIDIA init, lr 2e-3": ["model.output_bias=uniform", "train.lr=2e-3"],
    "prior bias, lr 2e-3": ["model.output_bias=prior", "train.lr=2e-3"],
    "prior bias, lr 5e-3": ["model.output_bias=prior", "train.lr=5e-3"],
    "prior bias, lr 1e-2": ["model.output_bias=prior", "train.lr=1e-2"],
}
BASE = [
    "model=gnmt_small",
    "model.enc_layers=2",
    "model.dec_layers=2",
    "data.batch_tokens=2048",
    "train.warmup_steps=20",
    "train.eval_bleu=false",
]


def load_corpus() -> Corpus:
    """The shipped corpus as every variant sees it (the variants differ in model/train keys)."""
    from nmt.config import compose_config
    from nmt.prepare.splits import prepare_corpus
    from nmt.train.build import seed_everything

    seed_everything(1)
    return prepare_corpus(compose_config(BASE).data, 1)


def run_variant(
    corpus: Corpus, overrides: list[str], steps: int, out_dir: Path
) -> list[dict[str, Any]]:
    from nmt.config import compose_config
    from nmt.train.build import seed_everything
    from nmt.train.single import one_device_trainer

    cfg = compose_config([*BASE, f"train.out_dir={out_dir}", *overrides])
    seed_everything(1)
    trainer = one_device_trainer(cfg, corpus, out_dir)
    curve: list[dict[str, Any]] = []
    tokens, window, started = 0, [], time.monotonic()
    for step in range(1, steps + 1):
        batch = next(iter(trainer.batcher))
        _, nll = trainer.train_step(batch)
        tokens += batch.ntokens
        window.append(nll)
        if step % 10 == 0:
            curve.append(
                {
                    "step": step,
                    "tokens": tokens,
                    "nll": sum(window) / len(window),
                    "s": round(time.monotonic() - started, 1),
                }
            )
            print(f"{overrides} {curve[-1]}", flush=True)
            window = []
    return curve


def unigram_entropy(corpus: Corpus) -> float:
    """Entropy (nats) of the training targets' unigram distribution, eos included."""
    tgt = corpus.ids["train"][1]
    counts = torch.bincount(torch.tensor([i for s in tgt for i in [*s, 3]]))
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log()).sum())


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, curve in result["variants"].items():
        ax.plot([c["tokens"] / 1000 for c in curve], [c["nll"] for c in curve], label=name)
    ax.axhline(result["unigram_entropy"], color="grey", ls="--", lw=1, label="unigram entropy")
    ax.set_xlabel("target tokens seen (thousands)")
    ax.set_ylabel("training NLL (nats/token)")
    ax.set_title("2+2 x 256 GNMT, shipped corpus, 2,048-token batches")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=results_for("train", "plateau.json"))
    ap.add_argument("--work", default="outputs/plateau")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    corpus = load_corpus()
    variants = {
        name: run_variant(corpus, ov, args.steps, Path(args.work) / f"v{i}")
        for i, (name, ov) in enumerate(VARIANTS.items())
    }
    result = {
        "command": command(__name__, argv),
        "machine": machine(),
        "base_overrides": BASE,
        "overrides": VARIANTS,
        "unigram_entropy": unigram_entropy(corpus),
        "variants": variants,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(result, args.out.with_suffix(".png"))
    return finish(result, args.out)
