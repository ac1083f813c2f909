"""A model ready to translate: loaded from a checkpoint or a shipped model's name, on the
device and in the arithmetic that ``decode.device`` / ``decode.dtype`` / ``decode.quantize`` ask
for (impossible combinations are one-line errors; ``auto`` is measured on this machine,
:mod:`nmt.machine.calibrate`): fp32, bf16, fp16 (GPU) or int8 (:mod:`nmt.models.int8`), with its
vocabulary
shortlist.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from data.tokenizer import PAD_ID, Tokenizer
from nmt.config import DecodeConfig
from nmt.decode.shortlist import Shortlist
from nmt.errors import UserError
from nmt.machine.calibrate import Choice, choose, decoding_workload
from nmt.machine.capability import bf16_lstm_runs, require_bf16
from nmt.models import registry as arch
from nmt.models.seq2seq import ModelSpec, Seq2Seq, quantize_int8


def load_for_inference(
    checkpoint: str, quantize: str, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Seq2Seq, Tokenizer]:
    """Model (eval mode, optionally int8) and tokenizer from a (single-device) checkpoint: a
    path, or the name of a shipped model (``models/<name>/model.pt``, weights made fp32)."""
    from nmt.checkpoint.files import load, require_single_device
    from nmt.release.shipped import resolve_checkpoint

    check_quantize(quantize)
    path, _ = resolve_checkpoint(checkpoint)
    return model_from_checkpoint(
        require_single_device(load(path), checkpoint), checkpoint, quantize, device, dtype
    )


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# the arithmetic a decoder may run: name -> (weights' dtype, quantize)
ARITHMETIC = {
    "fp32": (torch.float32, "none"),
    "int8": (torch.float32, "int8"),
    "bf16": (torch.bfloat16, "none"),
    "fp16": (torch.float16, "none"),
}


@dataclass(frozen=True)
class Arithmetic:
    """How a model decodes: ``device`` and one of :data:`ARITHMETIC`; ``choice`` when a
    calibration picked it (:mod:`nmt.machine.calibrate`)."""

    device: str
    name: str
    choice: Choice | None = None

    @property
    def dtype(self) -> torch.dtype:
        return ARITHMETIC[self.name][0]

    @property
    def quantize(self) -> str:
        return ARITHMETIC[self.name][1]

    def record(self) -> dict[str, Any]:
        """What the eval JSON says: device, dtype, quantize and the calibration, if any."""
        doc: dict[str, Any] = {
            "device": self.device,
            "dtype": DTYPE_NAMES[self.dtype],
            "quantize": self.quantize,
        }
        return doc | ({"calibration": self.choice.record()} if self.choice else {})


def _device(dcfg: DecodeConfig) -> str:
    name = dcfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"decode.device={name}: expected auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"decode.device={name} but no CUDA device is available")
    return name


def decode_candidates(dcfg: DecodeConfig) -> tuple[str, list[str]]:
    """(device, the arithmetic ``decode.quantize`` / ``decode.dtype`` allow, fp32 first).

    One name when the settings fix it; on a CPU ``auto`` leaves fp32, int8 and (where this
    torch runs a bf16 LSTM) bf16 to a calibration. On a GPU ``auto`` is bf16, never int8.
    Impossible combinations are one-line errors (a GPU that is not there, fp16 or int8 on the
    wrong device, bf16 on a CPU without a bf16 LSTM kernel)."""
    device, dtype = _device(dcfg), dcfg.dtype
    quantize = dcfg.quantize
    if quantize not in ("auto", "none", "int8"):
        raise UserError(f"decode.quantize={quantize!r}: expected auto, none or int8")
    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"decode.dtype={dtype}: expected auto, {', '.join(DTYPES)}")
    if device != "cpu":
        if quantize == "int8":
            raise UserError(f"decode.quantize=int8 runs on the CPU, not decode.device={device}")
        return device, ["bf16" if dtype == "auto" else dtype]
    if dtype == "fp16":
        raise UserError("decode.dtype=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if quantize == "int8" and dtype not in ("auto", "fp32"):
        raise UserError(f"decode.quantize=int8 runs in fp32, not decode.dtype={dtype}")
    if dtype == "bf16":
        require_bf16("decode.dtype")
        return device, ["bf16"]
    names = {"int8": ["int8"], "none": ["fp32"], "auto": ["fp32", "int8"]}[quantize]
    if dtype == "auto" and quantize != "int8" and bf16_lstm_runs():
        names.append("bf16")
    return device, names


def _as(model: Seq2Seq, name: str, device: str, copy_first: bool) -> Seq2Seq:
    """``model`` (fp32, eval) in arithmetic ``name`` on ``device``."""
    dtype, quantize = ARITHMETIC[name]
    if quantize == "int8":
        return quantize_int8(model)  # a copy
    base = copy.deepcopy(model) if copy_first else model
    return base.to(device=device, dtype=dtype)


def choose_arithmetic(
    model: Seq2Seq, dcfg: DecodeConfig, shape: dict[str, Any]
) -> tuple[Seq2Seq, Arithmetic]:
    """``model`` (fp32, eval, on the CPU) in the arithmetic ``dcfg`` asks for; where several
    are allowed, the fastest on this machine (:func:`nmt.machine.calibrate.choose`)."""
    device, names = decode_candidates(dcfg)
    choice = None
    if len(names) > 1:

        def workload(name: str) -> Callable[[], object]:
            return decoding_workload(_as(model, name, device, True))

        workloads = {n: functools.partial(workload, n) for n in names}
        choice = choose("decode", shape, workloads)
        names = [choice.name]
    return _as(model, names[0], device, False), Arithmetic(device, names[0], choice)


def load_for_decoding(
    checkpoint: str, dcfg: DecodeConfig, ckpt: dict[str, Any] | None = None
) -> tuple[Seq2Seq, Tokenizer, Arithmetic]:
    """Model (eval mode) and tokenizer of a checkpoint path or shipped model's name (or of the
    already loaded ``ckpt``), in the arithmetic of ``dcfg`` (:func:`choose_arithmetic`)."""
    from nmt.checkpoint.files import load, require_single_device
    from nmt.release.shipped import resolve_checkpoint

    decode_candidates(dcfg)  # bad settings fail before the checkpoint loads
    if ckpt is None:
        path, _ = resolve_checkpoint(checkpoint)
        ckpt = require_single_device(load(path), checkpoint)
    model, tok = model_from_checkpoint(ckpt, checkpoint)
    shape = {"model": ckpt["config"]["model"], "vocab": tok.vocab_size}
    model, arith = choose_arithmetic(model, dcfg, shape)
    return model, tok, arith


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
