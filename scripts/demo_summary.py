"""The last lines of ``make demo``: the demo model's test scores beside the shipped model's.

    python -m scripts.demo_summary --demo runs/demo/checkpoints/best.test.beam5.hyp.eval.json \
        --shipped outputs/eval/gnmt-debian-en-de.test.beam5.hyp.eval.json --name gnmt-debian-en-de

Both files are ``nmt-eval checkpoint=... split=test`` reports; every number printed comes from
them (BLEU, chrF, sentences, the checkpoint's step and training time). A missing shipped report
gives a line saying so, not an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def read_report(path: Path) -> dict[str, Any] | None:
    """An nmt-eval JSON report, or None when the file is absent or not a report."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and "bleu" in report else None


def describe(report: dict[str, Any]) -> str:
    """``gnmt_small, step 362, 11 min training`` from what the report records."""
    parts = [str(report["model"])] if report.get("model") else []
    if report.get("step") is not None:
        parts.append(f"step {int(report['step']):,}")
    seconds = report.get("train_seconds")
    if seconds is not None:
        minutes = float(seconds) / 60
        parts.append(
            f"{minutes:.0f} min training" if minutes < 120 else f"{minutes / 60:.1f} h training"
        )
    return ", ".join(parts)


def score_text(report: dict[str, Any]) -> str:
    return (
        f"BLEU {float(report['bleu']):5.2f}  chrF {float(report['chrf']):5.2f}  "
        f"({int(report['lines']):,} {report.get('split', 'test')} sentences)"
    )


def summary(demo: dict[str, Any] | None, shipped: dict[str, Any] | None, name: str) -> list[str]:
    """Two aligned lines: the demo model, then the shipped one."""
    rows = [
        (f"demo model ({describe(demo)})" if demo else "demo model", demo),
        (f"shipped {name} ({describe(shipped)})" if shipped else f"shipped {name}", shipped),
    ]
    width = max(len(label) for label, _ in rows) + 1
    lines = [
        f"{label + ':':<{width}} {score_text(r) if r else 'no nmt-eval report (not evaluated)'}"
        for label, r in rows
    ]
    if demo and shipped and demo.get("lines") != shipped.get("lines"):
        lines.append("note: the two reports scored different numbers of sentences")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--demo", type=Path, required=True, help="nmt-eval report of the demo model")
    ap.add_argument("--shipped", type=Path, required=True, help="nmt-eval report of the shipped")
    ap.add_argument("--name", default="gnmt-debian-en-de", help="the shipped model's name")
    args = ap.parse_args(argv)
    demo = read_report(args.demo)
    print("\n".join(summary(demo, read_report(args.shipped), args.name)))
    return 0 if demo else 2


if __name__ == "__main__":
    sys.exit(main())
