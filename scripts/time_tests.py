"""The default test suite's wall time on this machine, for the README's `make test` line.

    python scripts/time_tests.py --out docs/results/cpu_class/amx/test_suite.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python scripts/time_tests.py --out docs/results/cpu_class/avx2/test_suite.json

Runs ``python -m pytest -q`` (the command ``make test`` runs, with the project's addopts:
slow tests deselected) from the repository root and writes its counts, wall time and the
machine. Run it on an idle machine: the suite's time is what the README promises.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data.atomic import atomic_write_text  # noqa: E402
from nmt.machine.capability import machine_record  # noqa: E402


def counts(tail: str) -> dict[str, int]:
    """pytest's summary line (``608 passed, 5 skipped, 4 deselected in ...``) as numbers."""
    return {
        word: int(n)
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", tail)
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"], cwd=ROOT, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    doc = {
        "bench": "time_tests",
        "command": "python -m pytest -q",
        "returncode": proc.returncode,
        "summary": last,
        "failed_tests": [
            x.split(" ")[1] for x in proc.stdout.splitlines() if x.startswith("FAILED ")
        ],
        **counts(last),
        "seconds": round(seconds, 1),
        "machine": {**machine_record(), "platform": platform.platform()},
    }
    text = json.dumps(doc, indent=1) + "\n"
    print(text, end="")
    if args.out and proc.returncode == 0:
        atomic_write_text(args.out, text)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
