"""Host memory allocator settings for CPU training and decoding (glibc's malloc).

PyTorch on the CPU frees and allocates the same large buffers at every step (activations,
gates, logits: 2-60 MB at the demo's batch size). glibc serves a request above its mmap
threshold (128 KiB, adapting up to 32 MiB) with fresh pages from ``mmap`` and unmaps them on
``free``, so every step page-faults its working set in again and the kernel zero-fills each
page: measured on the 2-vCPU Xeon dev box, about 30% of a demo training step's CPU time was
system time (``make demo``'s recipe, bf16, 2 threads: 360.7 ms/step, 27.8 of 91.4 CPU seconds
per 100 steps in the kernel). With the thresholds raised, freed memory stays in the heap and is
reused: 246.8 ms/step, the same numbers bit for bit (``docs/results/hostmem.json``,
``python scripts/bench_hostmem.py``).
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

__all__ = ["ENV", "tune"]

ENV = "PIPENMT_MALLOC"  # "system": leave the allocator alone
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
