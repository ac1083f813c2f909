"""Calibrated defaults: the fastest candidate wins, fp32 unless another beats it by the
margin, the choice is cached per machine and shape, and an explicit bf16 that this CPU cannot
run is a one-line error (exit 2) through the real commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from nmt.checkpoint import files as ckpt_io
from nmt.machine import calibrate
from nmt.machine.capability import bf16_lstm_runs
from tests.conftest import tiny_overrides

# what makes an AMX or AVX-512 box run the AVX2 class of kernels (no bf16 LSTM in oneDNN)
AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def sleeper(seconds: float, calls: list[str], name: str) -> Callable[[], Callable[[], object]]:
    def make() -> Callable[[], object]:
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)

        return run

    return make


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calibration.json"
    monkeypatch.setenv("PIPENMT_CALIBRATION", str(path))
    return path


def test_the_fastest_wins_and_is_cached(cache: Path) -> None:
    calls: list[str] = []
    work = {"fp32": sleeper(0.03, calls, "fp32"), "int8": sleeper(0.01, calls, "int8")}
    first = calibrate.choose("decode", {"model": "a"}, work)
    assert first.name == "int8" and not first.cached and first.speedup > 2.0
    assert calls.count("fp32") == calls.count("int8") == 1 + calibrate.REPEATS
    calls.clear()
    again = calibrate.choose("decode", {"model": "a"}, work)
    assert (again.name, again.cached, calls) == ("int8", True, [])
    doc = json.loads(cache.read_text())
    assert [v["chosen"] for v in doc.values()] == ["int8"]
    other = calibrate.choose("decode", {"model": "b"}, work)  # another shape: measured anew
    assert not other.cached and calls


def test_fp32_unless_another_beats_the_margin(cache: Path) -> None:
    calls: list[str] = []
    close = {"fp32": sleeper(0.020, calls, "fp32"), "bf16": sleeper(0.0195, calls, "bf16")}
    assert calibrate.choose("train", {"model": "c"}, close).name == "fp32"


def test_forced_isa_is_another_machine(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    work = {"fp32": sleeper(0.01, calls, "fp32"), "int8": sleeper(0.001, calls, "int8")}
    calibrate.choose("decode", {"model": "d"}, work)
    isa = "SSE41" if os.environ.get("ONEDNN_MAX_CPU_ISA") == "AVX2" else "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)  # another value than this run's
    assert not calibrate.choose("decode", {"model": "d"}, work).cached


def run_cli(entry: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from nmt.cli import {entry}; sys.argv[0] = '{entry}'; {entry}()"
    root = str(Path(__file__).resolve().parent.parent)
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": root, **env},
    )  # fmt: skip


def test_bf16_where_the_cpu_cannot_is_one_line_exit_2(
    tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    """On the AVX2 class (forced here), explicit bf16 fails at start-up with one line naming
    the key; train.precision=auto trains in fp32 and says so in metrics.jsonl."""
    base = tiny_overrides(tiny_corpus, tmp_path / "cache", tmp_path / "run")
    base = [x for x in base if not x.startswith("train.precision")] + ["train.max_steps=2"]
    bad = run_cli("train_main", *base, "train.precision=bf16", env=AVX2)
    assert bad.returncode == 2, bad.stderr
    assert (
        bad.stderr.strip().splitlines() == [bad.stderr.strip().splitlines()[-1]]
        and "train.precision=bf16: this CPU has no bf16 LSTM kernel" in bad.stderr
    )
    assert not (tmp_path / "run" / "checkpoints").exists()
    ok = run_cli("train_main", *base, "train.precision=auto", env=AVX2)
    assert ok.returncode == 0, ok.stderr
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    chosen = [r for r in recs if "calibration" in r]
    assert chosen and chosen[0]["precision"] == "fp32"
    assert chosen[0]["calibration"]["machine"]["class"] != "amx"
    model = tmp_path / "run" / "checkpoints" / "last.pt"
    src = tmp_path / "in.txt"
    src.write_text("the cat\n")
    out = tmp_path / "out.txt"
    dec = run_cli("translate_main", f"checkpoint={model}", f"input={src}", f"output={out}",
                  "decode.dtype=bf16", env=AVX2)  # fmt: skip
    assert dec.returncode == 2 and len(dec.stderr.strip().splitlines()) == 1, dec.stderr
    assert "decode.dtype=bf16: this CPU has no bf16 LSTM kernel" in dec.stderr
    assert not out.exists()


@pytest.mark.skipif(not bf16_lstm_runs(), reason="this CPU's torch runs no bf16 LSTM")
def test_auto_precision_takes_the_calibrated_choice(
    tiny_corpus: dict[str, Path], tmp_path: Path, cache: Path
) -> None:
    """A cached choice of bf16 is what an auto run trains with, recorded in its metrics."""
    from nmt.config import compose_config
    from nmt.train.build import resolve_precision
    from nmt.train.run import train

    base = tiny_overrides(tiny_corpus, tmp_path / "cache", tmp_path / "run")
    auto = [x for x in base if not x.startswith("train.precision")]  # the default: auto
    first = resolve_precision(compose_config(auto))
    assert first is not None and set(first.ms) == {"fp32", "bf16"}
    doc: dict[str, Any] = json.loads(cache.read_text())
    (entry,) = doc.values()
    entry["chosen"] = "bf16"  # as if bf16 had been faster
    cache.write_text(json.dumps(doc))
    train(compose_config([*auto, "train.max_steps=2"]))
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["precision"] for r in recs if "calibration" in r] == ["bf16"]
    assert [r["calibration"]["cached"] for r in recs if "calibration" in r] == [True]
    # the very run that train.precision=bf16 trains: calibrating draws nothing from the RNG
    explicit = tiny_overrides(tiny_corpus, tmp_path / "cache", tmp_path / "bf16")
    train(compose_config([*explicit, "train.max_steps=2", "train.precision=bf16"]))
    a = ckpt_io.load(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    b = ckpt_io.load(tmp_path / "bf16" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_probe_leaves_the_rng_alone() -> None:
    from nmt.machine import capability

    capability.bf16_lstm_runs.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    capability.bf16_lstm_runs()
    assert torch.equal(torch.rand(3), expected)
