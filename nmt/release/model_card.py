"""The model card ``MODEL.md`` of a shipped model (``models/<name>/``), written from files
only: ``model.pt``'s metadata and config, the corpus provenance, an ``nmt-eval`` JSON report,
and ``NOTES.md`` (what a person wrote about the model: hardware, held-out data, known limits),
which goes in as it is. Used by ``nmt-export``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from data.errors import DataError
from nmt.checkpoint.files import load
from nmt.errors import UserError
from nmt.models import registry as arch
from nmt.models.seq2seq import ModelSpec
from nmt.release.shipped import MODEL_FILE, tuned_decode

CARD_FILE = "MODEL.md"
NOTES_FILE = "NOTES.md"


def write_card(model_dir: Path, eval_json: Path | None = None, name: str | None = None) -> Path:
    """(Re)write ``model_dir/MODEL.md`` from ``model.pt`` and, if given, an ``nmt-eval`` JSON
    report; returns the card's path."""
    facts = card_facts(model_dir, eval_json, name)
    path = model_dir / CARD_FILE
    tmp = path.with_name(f".{CARD_FILE}.tmp")
    tmp.write_text(render_card(facts), encoding="utf-8")
    os.replace(tmp, path)
    return path


def card_facts(
    model_dir: Path, eval_json: Path | None = None, name: str | None = None
) -> dict[str, Any]:
    """Every number the card shows, read from files (model.pt, provenance, the eval report)."""
    ckpt = load(model_dir / MODEL_FILE)  # checks the weights' digest
    meta, config = ckpt.get("metadata"), ckpt["config"]
    if not isinstance(meta, dict):
        raise UserError(f"{model_dir / MODEL_FILE} is not a shipped model (no metadata)")
    report = _eval_report(eval_json, meta) if eval_json else None
    return {
        "name": name or meta["name"],
        "meta": meta,
        "config": config,
        "bytes": (model_dir / MODEL_FILE).stat().st_size,
        "vocab": _vocab_size(ckpt["spm"]),
        "provenance": _provenance(config["data"]),
        "eval": report,
        "notes": _notes(model_dir / NOTES_FILE),
        "tuned": tuned_decode(model_dir / MODEL_FILE),
    }


def _notes(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip("\n") + "\n" if path.is_file() else None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


def _eval_report(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the eval report {path}: {err}") from None
    if not isinstance(report, dict) or "bleu" not in report or "chrf" not in report:
        raise UserError(f"{path} is not an nmt-eval report (no bleu/chrf)")
    digest = report.get("weights_sha256")
    if digest is not None and digest != meta.get("weights_sha256"):
        raise UserError(f"{path} scored other weights than this model's (digest differs)")
    return report


def _vocab_size(spm: bytes) -> int:
    from data.tokenizer import Tokenizer

    return Tokenizer.from_bytes(spm).vocab_size


def _provenance(data: dict[str, Any]) -> dict[str, Any] | None:
    """The corpus provenance record of a ``source=debian`` corpus, where it is available."""
    if data.get("source") != "debian":
        return None
    from data.build import corpus_files, load_provenance

    try:
        train = corpus_files(str(data["corpus"]), Path(str(data["cache_dir"])).expanduser())
    except DataError:
        return None
    return load_provenance(train["train"].parent, str(data["corpus"]))


def render_card(f: dict[str, Any]) -> str:
    """MODEL.md text from :func:`card_facts`."""
    parts = [
        _card_head(f),
        _card_use(f),
        _card_scores(f),
        _card_training(f),
        _card_curve(f),
        f["notes"],
        _card_data(f),
        _card_files(f),
    ]
    return "\n".join(p for p in parts if p)


def _card_head(f: dict[str, Any]) -> str:
    m, d, meta = f["config"]["model"], f["config"]["data"], f["meta"]
    spec = ModelSpec.from_config(m)
    dirs = d.get("directions") or []
    pairs = (
        f"multilingual ({', '.join(str(x) for x in dirs)}; the target language is chosen with "
        f"`decode.target_lang`)"
        if dirs
        else f"{d['src_lang']} -> {d['tgt_lang']}"
    )
    return (
        f"# {f['name']}\n\n"
        f"{arch.get(spec).describe(spec)}; {pairs}, trained with "
        f"pipenmt; {'tied' if m['tie_embeddings'] else 'separate'} input/output embeddings; "
        f"{meta.get('params', 0):,} parameters; a joint sentencepiece {d['spm_model_type']} "
        f"vocabulary of {f['vocab']:,} pieces. The weights are stored in "
        f"{meta['weights_dtype']} ({f['bytes'] / 1e6:.1f} MB) and computed in fp32 on load.\n"
    )


def _card_use(f: dict[str, Any]) -> str:
    name = f["name"]
    return (
        "## Use\n\n"
        "```bash\n"
        f"nmt-translate checkpoint={name} input=in.txt output=out.txt   # one line per line\n"
        f"nmt-eval checkpoint={name} split=test\n"
        "```\n\n"
        "`checkpoint=NAME` finds `models/NAME/model.pt`; the file is loaded like any checkpoint "
        "(`weights_only=True`, shapes checked against the config, weights digest checked).\n"
        + _card_tuned(f.get("tuned") or {})
    )


def _card_tuned(tuned: dict[str, Any]) -> str:
    if not tuned:
        return ""
    settings = ", ".join(f"`decode.{k}={v}`" for k, v in tuned.items())
    return (
        f"\n`decode.yaml` holds decoding settings tuned for this model on its dev split "
        f"({settings}); they apply by default, and `decode.KEY=...` on the command line wins.\n"
    )


def _card_scores(f: dict[str, Any]) -> str:
    r = f["eval"]
    if r is None:
        return (
            "## Test scores\n\n"
            "This card was written without an `nmt-eval` report, so it states no test scores.\n"
        )
    dec = r.get("decode") or {}
    decode = (
        f"beam {dec['beam_size']}, alpha {dec['alpha']}, beta {dec['beta']}"
        + ("" if dec.get("quantize", "none") == "none" else f", {dec['quantize']}")
        + (f", {dec['dtype']}" if dec.get("dtype") else "")
        + (", shortlist" if dec.get("shortlist") else "")
        + (f", beam pruning rp {dec['prune_relative']}" if dec.get("prune_relative") else "")
        if dec
        else "not recorded"
    )
    return (
        "## Test scores\n\n"
        "| split | sentences | decoding | BLEU | chrF |\n|---|---|---|---|---|\n"
        f"| {r.get('data', '?')} {r.get('split', '?')} | {r['lines']:,} | {decode} | "
        f"{r['bleu']:.2f} | {r['chrf']:.2f} |\n\n"
        f"sacrebleu signatures: BLEU `{r.get('bleu_signature', '?')}`, "
        f"chrF `{r.get('chrf_signature', '?')}`. Scored checkpoint: `{r.get('checkpoint', '?')}`.\n"
    )


def _card_training(f: dict[str, Any]) -> str:
    meta, run, t = f["meta"], f["meta"]["run"], f["config"]["train"]
    best = meta.get("best") or {}
    lines = [
        "## Training\n",
        f"- command: `{run['command']}`" if run.get("command") else "- command: not recorded",
        f"- exported checkpoint: step {meta['step']:,}, after "
        f"{_duration(meta['train_seconds'])} of training (`{meta['source_checkpoint']}`)",
    ]
    if run.get("steps") is not None and run.get("wall_s") is not None:
        lines.append(
            f"- the run logged {run['steps']:,} steps in {_duration(run['wall_s'])} of training"
        )
    if best.get("bleu") is not None:
        lines.append(f"- best dev BLEU {best['bleu']:.2f} at step {best['step']:,}")
    lines.append(
        f"- settings: lr {t['lr']}, warmup {t['warmup_steps']} steps, label smoothing "
        f"{t['label_smoothing']}, dropout {f['config']['model']['dropout']}, "
        f"{f['config']['data']['batch_tokens']:,} tokens per batch, precision {t['precision']}, "
        f"seed {t['seed']}" + (f", lr decay `{t['decay']}`" if t.get("decay") else "")
    )
    return "\n".join(lines) + "\n"


def _card_curve(f: dict[str, Any]) -> str:
    curve = f["meta"]["run"].get("dev_curve") or []
    if not curve:
        return ""
    n = f["config"]["data"].get("max_dev_sentences", 0)
    what = f"the first {n:,} dev sentences" if n else "the dev split"
    rows = [
        f"| {c['step']:,} | {c['val_loss']:.3f} | "
        f"{'-' if c['val_bleu'] is None else format(c['val_bleu'], '.2f')} |"
        for c in curve
    ]
    return (
        f"## Dev curve\n\nFrom the run's `metrics.jsonl`: teacher-forced dev loss, and BLEU of "
        f"greedy translations of {what}.\n\n| step | dev loss | dev BLEU |\n|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )


def _card_data(f: dict[str, Any]) -> str:
    d, prov = f["config"]["data"], f["provenance"]
    text = f"## Data\n\n`data={d['name']}` (source `{d['source']}`)."
    if prov:
        counts = prov.get("counts", {})
        sizes = ", ".join(f"{s} {counts[s]['total']:,}" for s in counts if "total" in counts[s])
        text += (
            f" Built from Debian {prov.get('debian_release', '?')} by `{prov.get('command', '?')}`"
            f"; sentence pairs: {sizes}."
        )
    if d["source"] == "debian":
        text += (
            " The text is software documentation (package descriptions, application help): "
            "scores on it are not comparable with news-domain (WMT) scores, and other domains "
            "translate worse."
        )
    licences = (prov or {}).get("licences", {})
    return text + "\n" + "".join(f"\n- licence, {k}: {v}" for k, v in licences.items()) + "\n"


def _card_files(f: dict[str, Any]) -> str:
    meta = f["meta"]
    versions = meta.get("versions", {})
    return (
        "## Files\n\n"
        f"- `model.pt`: weights ({meta['weights_dtype']}), resolved config, sentencepiece model, "
        f"metadata; weights sha256 `{meta['weights_sha256']}`\n"
        "- `spm.model`: the sentencepiece model; `config.yaml`: the resolved config"
        + ("; `decode.yaml`: tuned decoding settings" if f.get("tuned") else "")
        + "\n"
        f"- exported {meta['exported_at']} with pipenmt {versions.get('pipenmt', '?')}, torch "
        f"{versions.get('torch', '?')} by `nmt-export`\n"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "an unrecorded time"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
