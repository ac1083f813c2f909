"""How many test translations run into the length cap, and how large the shortlist is.

    python -m scripts.bench decode_stats --checkpoint gnmt-debian-en-de \
        --out docs/results/translate/amx/decode_stats.json

- Length cap: the search stops a hypothesis at ``floor(max_len_a * src_len + max_len_b)``
  generated tokens (``src_len`` counts the source's eos; ``nmt/decode/search.py``). Counted:
  the 1-best translations that reach it, and the references (sentencepiece tokens) that are
  longer than it, i.e. that no search could produce. Decoding: beam 5, fp32, pruning rp 0.3,
  the model's own length and coverage penalties (its ``decode.yaml``).
- Shortlist (``nmt/decode/shortlist.py``, for a model that carries one): the number of target ids
  each test sentence may produce, special ids included, out of the vocabulary; and the union
  over each decoding batch's sentences (a shortlist shared by the batch would keep that many).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from data.batching import inference_batches
from nmt.checkpoint.files import load
from nmt.config import DecodeConfig
from nmt.decode.inference import load_for_inference
from nmt.decode.shortlist import Shortlist
from nmt.decode.translate import translate_ids
from nmt.machine import hostmem
from nmt.prepare.splits import checkpoint_split
from nmt.release.shipped import resolve_checkpoint
from scripts.bench.common import command, finish, machine, model_decode, parser, set_threads


def cap(d: DecodeConfig, src_tokens: int) -> int:
    """The search's length cap for a source of ``src_tokens`` pieces (eos excluded)."""
    return math.floor(d.max_len_a * (src_tokens + 1) + d.max_len_b)


def shortlist_sizes(
    shortlist: Shortlist, src_ids: list[list[int]], batch_tokens: int
) -> tuple[list[int], list[int]]:
    """Allowed target ids per sentence (the shortlist is a function of the sentence only), and
    per decoding batch (``batch_tokens``) the size of the union of its sentences' lists: what
    one shared output matrix per batch would have to keep."""
    sizes: list[int] = []
    unions: list[int] = []
    for batch in inference_batches(src_ids, batch_tokens, 8):
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


def main(argv: list[str] | None = None) -> int:
    allocator = hostmem.tune()
    ap = parser(__name__, __doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    # beam 5, fp32, pruning rp 0.3 (the default), the model's own penalties
    d = dataclasses.replace(model_decode(args.checkpoint), beam_size=5, prune_absolute=0.0)
    pairs = checkpoint_split(load(resolve_checkpoint(args.checkpoint)[0]), args.split)
    model, tok = load_for_inference(args.checkpoint, "none", "cpu", torch.float32)
    src_ids = tok.encode([s for s, _ in pairs])
    ref_lens = [len(x) for x in tok.encode([t for _, t in pairs])]
    hyps = translate_ids(model, src_ids, d)
    caps = [cap(d, len(s)) for s in src_ids]
    at_cap = sum(len(h[0].tokens) >= c for h, c in zip(hyps, caps, strict=True))
    refs_over = sum(n > c for n, c in zip(ref_lens, caps, strict=True))
    keys = ("beam_size", "alpha", "beta", "max_len_a", "max_len_b", "prune_relative")
    doc: dict[str, Any] = {
        "bench": "decode_stats",
        "command": command(__name__, argv),
        "checkpoint": args.checkpoint,
        "split": args.split,
        "sentences": len(pairs),
        "decode": {k: getattr(d, k) for k in keys},
        "translations_at_length_cap": at_cap,
        "references_longer_than_cap": refs_over,
    }
    shortlist = getattr(model, "shortlist", None)
    if shortlist is not None:
        doc["vocab"] = int(shortlist.table.size(0))
        sizes, unions = shortlist_sizes(shortlist, src_ids, d.batch_tokens)
        doc["shortlist_ids_per_sentence"] = summary(sizes)
        doc["shortlist_union_per_batch"] = summary(unions)
    doc["machine"] = machine(allocator=allocator)
    return finish(doc, args.out)
