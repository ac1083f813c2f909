"""``nmt-prepare``: build or fetch the corpus, compare with the shipped copy, train the
tokenizer, and report counts."""

from __future__ import annotations

import json
from typing import Any

from data.build import SHIPPED_DIR, build_corpus, compare, load_provenance
from data.multi import MULTI_NAME, build_multi
from nmt.config import AppConfig, DataConfig
from nmt.prepare.splits import cache_dir, prepare_corpus


def _build_debian(dcfg: DataConfig) -> dict[str, Any]:
    name = str(dcfg.corpus)
    folder = cache_dir(dcfg) / "corpora" / name
    shipped = load_provenance(SHIPPED_DIR, name)
    existing = load_provenance(folder, name)
    if shipped is None and existing is not None:
        print(f"{name}: already built in {folder} (reusing; delete the folder to rebuild)")
        return existing
    if name == MULTI_NAME:
        built = build_multi(cache_dir(dcfg), name=name)
    else:
        built = build_corpus(name, cache_dir(dcfg))
    print(f"{name}: built into {built.folder}")
    if shipped is not None:
        diffs = compare(built.provenance, shipped)
        if diffs:
            print(f"{name}: differs from the shipped corpus: " + "; ".join(diffs))
        else:
            print(f"{name}: identical to the shipped corpus")
        built.provenance["identical_to_shipped"] = not diffs
    return built.provenance


def prepare(cfg: AppConfig) -> dict[str, Any]:
    """Build/validate the configured corpus and its tokenizer; return a summary."""
    dcfg = cfg.data
    summary: dict[str, Any] = {"data": str(dcfg.name)}
    if dcfg.source == "debian":
        prov = _build_debian(dcfg)
        summary["counts"] = prov["counts"]
        summary["identical_to_shipped"] = prov.get("identical_to_shipped")
    corpus = prepare_corpus(dcfg, int(cfg.train.seed))
    tok = corpus.tokenizer
    state = "trained" if tok.trained else "reused"
    print(f"sentencepiece ({dcfg.spm_model_type}, vocab {tok.vocab_size}): {state} {tok.path}")
    summary["pairs"] = corpus.stats["pairs"]
    summary["filter"] = corpus.stats["filter"]
    summary["tokenizer"] = str(tok.path)
    print(json.dumps(summary))
    return summary
