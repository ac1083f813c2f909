"""``nmt-eval``: sacrebleu BLEU and chrF of detokenized text, with their signatures.

``nmt-eval hyp=FILE ref=FILE`` scores two files; ``nmt-eval checkpoint=PATH split=test``
translates the split with the configured beam, then scores it. Hypotheses and references go
beside the checkpoint (``<ckpt stem>.test.beam5.hyp``), or, for a shipped model given by name,
to ``outputs/eval/<name>.test.beam5.hyp``. A JSON report is written beside the hypothesis file
(``<hyp>.eval.json``); in checkpoint mode it also records the checkpoint, its step and training
time, the split and the decoding settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF
from tqdm import tqdm

from data.atomic import atomic_write_text
from nmt.config import AppConfig, DataConfig, DecodeConfig, config_to_dict, from_dict
from nmt.errors import UserError
from nmt.machine.calibrate import announce
from nmt.prepare.multilingual import is_multilingual


def read_lines(path: str, what: str) -> list[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} file {path} {'is a folder' if p.is_dir() else 'does not exist'}")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {what} file {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: invalid UTF-8 ({err.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def score(hyps: list[str], refs: list[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu defaults: 13a tokenization, chrF2)."""
    bleu, chrf = BLEU(), CHRF()
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return {
        "bleu": round(b.score, 4),
        "chrf": round(c.score, 4),
        "lines": len(hyps),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_text": str(b),
        "chrf_text": str(c),
    }


def score_files(hyp: str, ref: str) -> dict[str, Any]:
    hyps, refs = read_lines(hyp, "hyp"), read_lines(ref, "ref")
    if len(hyps) != len(refs):
        raise UserError(f"hyp={hyp} has {len(hyps)} lines but ref={ref} has {len(refs)}")
    if not hyps:
        raise UserError(f"hyp={hyp} and ref={ref} are empty: nothing to score")
    return {"hyp": hyp, "ref": ref, **score(hyps, refs)}


def _load(cfg: AppConfig) -> dict[str, Any]:
    """The checkpoint (path or shipped name), its model and tokenizer on the decode device."""
    from nmt.checkpoint.files import load, require_single_device
    from nmt.decode.inference import load_for_decoding
    from nmt.decode.translate import check_decode
    from nmt.release.shipped import eval_stem, resolve_checkpoint

    ckpt_path, name = resolve_checkpoint(str(cfg.checkpoint))
    split = str(cfg.split)
    if split not in ("train", "dev", "test"):
        raise UserError(f"split={split}: expected train, dev or test")
    if int(cfg.limit) < 0:
        raise UserError(f"limit={cfg.limit}: must be >= 0 (0 = the whole split)")
    check_decode(cfg.decode)
    ckpt = require_single_device(load(ckpt_path), str(ckpt_path))
    if not isinstance(ckpt["config"].get("data"), dict):
        raise UserError(f"checkpoint {ckpt_path} does not name its data (no data config)")
    model, tok, arith = load_for_decoding(str(ckpt_path), cfg.decode, ckpt)
    d = cfg.decode
    default = DecodeConfig()
    tag = f"{split}.beam{d.beam_size}"  # + what differs from the defaults
    if (str(d.quantize), str(d.dtype)) != (default.quantize, default.dtype):
        tag += f".{arith.name}"  # arithmetic asked for, not the calibrated default
    if int(d.beam_size) > 1:  # pruning changes nothing at beam 1; names say non-defaults
        rel, ab = float(d.prune_relative), float(d.prune_absolute)
        tag += f".rp{rel:g}" if rel != default.prune_relative else ""
        tag += f".ap{ab:g}" if ab != default.prune_absolute else ""
    tag += f".lim{int(cfg.limit)}" if int(cfg.limit) else ""
    stem = eval_stem(name) if name else ckpt_path.with_suffix("")
    _make_folder(stem.parent)
    announce(arith.choice)
    return {
        "model": model, "tok": tok, "data": from_dict(DataConfig, ckpt["config"]["data"]),
        "split": split, "stem": stem, "tag": tag,
        "info": _run_info(cfg, ckpt, ckpt_path, name, arith.record()),
    }  # fmt: skip


def _translate_split(cfg: AppConfig, run: dict[str, Any]) -> tuple[str, str]:
    """Translate the checkpoint's data split; returns (hyp path, ref path)."""
    from nmt.decode.translate import one_line, translate_texts
    from nmt.prepare.splits import load_text

    split = run["split"]
    pairs = load_text(run["data"], (split,))[split][: int(cfg.limit) or None]
    with tqdm(total=len(pairs), unit="sent", file=sys.stderr, disable=None, desc=split) as bar:
        hyps = translate_texts(run["model"], run["tok"], [s for s, _ in pairs], cfg.decode,
                               progress=bar)  # fmt: skip
    lim = f".lim{int(cfg.limit)}" if int(cfg.limit) else ""
    hyp_path = Path(f"{run['stem']}.{run['tag']}.hyp")
    ref_path = Path(f"{run['stem']}.{split}{lim}.ref")
    _write(hyp_path, "".join(h + "\n" for h in hyps))
    _write(ref_path, "".join(one_line(t) + "\n" for _, t in pairs))
    return str(hyp_path), str(ref_path)


def _eval_multilingual(cfg: AppConfig, run: dict[str, Any]) -> dict[str, Any]:
    """Every trained direction and every zero-shot one of a multilingual checkpoint, scored
    apart; with ``pivot=true`` each zero-shot direction also through English (X -> en -> Y)."""
    from nmt.decode.translate import one_line
    from nmt.prepare.multilingual import directions, load_direction, name, zero_shot

    data, split, limit = run["data"], run["split"], int(cfg.limit) or None
    trained, unseen = directions(data), zero_shot(data)
    lim = f".lim{int(cfg.limit)}" if int(cfg.limit) else ""
    report: dict[str, Any] = {"trained": {}, "zero_shot": {}, "pivot": {}}
    for group, dirs in (("trained", trained), ("zero_shot", unseen)):
        for d in dirs:
            pairs = load_direction(data, d, split)[:limit]
            src, refs = [s for s, _ in pairs], [t for _, t in pairs]
            hyps = _into(cfg, run, src, d[1])
            _write(
                Path(f"{run['stem']}.{run['tag']}.{name(d)}.hyp"), "".join(h + "\n" for h in hyps)
            )
            _write(
                Path(f"{run['stem']}.{split}{lim}.{name(d)}.ref"),
                "".join(one_line(t) + "\n" for t in refs),
            )
            report[group][name(d)] = _short(score(hyps, refs))
            if group == "zero_shot" and bool(cfg.pivot):
                report["pivot"][name(d)] = _pivot(cfg, run, d, trained, src, refs)
    for group, rows in report.items():
        for k, r in rows.items():
            if "skipped" in r:
                print(f"{group:9s} {k}: skipped ({r['skipped']})")
                continue
            print(f"{group:9s} {k}: BLEU {r['bleu']:.2f} chrF {r['chrf']:.2f} ({r['lines']} lines)")
    result = {**report, **run["info"]}
    out = Path(f"{run['stem']}.{run['tag']}.multi.eval.json")
    _write(out, json.dumps(result, indent=2) + "\n")
    print(f"-> {out}", file=sys.stderr)
    return result


def _pivot(
    cfg: AppConfig,
    run: dict[str, Any],
    d: tuple[str, str],
    trained: list[tuple[str, str]],
    src: list[str],
    refs: list[str],
) -> dict[str, Any]:
    """Zero-shot direction ``d`` = X -> Y through English (X -> en -> Y): scored when the model
    was trained on both legs, else the reason it was not."""
    if "en" in d:
        return {"skipped": "English is one end: nothing to pivot through"}
    legs = [(d[0], "en"), ("en", d[1])]
    missing = [f"{a}-{b}" for a, b in legs if (a, b) not in trained]
    if missing:
        return {"skipped": f"needs trained {' and '.join(missing)}"}
    return _short(score(_into(cfg, run, _into(cfg, run, src, "en"), d[1]), refs))


def _into(cfg: AppConfig, run: dict[str, Any], texts: list[str], lang: str) -> list[str]:
    """Translate ``texts`` into ``lang`` with the configured decoding."""
    from nmt.decode.translate import translate_texts

    return translate_texts(run["model"], run["tok"], texts, cfg.decode, lang)


def _short(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("bleu", "chrf", "lines", "bleu_signature")}


def _run_info(
    cfg: AppConfig,
    ckpt: dict[str, Any],
    path: Path,
    name: str | None,
    arithmetic: dict[str, Any],
) -> dict[str, Any]:
    """What ``nmt-eval checkpoint=`` scored: the checkpoint, its step and training time, the
    split and data, the decoding settings (recorded in the JSON report)."""
    meta = ckpt.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    decode = config_to_dict(cfg.decode)
    return {
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_path": str(path),
        "model_name": name,
        "step": ckpt.get("step"),
        "train_seconds": ckpt.get("train_seconds", meta.get("train_seconds")),
        "weights_sha256": meta.get("weights_sha256"),
        "split": str(cfg.split),
        "limit": int(cfg.limit),
        "data": ckpt["config"]["data"].get("name"),
        "model": ckpt["config"]["model"].get("name"),
        "decode": {
            **{
                k: decode[k]
                for k in (
                    "beam_size",
                    "alpha",
                    "beta",
                    "max_len_a",
                    "max_len_b",
                    "prune_relative",
                    "prune_absolute",
                )  # fmt: skip
            },
            **arithmetic,
            "shortlist": cfg.decode.shortlist and "shortlist" in ckpt,
        },
    }


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {folder}: {err.strerror or err}") from None


def _write(path: Path, text: str) -> None:
    """Atomic write; disk full or an unwritable folder is a one-line error (old file kept)."""
    try:
        atomic_write_text(path, text)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


def eval_cli(cfg: AppConfig) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if cfg.checkpoint:
        run = _load(cfg)
        if is_multilingual(run["data"]):
            return _eval_multilingual(cfg, run)
        hyp, ref = _translate_split(cfg, run)
        info = run["info"]
    elif cfg.hyp and cfg.ref:
        hyp, ref = str(cfg.hyp), str(cfg.ref)
    else:
        raise UserError("give hyp=FILE ref=FILE, or checkpoint=PATH|NAME [split=test]")
    result = {**score_files(hyp, ref), **info}
    print(result["bleu_text"])
    print(result["chrf_text"], flush=True)
    out = Path(f"{hyp}.eval.json")
    _write(out, json.dumps(result, indent=2) + "\n")
    print(
        f"BLEU {result['bleu']:.2f} chrF {result['chrf']:.2f} ({result['lines']} lines) -> {out}",
        file=sys.stderr,
    )
    return result
