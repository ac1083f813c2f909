"""What the benchmarks share: their argument parser, timing, the machine record, result files,
child processes running the real commands, and the GNMT stages of the pipeline benchmarks."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from data.atomic import write_json_result
from nmt.machine.capability import forced_isa, machine_class, machine_record
from nmt.release.plot import read_metrics
from nmt.train.metrics import cpu_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
# hidden, encoder layers, decoder layers of the GNMT sizes the throughput benchmarks use
GNMT_SIZES = {"gnmt_small": (256, 4, 4), "gnmt4": (1024, 4, 4), "gnmt8": (1024, 8, 8)}


def results_for(topic: str, name: str) -> Path:
    """Where a result of this machine goes by default: ``docs/results/<topic>/<machine>/name``,
    the machine being its CPU class (``amx``, ``avx512``, ``avx2``; a forced class says so),
    or ``epyc`` for an AMD EPYC run as it is."""
    folder = machine_class()
    if not forced_isa() and "EPYC" in cpu_model():
        folder = "epyc"
    return RESULTS / topic / folder / name


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of benchmark ``module`` (``scripts.bench.NAME``); ``--help`` shows ``doc``."""
    return argparse.ArgumentParser(
        prog=f"python -m scripts.bench {module.rpartition('.')[2]}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def command(module: str, argv: list[str] | None) -> str:
    """How this run was started, for the result file."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m scripts.bench", module.rpartition(".")[2], *args])


def add_step_args(ap: argparse.ArgumentParser, batch: int, length: int, repeats: int) -> None:
    """The training batch of the throughput benchmarks (random ids, an 8,000-piece vocabulary)."""
    ap.add_argument("--batch", type=int, default=batch, help="sentences per step")
    ap.add_argument("--len", type=int, default=length, help="source = target length")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=repeats, help="timed steps")


@contextlib.contextmanager
def work_folder(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created, kept), or a temp folder removed at the end."""
    work = Path(tempfile.mkdtemp(prefix=prefix)) if path is None else path
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if path is None:
            shutil.rmtree(work, ignore_errors=True)


def sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], object], repeats: int, warmup: int = 0, device: torch.device | None = None
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones; a CUDA
    ``device`` is synchronised before each clock reading."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def machine(device: torch.device | None = None, **extra: Any) -> dict[str, Any]:
    """The machine record of a result file (:func:`nmt.machine.capability.machine_record`: CPU,
    class, flags, forced ISA, cores, threads, torch) with the platform, Python, load and the
    device a benchmark ran on."""
    gpu = device is not None and device.type == "cuda"
    return {
        **machine_record(),
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        **extra,
    }


def finish(doc: dict[str, Any], out: str | Path | None) -> int:
    """Print ``doc`` as the last line of output and write it to ``out`` (none: ``None``/'-')."""
    print(json.dumps(doc), flush=True)
    if out is not None and str(out) != "-":
        write_json_result(out, doc)
    return 0


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``; 0 leaves torch's default."""
    if threads:
        torch.set_num_threads(threads)


def child_env(threads: int = 0, **extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, offline datasets, this repository
    importable, ``threads`` (if given) for OpenMP and MKL, then ``extra``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("HYDRA_FULL_ERROR", None)
    return env | extra


def nmt_command(name: str, code_before: str = "") -> list[str]:
    """Argv that runs the installed ``nmt-<name>`` command (:mod:`nmt.cli`) in this Python;
    ``code_before`` runs first in that process."""
    code = (f"{code_before}\nimport sys; from nmt.cli import {name}_main; "
            f"sys.argv[0] = 'nmt-{name}'; {name}_main()")  # fmt: skip
    return [sys.executable, "-c", code]


def model_decode(checkpoint: str) -> Any:
    """``nmt-translate``'s decode settings on the CPU with the model's own length and coverage
    penalties (its folder's ``decode.yaml``, as ``checkpoint=NAME`` applies them)."""
    from nmt.config import DecodeConfig
    from nmt.release.shipped import resolve_checkpoint, tuned_decode

    tuned = tuned_decode(resolve_checkpoint(checkpoint)[0])
    return DecodeConfig(device="cpu", alpha=float(tuned.get("alpha", DecodeConfig.alpha)),
                        beta=float(tuned.get("beta", DecodeConfig.beta)))  # fmt: skip


def same_state(a: Any, b: Any) -> bool:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))  # fmt: skip
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def last_step(run_dir: Path) -> int:
    """The last step a run logged to its ``metrics.jsonl`` (0 before any)."""
    path = run_dir / "metrics.jsonl"
    recs = read_metrics(path) if path.is_file() else []
    return max((int(r.get("step", 0)) for r in recs), default=0)


def tiny_run(corpus: dict[str, Path], cache: Path, steps: int, *extra: str) -> list[str]:
    """``nmt-train`` overrides of a gnmt_tiny run on a generated corpus
    (:func:`data.synthetic.write_corpus`) that checkpoints every step and resumes itself."""
    return [
        "data=files", f"data.train={corpus['train']}", f"data.dev={corpus['dev']}",
        f"data.test={corpus['test']}", "data.vocab_size=60", f"data.cache_dir={cache}",
        "data.batch_tokens=256", "model=gnmt_tiny", "model.hidden=16", "model.enc_layers=2",
        "model.dec_layers=2", "train.device=cpu", "train.threads=1", "train.log_every=1",
        "train.eval_every=0", "train.lr=0.01", f"train.max_steps={steps}", "train.save_every=1",
        "train.resume=auto", *extra,
    ]  # fmt: skip


# ------------------------------------------------- GNMT stages (pipeline, validate_simulator)


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The model and batch of the pipeline benchmarks (random data, dropout 0)."""
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2, help="encoder = decoder layers")
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--length", type=int, default=24, help="Ts = Tt")
    ap.add_argument("--batch", type=int, default=32)


def gnmt_stages(args: argparse.Namespace) -> list[nn.Module]:
    """GNMT's stage list (:func:`nmt.models.gnmt.build_stages`), seed 0, dropout 0."""
    from nmt.models.gnmt import build_stages

    torch.manual_seed(0)
    return list(build_stages(args.vocab, args.hidden, args.layers, args.layers, 0.0, True,
                             0.1, 0))  # fmt: skip


def loss_sum(logits: Tensor, target: Tensor) -> Tensor:
    """The training loss (label smoothing 0.1, pad 0), summed: the pipeline runner's loss."""
    from nmt.models.loss import label_smoothed_nll

    return label_smoothed_nll(logits, target, 0, 0.1)[0]


Inputs = tuple[tuple[Tensor, Tensor, Tensor], Tensor]


def random_batch(args: argparse.Namespace, seed: int = 0) -> Inputs:
    """``((src, src_len, tgt_in), tgt_out)`` of random ids, every sentence ``args.length`` long."""
    g = torch.Generator().manual_seed(seed)
    t, b = args.length, args.batch
    src = torch.randint(4, args.vocab, (t, b), generator=g)
    tgt_in = torch.randint(4, args.vocab, (t, b), generator=g)
    tgt_out = torch.randint(4, args.vocab, (t, b), generator=g)
    return (src, torch.full((b,), t, dtype=torch.long), tgt_in), tgt_out


def cpu_pipeline(
    args: argparse.Namespace, pp: int, timeout_s: float = 120
) -> tuple[Any, int, Inputs]:
    """This process's part of a ``pp``-rank pipeline on the CPU (gloo, one intra-op thread): its
    :class:`parallel.runtime.distenv.DistContext`, GNMT's stage count and the batch."""
    from parallel.runtime.distenv import init_distributed

    torch.set_num_threads(1)
    ctx = init_distributed(1, pp, backend="gloo", device="cpu", timeout_s=timeout_s)
    return ctx, len(gnmt_stages(args)), random_batch(args)


def runner_for(args: argparse.Namespace, ctx: Any, placement: Any, schedule: str, m: int) -> Any:
    """A :class:`parallel.runtime.pipeline.PipelineRunner` over fresh :func:`gnmt_stages`."""
    from parallel.runtime.pipeline import PipelineRunner

    return PipelineRunner(gnmt_stages(args), loss_sum, ctx=ctx, placement=placement,
                          schedule=schedule, microbatches=m)  # fmt: skip
