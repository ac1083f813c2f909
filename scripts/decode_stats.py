"""Two facts about decoding a trained model's test split, written to a committed JSON file:
how many translations run into the length cap, and how large the vocabulary shortlist is.

    python scripts/decode_stats.py --checkpoint gnmt-debian-en-de \
        --out docs/results/decode_stats.json

- Length cap: the search stops a hypothesis at ``floor(max_len_a * src_len + max_len_b)``
  generated tokens (``src_len`` counts the source's eos; ``nmt/decode/search.py``). The script
  counts
  the 1-best translations that reach it, and the references (sentencepiece tokens) that are
  longer than it, i.e. that no search could produce. Decoding: beam 5, fp32, pruning rp 0.3,
  the model's own length and coverage penalties (its ``decode.yaml``).
- Shortlist (``nmt/decode/shortlist.py``, for a model that carries one): the number of target ids
  each test sentence may produce, special ids included, out of the vocabulary; and the union
  over each decoding batch's sentences (a shortlist shared by the batch would keep that many).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.atomic import atomic_write_text  # noqa: E402
from data.batching import inference_batches  # noqa: E402
from nmt.checkpoint.files import load  # noqa: E402
from nmt.config import DecodeConfig  # noqa: E402
from nmt.decode.inference import load_for_inference  # noqa: E402
from nmt.decode.shortlist import Shortlist  # noqa: E402
from nmt.decode.translate import translate_ids  # noqa: E402
from nmt.machine import hostmem  # noqa: E402
from nmt.prepare.splits import checkpoint_split  # noqa: E402
from nmt.release.shipped import resolve_checkpoint, tuned_decode  # noqa: E402
from nmt.train.metrics import cpu_model  # noqa: E402


class Decode:
    """Beam 5 with pruning rp 0.3 (the default) and the model's penalties (set in ``main``)."""

    beam_size, nbest, batch_tokens, shortlist = 5, 1, 4000, False
    alpha, beta = DecodeConfig.alpha, DecodeConfig.beta
    max_len_a, max_len_b = DecodeConfig.max_len_a, DecodeConfig.max_len_b
    prune_relative, prune_absolute = DecodeConfig.prune_relative, 0.0


def cap(src_tokens: int) -> int:
    """The search's length cap for a source of ``src_tokens`` pieces (eos excluded)."""
    return math.floor(Decode.max_len_a * (src_tokens + 1) + Decode.max_len_b)


def shortlist_sizes(shortlist: Shortlist, src_ids: list[list[int]]) -> tuple[list[int], list[int]]:
    """Allowed target ids per sentence (the shortlist is a function of the sentence only), and
    per decoding batch (``Decode.batch_tokens``) the size of the union of its sentences' lists:
    what one shared output matrix per batch would have to keep."""
    sizes: list[int] = []
    unions: list[int] = []
    for batch in inference_batches(src_ids, Decode.batch_tokens, 8):
        ids = shortlist.candidates(batch.src)
        sizes += (ids >= 0).sum(dim=1).tolist()
        unions.append(int(torch.unique(ids[ids >= 0]).numel()))
    return sizes, unions


def summary(values: list[int]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {
        "mean": round(float(t.mean()), 1),
        "median": float(t.median()),
        "min": float(t.min()),
        "max": float(t.max()),
    }


def main() -> None:
    allocator = hostmem.tune()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_checkpoint(args.checkpoint)[0]
    tuned = tuned_decode(path)
    Decode.alpha = float(tuned.get("alpha", Decode.alpha))
    Decode.beta = float(tuned.get("beta", Decode.beta))
    ckpt = load(path)
    pairs = checkpoint_split(ckpt, args.split)
    model, tok = load_for_inference(args.checkpoint, "none", "cpu", torch.float32)
    src_ids = tok.encode([s for s, _ in pairs])
    ref_lens = [len(x) for x in tok.encode([t for _, t in pairs])]
    hyps = translate_ids(model, src_ids, Decode)
    caps = [cap(len(s)) for s in src_ids]
    at_cap = sum(len(h[0].tokens) >= c for h, c in zip(hyps, caps, strict=True))
    refs_over = sum(n > c for n, c in zip(ref_lens, caps, strict=True))
    doc: dict = {
        "bench": "decode_stats",
        "checkpoint": args.checkpoint,
        "split": args.split,
        "sentences": len(pairs),
        "decode": {k: getattr(Decode, k) for k in (
            "beam_size", "alpha", "beta", "max_len_a", "max_len_b", "prune_relative")},
        "translations_at_length_cap": at_cap,
        "references_longer_than_cap": refs_over,
    }  # fmt: skip
    shortlist = getattr(model, "shortlist", None)
    if shortlist is not None:
        doc["vocab"] = int(shortlist.table.size(0))
        sizes, unions = shortlist_sizes(shortlist, src_ids)
        doc["shortlist_ids_per_sentence"] = summary(sizes)
        doc["shortlist_union_per_batch"] = summary(unions)
    doc["machine"] = {
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "allocator": allocator,
    }
    text = json.dumps(doc, indent=1) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
