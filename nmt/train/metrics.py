"""Run metrics: ``metrics.jsonl`` (one JSON object per logged step / validation), an optional
TensorBoard folder, and ``loss.png`` (train/dev curves)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_text


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows), for the machine
    record of result files (benchmarks, sweeps)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class MetricsLog:
    """Appends records to ``metrics.jsonl``; on resume drops records past the resumed step so
    the file reads as one uninterrupted run."""

    def __init__(self, folder: Path, resume_step: int | None = None) -> None:
        self.path = folder / "metrics.jsonl"
        # Rewritten atomically: a run killed while resuming never loses the earlier records.
        if resume_step is None:
            atomic_write_text(self.path, "")
        elif self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if (rec := _record(line)) is not None and rec.get("step", 0) <= resume_step
            ]
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        self._tb = _tensorboard(folder / "tensorboard")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def records(self) -> list[dict[str, Any]]:
        recs = (_record(line) for line in self.path.read_text().splitlines())
        return [r for r in recs if r is not None]


def _record(line: str) -> dict[str, Any] | None:
    """A metrics line as a dict; ``None`` for a blank or torn line (a crash mid-append)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(str(folder))


def plot_curves(records: list[dict[str, Any]], out: Path) -> None:
    """``loss.png``: train loss and dev loss per step, dev BLEU on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    bleu = [(r["step"], r["val_bleu"]) for r in records if r.get("val_bleu") is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="dev loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per target token (label-smoothed)")
    ax.grid(alpha=0.3)
    if bleu:
        ax2 = ax.twinx()
        ax2.plot(*zip(*bleu, strict=True), "s--", label="dev BLEU", color="tab:green")
        ax2.set_ylabel("dev BLEU")
        ax2.legend(loc="upper center")
    ax.legend(loc="upper right")
    ax.set_title("training curves")
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
