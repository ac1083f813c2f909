"""glibc malloc settings (nmt/machine/hostmem.py): freed large buffers stay in the process for reuse
(the reference: the same allocation pattern under glibc's defaults returns them), and
``PIPENMT_MALLOC=system`` leaves the allocator alone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Allocate, touch and free 3 x 150 MB; report what tune() applied and how much resident memory
# the process kept afterwards.
PROBE = """
import json, os, sys
from nmt.machine import hostmem
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
applied = hostmem.tune()
base = rss_mb()
for _ in range(3):
    buf = bytearray(150 << 20)
    buf[:: 4096] = b"x" * len(range(0, 150 << 20, 4096))
    del buf
print(json.dumps({"applied": applied, "kept_mb": rss_mb() - base}))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def probe(**env: str) -> dict[str, object]:
    full = {k: v for k, v in os.environ.items() if k != "PIPENMT_MALLOC"} | env
    full["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@glibc_only
def test_tuned_allocator_keeps_freed_buffers_and_system_returns_them() -> None:
    tuned = probe()
    system = probe(PIPENMT_MALLOC="system")
    applied = tuned["applied"]
    assert isinstance(applied, dict)
    assert applied.get("mmap_threshold") in (1 << 30, 32 << 20)
    assert applied.get("trim_threshold") == 1 << 30 and applied.get("top_pad") == 64 << 20
    assert system["applied"] == {}
    assert float(system["kept_mb"]) < 50  # type: ignore[arg-type]  # glibc unmapped them
    assert float(tuned["kept_mb"]) > 100  # type: ignore[arg-type]  # kept for the next step


def test_tune_is_a_no_op_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from nmt.machine import hostmem

    monkeypatch.setenv(hostmem.ENV, "system")
    assert hostmem.tune() == {}


def test_training_caps_onednn_cache_unless_the_user_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bf16 CPU training kept every oneDNN primitive (one per op and shape, up to 1,024) and
    grew by GBs; nmt-train caps the cache, a user's own setting wins."""
    from nmt.machine import hostmem

    monkeypatch.delenv(hostmem.ONEDNN_CACHE, raising=False)
    assert hostmem.cap_onednn_cache() == "32" == os.environ[hostmem.ONEDNN_CACHE]
    monkeypatch.setenv(hostmem.ONEDNN_CACHE, "512")
    assert hostmem.cap_onednn_cache() == "512"


def test_nmt_train_sets_the_cap_and_nmt_translate_does_not() -> None:
    """The entry points' wrapper (``nmt/cli.py: _entry``) with a stand-in command body."""
    code = (
        "import os; from unittest import mock; import nmt.cli as c\n"
        "with mock.patch.object(c, '_precheck'):\n"
        "    c._entry(lambda: None, 'tool', '{name}')()\n"
        "print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY', 'unset'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env["PYTHONPATH"] = str(ROOT)
    got = {}
    for name in ("nmt-train", "nmt-translate"):
        src = code.format(name=name)
        out = subprocess.run(
            [sys.executable, "-c", src], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        got[name] = out.stdout.strip().splitlines()[-1]
    assert got == {"nmt-train": "32", "nmt-translate": "unset"}
