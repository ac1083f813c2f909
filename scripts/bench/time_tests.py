"""The default test suite's wall time on this machine, for the README's `make test` line.

    python -m scripts.bench time_tests --out docs/results/tests/amx/test_suite.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python -m scripts.bench time_tests --out docs/results/tests/avx2/test_suite.json

Runs ``python -m pytest -q`` (the command ``make test`` runs, with the project's addopts:
slow tests deselected) from the repository root and writes its counts, wall time and the
machine. Run it on an idle machine: the suite's time is what the README promises.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from scripts.bench.common import ROOT, finish, machine, parser


def counts(tail: str) -> dict[str, int]:
    """pytest's summary line (``608 passed, 5 skipped, 4 deselected in ...``) as numbers."""
    return {
        word: int(n)
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", tail)
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--out", type=Path, help="the result JSON (written when the suite passes)")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"], cwd=ROOT, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    failed = [x.split(" ")[1] for x in proc.stdout.splitlines() if x.startswith("FAILED ")]
    doc = {"bench": "time_tests", "command": "python -m pytest -q", "returncode": proc.returncode,
           "summary": last, "failed_tests": failed, **counts(last), "seconds": round(seconds, 1),
           "machine": machine()}  # fmt: skip
    finish(doc, args.out if proc.returncode == 0 else None)
    return proc.returncode
