"""``python -m scripts.bench decode_gpu`` (the prepared GPU decoding check) runs end to end on
the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, "-m", "scripts.bench", "decode_gpu"]


def test_writes_speed_and_tokens_of_each_model(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    args = ["--device", "cpu", "--dtype", "fp32", "--size", "16,2,2", "--size", "8,2,1",
            "--sentences", "3", "--src-len", "4", "--repeats", "2", "--out", str(out)]  # fmt: skip
    subprocess.run([*BENCH, *args], check=True, capture_output=True, cwd=ROOT)
    doc = json.loads(out.read_text())
    assert [r["model"] for r in doc["results"]] == ["16,2,2", "8,2,1"]
    for r in doc["results"]:
        assert len(r["seconds_each"]) == 2
        # every sentence's best hypothesis: 0..max_len tokens plus eos
        assert 3 <= r["tgt_tokens"] <= 3 * (r["max_len"] + 1) == 3 * 17
        # sent_per_s is rounded to 0.1: at a few sentences a second that is more than 1%
        assert r["sent_per_s"] == pytest.approx(3 / r["seconds"], rel=0.01, abs=0.051)
    assert doc["machine"]["device"] == "cpu" and doc["beam"] == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_a_gpu_is_one_line_exit_2() -> None:
    res = subprocess.run(BENCH, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2
    assert res.stderr.strip() == "decode_gpu: --device cuda: no CUDA device here"
