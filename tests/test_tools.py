"""The argparse commands (``nmt-export``, ``nmt-average``, ``nmt-tune-decode``, ``nmt-plot``):
installed entry points, and ``nmt-plot`` on a run resumed in two phases."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from nmt.release import plot

TOOLS = {
    "nmt-export": "nmt.release.export:main",
    "nmt-average": "nmt.release.average:main",
    "nmt-tune-decode": "nmt.decode.tune:main",
    "nmt-plot": "nmt.release.plot:main",
}


def test_tools_are_installed_commands() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert {k: scripts.get(k) for k in TOOLS} == TOOLS
    for value in TOOLS.values():  # each loads and answers --help through its own name
        module, _, fn = value.partition(":")
        code = f"import sys; from {module} import {fn}; sys.exit({fn}(['--help']))"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("usage: nmt-"), r.stderr


def phase(path: Path, steps: range, val_every: int) -> Path:
    lines = []
    for s in steps:
        lines.append({"step": s, "loss": 10.0 / s, "wall_s": float(s)})
        if s % val_every == 0:
            lines.append({"step": s, "val_loss": 5.0 / s, "val_bleu": float(s)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 9')  # torn line
    return path


def test_plot_joins_phases_bins_the_loss_and_writes_json_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = phase(tmp_path / "a" / "metrics.jsonl", range(1, 21), 10)
    second = phase(tmp_path / "b" / "metrics.jsonl", range(21, 41), 10)
    out = tmp_path / "curves" / "run"
    assert plot.main([str(first), str(second), "--out", str(out), "--bin", "10"]) == 0
    doc = json.loads(Path(f"{out}.json").read_text())
    assert [p["first_step"] for p in doc["phases"]] == [1, 21]
    assert [r["step"] for r in doc["train"]] == [10, 20, 30, 40]
    assert doc["train"][0]["train_loss"] == pytest.approx(sum(10.0 / s for s in range(1, 11)) / 10)
    assert [v["step"] for v in doc["val"]] == [10, 20, 30, 40]
    assert Path(f"{out}.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert plot.main([str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nmt-plot: error: no such file: {tmp_path / 'missing.jsonl'}"]
