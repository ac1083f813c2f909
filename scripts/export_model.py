"""Export a trained checkpoint as a shipped model folder, ``models/<name>/``, and write its card.

    python scripts/export_model.py --checkpoint runs/X/checkpoints/best.pt --name NAME
        [--dtype fp16|int8] [--run-dir runs/X] [--command "nmt-train ..."]
        [--eval-json FILE] [--models-dir DIR] [--force]
    python scripts/export_model.py --card NAME [--eval-json FILE] [--models-dir DIR]

The folder holds ``model.pt`` (weights in fp16, or int8 with per-row scales; the resolved
config; the sentencepiece model; step; metadata: the run's dev curve, training time and command,
a digest of the weights), ``spm.model``, ``config.yaml`` and ``MODEL.md``. It is built in a temp
folder beside the target, loaded back through ``nmt-translate``'s loader, then renamed into place
(``--force`` replaces an existing folder); a ``model.pt`` over 25 MB is refused.

``MODEL.md`` is rendered by :func:`write_card` from files only: ``model.pt``'s metadata and
config, the corpus provenance, and an ``nmt-eval`` JSON report (``--eval-json``; in ``--card``
mode the default is where ``nmt-eval checkpoint=NAME split=test decode=beam5`` writes it). After
evaluating the exported model, re-run ``--card NAME`` to put the test scores in the card.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.errors import DataError  # noqa: E402
from nmt.checkpoint import FORMAT, load, require_single_device  # noqa: E402
from nmt.errors import UserError  # noqa: E402
from nmt.shipped import (  # noqa: E402
    MAX_MODEL_BYTES,
    MODEL_FILE,
    encode_weights,
    eval_stem,
    is_model_name,
    models_dir,
    weights_digest,
)
from nmt.translate import load_for_inference  # noqa: E402

CARD_FILE = "MODEL.md"


# ---------------------------------------------------------------------------------- export
def export_model(
    checkpoint: Path,
    name: str,
    folder: Path | None = None,
    dtype: str = "fp16",
    run_dir: Path | None = None,
    command: str | None = None,
    eval_json: Path | None = None,
    force: bool = False,
    max_bytes: int = MAX_MODEL_BYTES,
) -> Path:
    """Write ``<folder>/<name>/`` (default folder: :func:`nmt.shipped.models_dir`) from a
    single-device checkpoint; returns the model folder. ``run_dir`` defaults to the folder above
    ``checkpoints/``."""
    folder = models_dir() if folder is None else folder
    target = _check_target(folder, name, force)
    ckpt = require_single_device(load(checkpoint), str(checkpoint))
    model, _ = load_for_inference(str(checkpoint), "none")  # the weights fit their config
    run = run_record(run_dir or checkpoint.resolve().parent.parent, command)
    payload = make_payload(ckpt, model.state_dict(), dtype, name, checkpoint, run)
    payload["metadata"]["params"] = sum(p.numel() for p in model.parameters())
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder))
    try:
        _write_folder(tmp, payload, max_bytes)
        write_card(tmp, eval_json, name=name)
        _install(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_target(folder: Path, name: str, force: bool) -> Path:
    if not is_model_name(name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (no '.pt')")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {folder}: {err.strerror or err}") from None
    target = folder / name
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to replace it")
    return target


def make_payload(
    ckpt: dict[str, Any],
    state: dict[str, torch.Tensor],
    dtype: str,
    name: str,
    source: Path,
    run: dict[str, Any],
) -> dict[str, Any]:
    """The shipped ``model.pt`` dict: stored weights, config, sentencepiece model, metadata."""
    stored, scales = encode_weights(state, dtype)
    meta = {
        "name": name,
        "weights_dtype": dtype,
        "step": int(ckpt.get("step", 0)),
        "train_seconds": _float(ckpt.get("train_seconds")),
        "best": _plain(ckpt.get("best", {})),
        "source_checkpoint": str(source),
        "source_sha256": _sha256(source),
        "run": run,
        "exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {"pipenmt": _version("pipenmt"), "torch": str(torch.__version__)},
        "weights_sha256": weights_digest(stored, scales),
    }
    return {
        "format": FORMAT,
        "model": stored,
        "weights_dtype": dtype,
        "weight_scales": scales,
        "config": ckpt["config"],
        "spm": ckpt["spm"],
        "step": meta["step"],
        "metadata": meta,
    }


def run_record(run_dir: Path, command: str | None = None) -> dict[str, Any]:
    """What the run folder tells: the dev curve and the last logged step and wall time
    (``metrics.jsonl``), the training command (``.hydra/overrides.yaml``, or ``command``)."""
    records = _metrics(run_dir / "metrics.jsonl")
    timed = [r for r in records if isinstance(r.get("wall_s"), (int, float))]
    curve = [
        {
            "step": int(r["step"]),
            "val_loss": _float(r["val_loss"]),
            "val_bleu": _float(r.get("val_bleu")),
        }
        for r in records
        if "val_loss" in r
    ]
    return {
        "dir": str(run_dir),
        "command": command or _hydra_command(run_dir),
        "steps": max((int(r["step"]) for r in records if "step" in r), default=None),
        "wall_s": float(timed[-1]["wall_s"]) if timed else None,
        "dev_curve": curve,
    }


def _curve_point(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": int(rec["step"]),
        "val_loss": float(rec["val_loss"]),
        "val_bleu": _float(rec.get("val_bleu")),
    }


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _hydra_command(run_dir: Path) -> str | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return " ".join(["nmt-train", *(str(o) for o in overrides)])


def _write_folder(folder: Path, payload: dict[str, Any], max_bytes: int) -> None:
    """model.pt (size-checked, loaded back), spm.model, config.yaml."""
    model_pt = folder / MODEL_FILE
    torch.save(payload, model_pt)
    size = model_pt.stat().st_size
    if size > max_bytes:
        hint = " (try --dtype int8)" if payload["weights_dtype"] == "fp16" else ""
        raise UserError(
            f"model.pt would be {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB limit{hint}"
        )
    load_for_inference(str(model_pt), "none")  # the shipped file loads like any checkpoint
    (folder / "spm.model").write_bytes(payload["spm"])
    header = f"# Resolved config of {payload['metadata']['name']} (the same as in model.pt)\n"
    config = yaml.safe_dump(payload["config"], sort_keys=False, allow_unicode=True)
    (folder / "config.yaml").write_text(header + config, encoding="utf-8")
    folder.chmod(0o755)


def _install(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first, then deleted."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None:
            os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------ model card
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
    }


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
        _card_data(f),
        _card_files(f),
    ]
    return "\n".join(p for p in parts if p)


def _card_head(f: dict[str, Any]) -> str:
    m, d, meta = f["config"]["model"], f["config"]["data"], f["meta"]
    return (
        f"# {f['name']}\n\n"
        f"A GNMT-style LSTM translation model, {d['src_lang']} -> {d['tgt_lang']}, trained with "
        f"pipenmt: a bidirectional first encoder layer, {m['enc_layers']} encoder and "
        f"{m['dec_layers']} decoder LSTM layers, {m['hidden']} wide, attention, "
        f"{'tied' if m['tie_embeddings'] else 'separate'} input/output embeddings; "
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
        f"nmt-eval checkpoint={name} split=test decode=beam5\n"
        "```\n\n"
        "`checkpoint=NAME` finds `models/NAME/model.pt`; the file is loaded like any checkpoint "
        "(`weights_only=True`, shapes checked against the config, weights digest checked).\n"
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
        "- `spm.model`: the sentencepiece model; `config.yaml`: the resolved config\n"
        f"- exported {meta['exported_at']} with pipenmt {versions.get('pipenmt', '?')}, torch "
        f"{versions.get('torch', '?')} by `scripts/export_model.py`\n"
    )


# ---------------------------------------------------------------------------------- helpers
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "an unrecorded time"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _plain(value: Any) -> Any:
    """``value`` with tensors and numpy scalars made Python numbers (safe for weights_only)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def default_eval_json(name: str) -> Path:
    """Where ``nmt-eval checkpoint=NAME split=test decode=beam5`` writes its report."""
    return Path(f"{eval_stem(name)}.test.beam5.hyp.eval.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="single-device checkpoint to export")
    ap.add_argument("--name", help="model name: the folder models/NAME")
    ap.add_argument("--dtype", choices=("fp16", "int8"), default="fp16")
    ap.add_argument("--run-dir", type=Path, help="run folder (default: above checkpoints/)")
    ap.add_argument("--command", help="training command, if the run folder does not record it")
    ap.add_argument("--eval-json", type=Path, help="nmt-eval JSON report for the card")
    ap.add_argument("--models-dir", type=Path, help="default: $PIPENMT_MODELS_DIR or models/")
    ap.add_argument("--force", action="store_true", help="replace an existing model folder")
    ap.add_argument("--card", metavar="NAME", help="only rewrite MODEL.md of models/NAME")
    args = ap.parse_args(argv)
    try:
        print(_run(args))
    except (UserError, DataError) as err:
        print(f"export_model: error: {err}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> Path:
    folder = args.models_dir or models_dir()
    if args.card:
        report = args.eval_json or default_eval_json(args.card)
        model_dir = folder / args.card
        if not (model_dir / MODEL_FILE).is_file():
            raise UserError(f"{model_dir / MODEL_FILE} does not exist")
        return write_card(model_dir, report if report.is_file() or args.eval_json else None)
    if not args.checkpoint or not args.name:
        raise UserError("give --checkpoint CKPT --name NAME, or --card NAME")
    return export_model(
        args.checkpoint,
        args.name,
        folder,
        args.dtype,
        args.run_dir,
        args.command,
        args.eval_json,
        args.force,
    )


if __name__ == "__main__":
    sys.exit(main())
