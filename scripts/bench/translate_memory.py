"""Peak memory of streaming translation: ``nmt-translate`` on 20k and 200k lines.

    python -m scripts.bench translate_memory                     # 20k and 200k lines
    python -m scripts.bench translate_memory --lines 2000 20000  # quicker

Trains a tiny checkpoint on a generated toy corpus, writes input files of short sentences,
runs the real command (greedy decoding) on each in a fresh process, and reports the peak RSS
(``VmHWM`` of that process) plus RSS samples over the run: a
streaming translator's memory does not grow with the input (it reads, translates and writes
``CHUNK_LINES`` lines at a time). Writes the rows and the machine to ``--out``
(``docs/results/reliability/amx/translate_memory.json``; ``-``: none).
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path
from typing import Any

from data.synthetic import WORDS, write_corpus
from scripts.bench import common
from scripts.bench.common import (
    ROOT,
    command,
    finish,
    machine,
    nmt_command,
    parser,
    tiny_run,
    work_folder,
)

# Peak RSS of the translating process itself: VmHWM (getrusage's ru_maxrss would also count
# the parent's memory at fork time: Linux keeps it across exec).
PEAK = """
import atexit, resource, sys

def peak():
    try:
        with open("/proc/self/status") as f:
            kb = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("PEAK_RSS_KB", kb, file=sys.stderr)

atexit.register(peak)
"""


def make_checkpoint(work: Path) -> Path:
    from nmt.config import compose_config
    from nmt.train.run import train

    corpus = write_corpus(work, {"train": 600, "dev": 40, "test": 40})
    args = [a for a in tiny_run(corpus, work / "cache", 40) if "save_every" not in a]
    cfg = compose_config([*args, f"train.out_dir={work / 'run'}"])
    train(cfg)
    return work / "run" / "checkpoints" / "last.pt"


def write_input(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = sorted(WORDS)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) + "\n")


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(ckpt: Path, src: Path, out: Path, n: int) -> dict[str, Any]:
    start = time.monotonic()
    proc = subprocess.Popen(
        [*nmt_command("translate", PEAK), f"checkpoint={ckpt}", f"input={src}", f"output={out}",
         "decode=greedy", "decode.batch_tokens=8000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, text=True,
    )  # fmt: skip
    samples: list[tuple[float, int]] = []
    while proc.poll() is None:
        kb = rss_kb(proc.pid)
        if kb:
            samples.append((time.monotonic() - start, kb))
        time.sleep(0.25)
    err = proc.stderr.read() if proc.stderr else ""
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"nmt-translate failed on {n} lines:\n{err[-2000:]}")
    peak = next(int(x.split()[1]) for x in err.splitlines() if x.startswith("PEAK_RSS_KB"))
    # RSS after start-up (model loaded, first chunk in flight) vs the end of the run
    steady = [kb for t, kb in samples if t > 0.2 * seconds]
    with out.open("rb") as f:
        lines_out = sum(1 for _ in f)
    return {
        "lines": n,
        "lines_out": lines_out,
        "seconds": round(seconds, 1),
        "lines_per_s": round(n / seconds),
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_first_fifth_mb": round(samples[0][1] / 1024, 1) if samples else None,
        "rss_steady_min_mb": round(min(steady) / 1024, 1) if steady else None,
        "rss_steady_max_mb": round(max(steady) / 1024, 1) if steady else None,
        "input_mb": round(src.stat().st_size / 2**20, 1),
    }


def run(
    sizes: list[int], workdir: Path | None = None, verbose: bool = True
) -> list[dict[str, Any]]:
    with work_folder(workdir, "translate_memory.") as work:
        ckpt = make_checkpoint(work)
        rows = []
        for n in sizes:
            src, out = work / f"in{n}.txt", work / f"out{n}.txt"
            write_input(src, n)
            row = measure(ckpt, src, out, n)
            rows.append(row)
            if verbose:
                print(
                    f"{n:>7} lines ({row['input_mb']} MB): {row['seconds']} s "
                    f"({row['lines_per_s']} lines/s), peak RSS {row['peak_rss_mb']} MB, "
                    f"RSS during the run {row['rss_steady_min_mb']}-{row['rss_steady_max_mb']} "
                    f"MB, {row['lines_out']} lines out",
                    flush=True,
                )
        return rows


OUT = common.results_for("reliability", "translate_memory.json")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--lines", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", default=str(OUT), help="'-': none")
    a = ap.parse_args(argv)
    rows = run(a.lines, a.workdir)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(
            f"peak RSS {first['peak_rss_mb']} MB at {first['lines']} lines vs "
            f"{last['peak_rss_mb']} MB at {last['lines']} lines "
            f"({last['lines'] // first['lines']}x the input, "
            f"{last['peak_rss_mb'] - first['peak_rss_mb']:+.1f} MB)"
        )
    finish({"command": command(__name__, argv), "machine": machine(), "rows": rows}, a.out)
    return 0 if all(r["lines_out"] == r["lines"] for r in rows) else 1
