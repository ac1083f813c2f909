"""A model ready to translate: loaded from a checkpoint or a shipped model's name, on the
device and in the dtype that ``decode.device`` / ``decode.dtype`` ask for (impossible
combinations are one-line errors), optionally int8 (:mod:`nmt.int8`), with its vocabulary shortlist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data.tokenizer import PAD_ID, Tokenizer
from nmt import arch
from nmt.errors import UserError
from nmt.seq2seq import ModelSpec, Seq2Seq, quantize_int8
from nmt.shortlist import Shortlist


def load_for_inference(
    checkpoint: str, quantize: str, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Seq2Seq, Tokenizer]:
    """Model (eval mode, optionally int8) and tokenizer from a (single-device) checkpoint: a
    path, or the name of a shipped model (``models/<name>/model.pt``, weights made fp32)."""
    from nmt.checkpoint import load, require_single_device
    from nmt.shipped import resolve_checkpoint

    check_quantize(quantize)
    path, _ = resolve_checkpoint(checkpoint)
    return model_from_checkpoint(
        require_single_device(load(path), checkpoint), checkpoint, quantize, device, dtype
    )


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def cpu_has_bf16() -> bool:
    """Does this CPU do bf16 arithmetic natively (AVX512-BF16 or AMX)? From /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def inference_setup(dcfg: Any) -> tuple[str, torch.dtype, str]:
    """(device, dtype, quantize) of ``decode.device`` / ``decode.dtype`` / ``decode.quantize``;
    impossible ones are one-line errors (a GPU asked for where there is none, fp16 or int8 on
    the wrong device). ``quantize=auto`` (the default) is int8 on the CPU unless a float dtype
    other than fp32 is asked for (:mod:`nmt.int8`; docs/results/bench_translate.json), none on
    a GPU; with int8 ``dtype=auto`` is fp32 (int8 runs in fp32)."""
    name, dtype = str(getattr(dcfg, "device", "cpu")), str(getattr(dcfg, "dtype", "fp32"))
    quantize = str(getattr(dcfg, "quantize", "auto"))
    if quantize not in ("auto", "none", "int8"):
        raise UserError(f"decode.quantize={quantize!r}: expected auto, none or int8")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"decode.device={name}: expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"decode.device={name} but no CUDA device is available")
    if quantize == "auto":
        quantize = "int8" if name == "cpu" and dtype in ("auto", "fp32") else "none"
    if dtype == "auto" and quantize == "int8":
        dtype = "fp32"
    if dtype == "auto":  # bf16 where the hardware computes it natively, else fp32
        dtype = "bf16" if name != "cpu" or cpu_has_bf16() else "fp32"
    if dtype not in DTYPES:
        raise UserError(f"decode.dtype={dtype}: expected auto, {', '.join(DTYPES)}")
    if dtype == "fp16" and name == "cpu":
        raise UserError("decode.dtype=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if quantize == "int8" and (name != "cpu" or dtype != "fp32"):
        raise UserError(
            f"decode.quantize=int8 runs on the CPU in fp32, not decode.device={name} "
            f"decode.dtype={dtype}"
        )
    return name, DTYPES[dtype], quantize


def check_quantize(quantize: str) -> None:
    if quantize not in ("none", "int8"):
        raise UserError(f"decode.quantize={quantize!r}: expected none or int8")


def model_from_checkpoint(
    ckpt: dict[str, Any],
    checkpoint: str,
    quantize: str = "none",
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Seq2Seq, Tokenizer]:
    """Model (eval mode, optionally int8) and tokenizer from an already loaded single-device
    checkpoint dict (``checkpoint`` names it in errors)."""
    check_quantize(quantize)
    tok = Tokenizer.from_bytes(ckpt["spm"])
    try:
        spec = ModelSpec.from_config(ckpt["config"]["model"], dropout=0.0)
        model = arch.build_model(spec, tok.vocab_size, PAD_ID)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        first = " ".join(str(err).split())[:200]
        raise UserError(
            f"checkpoint {checkpoint}: its weights do not fit its own config and sentencepiece "
            f"vocabulary ({first})"
        ) from None
    model.eval()
    if quantize == "int8":
        model = quantize_int8(model)
    model = model.to(device=device, dtype=dtype)
    if isinstance(ckpt.get("shortlist"), dict):  # decode.shortlist decides whether to use it
        model.shortlist = Shortlist.from_state(ckpt["shortlist"])
    return model, tok
