"""``python -m scripts.bench``: one entry point that lists every benchmark and runs one by name;
every benchmark module imports and answers ``--help``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bench import names, summary

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scripts.bench", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)  # fmt: skip


def test_list_names_every_benchmark_with_its_summary() -> None:
    r = bench("--list")
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines()]
    assert listed == names() and {"translate", "train", "pipeline", "peer"} <= set(listed)
    assert "common" not in listed and not any(n.startswith("_") for n in listed)
    for name in names():
        assert summary(name) and summary(name) in r.stdout


def test_unknown_benchmark_is_one_line_exit_2() -> None:
    r = bench("nope")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("scripts.bench: error: no benchmark 'nope'")
    assert bench().returncode == 2


@pytest.mark.parametrize("name", names())
def test_every_benchmark_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"scripts.bench.{name}")
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m scripts.bench {name}")
