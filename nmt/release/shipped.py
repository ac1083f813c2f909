"""Shipped models: ``models/<name>/`` folders that ``checkpoint=NAME`` finds by name.

A shipped ``model.pt`` is an ordinary checkpoint dict (loaded with ``weights_only=True`` through
:func:`nmt.checkpoint.files.load`) whose weights are stored compactly: ``weights_dtype`` is ``fp16``
(half-precision tensors) or ``int8`` (2-D weight matrices as int8 with one fp32 scale per row in
``weight_scales``; everything else fp16). ``metadata["weights_sha256"]`` is a digest of the stored
tensors, checked on load, so a flipped byte inside the weights is refused instead of translating
garbage. Loading turns the weights back into fp32.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from nmt.errors import UserError

MODELS_ENV = "PIPENMT_MODELS_DIR"  # overrides where shipped models are looked up (tests)
MODEL_FILE = "model.pt"
DECODE_FILE = "decode.yaml"  # decoding settings tuned for the model (on its dev split)
MAX_MODEL_BYTES = 25_000_000  # a shipped model.pt must stay below this (25 MB)
WEIGHT_DTYPES = ("fp16", "int8", "fp32")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def tuned_decode(path: Path) -> dict[str, Any]:
    """The ``decode.yaml`` beside a model folder's ``model.pt`` (``{}`` when there is none):
    decoding settings tuned for that model, ``key: value`` per line, every key a field of
    ``DecodeConfig`` (``decode.*``); anything else is a one-line error naming the file."""
    from dataclasses import fields

    import yaml

    from nmt.config import DecodeConfig

    known = {f.name for f in fields(DecodeConfig)}

    file = path.parent / DECODE_FILE
    if path.name != MODEL_FILE or not file.is_file():
        return {}
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{file}: not readable YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected 'key: value' lines (decode settings)")
    for key, value in data.items():
        if key not in known:
            raise UserError(f"{file}: unknown key {key!r}; expected decode keys: {sorted(known)}")
        if not isinstance(value, (int, float, str, bool)):
            raise UserError(f"{file}: {key} must be a number, string or boolean, not {value!r}")
    return {str(k): v for k, v in data.items()}


def models_dir() -> Path:
    """``$PIPENMT_MODELS_DIR`` if set, else ``models/`` beside the installed packages (the
    repository root of an editable install)."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser()
    import nmt

    return Path(nmt.__file__).resolve().parent.parent / "models"


def available_models(folder: Path | None = None) -> list[str]:
    """Names of the model folders (those holding a ``model.pt``) in ``folder``, sorted; hidden
    folders (an export's temp folder) are not models."""
    folder = models_dir() if folder is None else folder
    if not folder.is_dir():
        return []
    return sorted(
        p.name for p in folder.iterdir() if is_model_name(p.name) and (p / MODEL_FILE).is_file()
    )


def is_model_name(value: str) -> bool:
    """``value`` can only be a model name (no folder separator, not a ``.pt`` file name)."""
    return bool(_NAME.fullmatch(value)) and not value.endswith(".pt")


def resolve_checkpoint(value: str) -> tuple[Path, str | None]:
    """(checkpoint file, model name or None) for ``checkpoint=VALUE``.

    An existing path wins (a model folder means its ``model.pt``); else a name is looked up as
    ``<models_dir>/<name>/model.pt``; an unknown name is a one-line error listing the available
    names. Anything else is returned as a path, for :func:`nmt.checkpoint.files.load` to report.
    """
    path = Path(value).expanduser()
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return path / MODEL_FILE, None
    if path.exists() or not is_model_name(value):
        return path, None
    folder = models_dir()
    shipped = folder / value / MODEL_FILE
    if shipped.is_file():
        return shipped, value
    names = available_models(folder)
    known = f"available: {', '.join(names)}" if names else "there are none"
    raise UserError(
        f"checkpoint={value}: no such file and no shipped model of that name in {folder} ({known})"
    )


def encode_weights(
    state: dict[str, torch.Tensor], dtype: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(stored state dict, per-row scales) of an fp32 ``state`` for ``dtype`` fp16, int8 or fp32
    (as trained: twice the size of fp16, for weights that fp16 rounding would change).

    Tensors that share storage (the tied embedding and output projection) stay shared, so
    ``torch.save`` writes them once.
    """
    if dtype not in WEIGHT_DTYPES:
        raise UserError(f"weights dtype {dtype!r}: expected one of {', '.join(WEIGHT_DTYPES)}")
    stored: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    done: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, value in state.items():
        tensor = value.detach().cpu()
        ident = (tensor.data_ptr(), tuple(tensor.shape))
        if ident in done:  # tied: the same tensor again
            stored[key] = stored[done[ident]]
            if done[ident] in scales:
                scales[key] = scales[done[ident]]
            continue
        done[ident] = key
        if not tensor.is_floating_point():
            stored[key] = tensor.clone()
        elif dtype == "int8" and tensor.dim() == 2:
            stored[key], scales[key] = _int8_rows(tensor.float())
        elif dtype == "fp32":
            stored[key] = tensor.float().clone()
        else:
            stored[key] = _to_fp16(key, tensor)
    return stored, scales


def _to_fp16(key: str, tensor: torch.Tensor) -> torch.Tensor:
    big = float(tensor.abs().max()) if tensor.numel() else 0.0
    if big > torch.finfo(torch.float16).max or not torch.isfinite(tensor).all():
        raise UserError(f"weight {key} does not fit fp16 (largest magnitude {big:g})")
    return tensor.to(torch.float16)


def _int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: ``weight ~= q * scale``."""
    scale = (weight.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)
    q = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)
    return q, scale.to(torch.float32)


def decode_weights(ckpt: dict[str, Any], where: str) -> None:
    """Turn a shipped checkpoint's stored weights into fp32 in place (after checking the digest);
    a checkpoint without ``weights_dtype`` is left as it is."""
    dtype = ckpt.get("weights_dtype")
    if dtype is None:
        return
    state, scales = ckpt.get("model"), ckpt.get("weight_scales", {})
    if dtype not in WEIGHT_DTYPES or not isinstance(state, dict) or not isinstance(scales, dict):
        raise UserError(f"checkpoint {where} has an unknown weight format ({dtype!r})")
    meta = ckpt.get("metadata")
    expected = meta.get("weights_sha256") if isinstance(meta, dict) else None
    if expected is not None and weights_digest(state, scales) != expected:
        raise UserError(f"checkpoint {where} is corrupted: its weights do not match their digest")
    listed = meta.get("shortlist_sha256") if isinstance(meta, dict) else None
    table = ckpt.get("shortlist")
    if listed is not None and (not isinstance(table, dict) or weights_digest(table, {}) != listed):
        raise UserError(
            f"checkpoint {where} is corrupted: its shortlist tables do not match their digest"
        )
    ckpt["model"] = {k: _fp32(k, v, scales, where) for k, v in state.items()}


def _fp32(key: str, value: Any, scales: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise UserError(f"checkpoint {where}: weight {key} is not a tensor")
    if key in scales:
        if value.dtype != torch.int8 or scales[key].shape != (value.shape[0], 1):
            raise UserError(f"checkpoint {where}: int8 weight {key} does not match its scales")
        return value.float() * scales[key].float()
    return value.float() if value.is_floating_point() else value


def weights_digest(state: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> str:
    """sha256 over every stored tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256()
    for part, tensors in (("w", state), ("s", scales)):
        for key in sorted(tensors):
            t = tensors[key].detach().cpu().contiguous()
            h.update(f"{part}:{key}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def eval_stem(name: str) -> Path:
    """Where ``nmt-eval checkpoint=NAME`` writes its hypotheses and report:
    ``outputs/eval/<name>`` below the current folder (never inside the shipped model folder)."""
    return Path("outputs") / "eval" / name
