"""``nmt-export``: a trained checkpoint as a shipped model folder ``models/<name>/``, with its card.

    nmt-export --checkpoint runs/X/checkpoints/best.pt --name NAME
        [--dtype fp16|int8|fp32] [--run-dir runs/X] [--command "nmt-train ..."]
        [--eval-json FILE] [--models-dir DIR] [--force]
    nmt-export --card NAME [--eval-json FILE] [--models-dir DIR]

The folder holds ``model.pt`` (weights in fp16, int8 with per-row scales, or fp32; the resolved
config; the sentencepiece model; step; metadata: the run's dev curve, training time and command,
a digest of the weights), ``spm.model``, ``config.yaml`` and ``MODEL.md``. It is built in a temp
folder beside the target, loaded back through ``nmt-translate``'s loader, then renamed into place
(``--force`` replaces an existing folder); a ``model.pt`` over 25 MB is refused.

``MODEL.md`` is rendered by :func:`nmt.release.model_card.write_card` from files only:
``model.pt``'s metadata and config, the corpus provenance, an ``nmt-eval`` JSON report
(``--eval-json``; in ``--card`` mode the default is where ``nmt-eval checkpoint=NAME
split=test decode=beam5`` writes it), and the ``NOTES.md`` a person wrote in the model folder
(kept on ``--force``). After evaluating the exported model, re-run ``--card NAME`` to put the
test scores in the card.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml

from data.debian import sha256_file
from nmt.checkpoint.files import FORMAT, load, require_single_device
from nmt.decode.inference import load_for_inference, model_from_checkpoint
from nmt.decode.shortlist import shortlist_for
from nmt.errors import UserError
from nmt.release.model_card import NOTES_FILE, write_card
from nmt.release.plot import read_metrics
from nmt.release.shipped import (
    DECODE_FILE,
    MAX_MODEL_BYTES,
    MODEL_FILE,
    encode_weights,
    eval_stem,
    is_model_name,
    models_dir,
    weights_digest,
)
from nmt.tool import parser, run_tool


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
    shortlist: tuple[int, int] | None = (50, 500),
) -> Path:
    """Write ``<folder>/<name>/`` (default folder: :func:`nmt.release.shipped.models_dir`) from a
    single-device checkpoint; returns the model folder. ``run_dir`` defaults to the folder above
    ``checkpoints/``."""
    folder = models_dir() if folder is None else folder
    target = _check_target(folder, name, force)
    ckpt = require_single_device(load(checkpoint), str(checkpoint))
    model, _ = model_from_checkpoint(ckpt, str(checkpoint))  # the weights fit their config
    run = run_record(run_dir or checkpoint.resolve().parent.parent, command)
    payload = make_payload(ckpt, model.state_dict(), dtype, name, checkpoint, run)
    payload["metadata"]["params"] = sum(p.numel() for p in model.parameters())
    # decoding's vocabulary shortlist, from the training split (nmt/decode/shortlist.py)
    if shortlist:
        payload["shortlist"] = shortlist_for(ckpt, *shortlist).to_state()
        payload["metadata"]["shortlist_sha256"] = weights_digest(payload["shortlist"], {})
        payload["metadata"]["shortlist"] = {"per_source": shortlist[0], "frequent": shortlist[1]}
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder))
    try:
        _write_folder(tmp, payload, max_bytes)
        for keep in (NOTES_FILE, DECODE_FILE):  # notes and tuned decoding survive a re-export
            if (target / keep).is_file():
                shutil.copy2(target / keep, tmp / keep)
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
        "source_sha256": sha256_file(source),
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
    path = run_dir / "metrics.jsonl"
    records = read_metrics(path) if path.is_file() else []
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
    ap = parser("nmt-export", __doc__)
    ap.add_argument("--checkpoint", type=Path, help="single-device checkpoint to export")
    ap.add_argument("--name", help="model name: the folder models/NAME")
    ap.add_argument("--dtype", choices=("fp16", "int8", "fp32"), default="fp16")
    ap.add_argument("--run-dir", type=Path, help="run folder (default: above checkpoints/)")
    ap.add_argument("--command", help="training command, if the run folder does not record it")
    ap.add_argument("--eval-json", type=Path, help="nmt-eval JSON report for the card")
    ap.add_argument("--models-dir", type=Path, help="default: $PIPENMT_MODELS_DIR or models/")
    ap.add_argument("--force", action="store_true", help="replace an existing model folder")
    ap.add_argument("--card", metavar="NAME", help="only rewrite MODEL.md of models/NAME")
    ap.add_argument(
        "--shortlist",
        type=int,
        nargs=2,
        default=(50, 500),
        metavar=("PER_SOURCE", "FREQUENT"),
        help="vocabulary shortlist stored with the model (default 50 500); 0 0: none",
    )
    args = ap.parse_args(argv)

    def body() -> int:
        print(_run(args))
        return 0

    return run_tool("nmt-export", body)


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
        shortlist=tuple(args.shortlist) if args.shortlist[0] > 0 else None,
    )
