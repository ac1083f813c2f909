"""What this machine's torch can compute: probes that run the real kernels once per process.

A CPU flag says what the silicon has; whether torch runs a kernel also depends on how it was
built and on the ISA it was told to use (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``). So
capabilities here are found by running the smallest case of the kernel in question: oneDNN has
no bf16 LSTM without native bf16 (AVX512-BF16 or AMX) and answers with an exception, which
becomes a one-line :class:`nmt.errors.UserError` where a user asked for bf16 explicitly.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from nmt.errors import UserError
from nmt.train.metrics import cpu_model

# environment variables that change which kernels torch runs on a CPU
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# the CPU flags that decide which fast paths exist (AVX2 class vs AVX-512 / AMX class)
_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def forced_isa() -> dict[str, str]:
    """The ISA variables set in this process's environment (empty: torch picks the best)."""
    return {k: os.environ[k] for k in ISA_VARIABLES if os.environ.get(k)}


def machine_class() -> str:
    """``amx``, ``avx512`` or ``avx2`` (or ``other``): the class of kernels torch runs here,
    from the CPU flags and torch's own capability (lowered by ``ATEN_CPU_CAPABILITY``)."""
    flags, cap = cpu_flags(), torch.backends.cpu.get_cpu_capability().lower()
    if cap.startswith("avx512") and "amx_bf16" in flags and not forced_isa():
        return "amx"
    if cap.startswith("avx512"):
        return "avx512"
    return "avx2" if cap == "avx2" else "other"


def machine_record() -> dict[str, object]:
    """What result files say about the machine: CPU, class, flags that matter, forced ISA,
    cores, torch threads and version."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "class": machine_class(),
        "flags": [f for f in _FLAGS if f in flags],
        "forced_isa": forced_isa(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


@functools.cache
def bf16_lstm_runs(device_type: str = "cpu") -> bool:
    """Does an LSTM forward and backward run under bf16 autocast on this device? (Probed once.)"""
    if device_type == "cuda":
        return True
    with torch.random.fork_rng(devices=[]):  # the probe leaves the global RNG as it was
        lstm = torch.nn.LSTM(8, 8, bidirectional=True)
        x = torch.randn(3, 2, 8, requires_grad=True)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, _ = lstm(x)
            out.float().sum().backward()
        except RuntimeError:
            return False
    return True


def require_bf16(key: str, device_type: str = "cpu") -> None:
    """A one-line user error when ``key`` asks for bf16 that this CPU's torch cannot run."""
    if not bf16_lstm_runs(device_type):
        isa = " ".join(f"{k}={v}" for k, v in forced_isa().items())
        raise UserError(
            f"{key}=bf16: this CPU has no bf16 LSTM kernel (oneDNN needs AVX512-BF16 or AMX"
            f"{'; forced ' + isa if isa else ''}); use fp32 or auto"
        )
