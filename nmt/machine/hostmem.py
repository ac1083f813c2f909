"""Host memory allocator settings for CPU training and decoding (glibc's malloc).

PyTorch on the CPU frees and allocates the same large buffers at every step (activations,
gates, logits: 2-60 MB at the demo's batch size). glibc serves a request above its mmap
threshold (128 KiB, adapting up to 32 MiB) with fresh pages from ``mmap`` and unmaps them on
``free``, so every step page-faults its working set in again and the kernel zero-fills each
page: measured on the 2-vCPU Xeon dev box, about 30% of a demo training step's CPU time was
system time (``make demo``'s recipe, bf16, 2 threads: 360.7 ms/step, 27.8 of 91.4 CPU seconds
per 100 steps in the kernel). With the thresholds raised, freed memory stays in the heap and is
reused: 246.8 ms/step, the same numbers bit for bit (``docs/results/train/amx/hostmem.json``,
``python -m scripts.bench hostmem``).
The cost is resident memory: the process keeps its peak heap (demo training: peak RSS 3.7 GB
instead of 2.3 GB).

:func:`tune` raises the mmap threshold to 1 GiB (the largest glibc 2.36 accepts here; 32 MiB
where a glibc refuses it), the trim threshold to 1 GiB and the top pad to 64 MiB, through
``mallopt`` (no environment variables, no re-exec). Every command line entry point calls it;
``PIPENMT_MALLOC=system`` keeps glibc's defaults. Elsewhere (macOS, musl, Windows) it does
nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["ENV", "ONEDNN_CACHE", "cap_onednn_cache", "tune"]

ENV = "PIPENMT_MALLOC"  # "system": leave the allocator alone
ONEDNN_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_DEFAULT = "32"
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_GIB = 1 << 30


def tune() -> dict[str, int]:
    """Apply the settings above; -> the ``mallopt`` parameters that took effect (empty when
    none did: not glibc, or ``PIPENMT_MALLOC=system``)."""
    if os.environ.get(ENV, "").lower() == "system":
        return {}
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {}
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied: dict[str, int] = {}
    for threshold in (_GIB, 32 << 20):
        if mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
            applied["mmap_threshold"] = threshold
            break
    if mallopt(_M_TRIM_THRESHOLD, _GIB) == 1:
        applied["trim_threshold"] = _GIB
    if mallopt(_M_TOP_PAD, 64 << 20) == 1:
        applied["top_pad"] = 64 << 20
    return applied


def cap_onednn_cache() -> str:
    """Cap oneDNN's primitive cache at 32 entries unless ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is
    set; -> the capacity in effect. Training entry points call it before the first bf16
    operation (oneDNN reads the variable when it creates its first primitive).

    CPU bf16 matmuls and LSTMs run through oneDNN, which keeps every primitive it builds, one
    per operation and shape, up to 1,024 of them. Training batches come in many (source length,
    target length, batch) shapes, so bf16 CPU training kept growing (4,000-step runs reached
    9.4-11.4 GB and one was OOM-killed) while the Python-visible tensors stayed constant and fp32
    runs stayed flat. ``make demo``'s model after 300 steps on one thread: 4,812 MB resident
    with the default cache, 2,708 MB capped at 32, the same loss
    (``docs/results/train/amx/train_memory.json``, ``python -m scripts.bench train_memory``).
    Decoding keeps oneDNN's default: a beam search's shapes change every step, and 32 entries
    cost its bf16 speed ~10% in a quick check, one run not kept (BENCHMARKS.md, "oneDNN's
    kernel cache")."""
    return os.environ.setdefault(ONEDNN_CACHE, ONEDNN_CACHE_DEFAULT)
