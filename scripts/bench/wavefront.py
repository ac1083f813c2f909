"""GNMT's wavefront across two processes (or two threads) against one process, measured and
predicted.

    python -m scripts.bench wavefront [--steps 40] [--skip 10] [--waves c4 c4/split ...]

The real ``nmt-train`` on the shipped corpus, ``model=gnmt_demo data.batch_tokens=2048`` (the
demo's batch), ``train.precision`` (``--precision``, bf16 by default: what the demo's auto
picks on a CPU with AMX), for: 1 process x 1 thread plain, 1 process x 2 threads plain, two
plain 1-thread runs at once (how much two processes slow each other down), 2 processes x 1
thread data-parallel (``parallel.dp=2``, two batches a step: its ms per batch, on the same
batches as the others; even ``--steps`` and ``--skip``), and 2 processes x 1 thread
``parallel=wavefront parallel.pp=2`` per ``--waves`` entry, all of them ``--rounds`` times
in turn:
``c<C>[/split][/b<R0>-<R1>][/s<F>][/e<E>][/attn][/thr][/sync]`` = ``parallel.time_chunks=C``,
``encoder_split=true``, ``balance=[R0,R1]``, ``generator_share=F``,
``encoder_shares=[E,1-E]``, ``attention_split=true``, ``wave_threads=true`` (the two ranks
as threads of one process, one core each), ``overlap_gradients=false`` (the shared
gradients summed after the backward, not while the encoder's runs). Step time: the mean
``ms_per_step`` of steps ``skip+1..steps`` (the same batches in every run), averaged over
the rounds. The CPU each run takes per step, user and system time of all its processes
(``cpu_ms_per_step``: the whole run's less that of the same run stopped at step ``skip``),
tells the work apart from the waiting, and a socket's copies (system time) from both. A
wave's step splits into the wave itself and the rest (gradient sums, clip, Adam, the loop:
``..._rest_ms``, from the steps its timeline recorded), so that the simulator's error can be
told apart for each (``wave_error``: the wave alone).

Prediction (:mod:`scripts.bench._wave_predict`): every piece of the wave (bottom encoder
layer, encoder chunks, Dec1+Attention chunks and the attention's part of them, the other
decoder chunks, generator) timed on
one thread with the wave's own code on the same batches, with oneDNN's kernel cache capped as
in training, in this process alone (recorded) and in two processes at once (what the
simulator takes: a rank's pieces run while the other rank computes, and the two slow each
other down); the generator and the split encoder also as each rank runs its share of the
sentences (its own shapes, its own kernels to build); the one-way message time and the
shared gradients' sum (flattened, all-reduced, put back, as a step sums them) measured
between two processes (threads: a float32 copy, and the gradients summed and the weights
copied in memory); the loop's own time per step (the plain 1 x 1 run's step minus its
measured compute); then ``simulate_wavefront``. Before
timing, waits (60 s polls, up to 15 min) while another nmt- command or pytest runs or the
load average is above 0.5, and records the load average.

Writes ``docs/results/wavefront/<machine>/wavefront.json`` (``--out``) and the wavefront
runs' timelines (``timeline_<wave>.png``, one row per process) beside it.

    python -m scripts.bench wavefront --gpu --out FILE   # a CUDA device: gnmt4 bf16, batch
    # 128: plain vs the one-process wavefront with and without a CUDA stream per layer
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nmt.train.pipelined import TIMELINE_STEPS
from nmt.train.wave_encoder import encoder_parameters
from scripts.bench import _wave_link as wl
from scripts.bench import _wave_predict as wp
from scripts.bench.common import (
    child_env,
    command,
    finish,
    machine,
    nmt_command,
    parser,
    results_for,
    work_folder,
)

# C = 4 (C = 8 ran slower in an earlier run of this benchmark, C = 2 and 3 in runs not kept):
# the default balance (generator alone on rank 1); the split encoder and attention with the
# last decoder layer on the generator's rank and 60% of the generator's sentences on rank 0,
# the shared gradients summed after the backward (``sync``) and while the encoder's runs;
# that with 45% of the encoder's sentences on rank 0; the last two as threads of one process
WAVES = ["c4", "c4/split/b3-2/s0.6/attn/sync", "c4/split/b3-2/s0.6/attn",
         "c4/split/b3-2/s0.6/e0.45/attn", "c4/split/b3-2/s0.6/attn/thr",
         "c4/split/b3-2/s0.6/e0.45/attn/thr"]  # fmt: skip
PLAIN = ["parallel=none"]
DP = ["parallel.dp=2", "parallel.pp=1"]  # two processes, each a whole model on its own batch
BASE = ["model=gnmt_demo", "data.batch_tokens=2048", "train.eval_every=0", "train.log_every=1",
        "train.warmup_steps=0", "train.decay=none", "train.save_every=0"]  # fmt: skip


def quiet_machine(limit_s: float = 900.0) -> dict[str, Any]:
    """Wait while another nmt- command or pytest runs or the 1-minute load is above 0.5."""
    waited = 0.0
    while True:
        others = subprocess.run(
            ["pgrep", "-af", "nmt-(train|eval|translate|serve|tune)|pytest"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        load = os.getloadavg()[0]
        if (not others and load <= 0.5) or waited >= limit_s:
            return {"waited_s": waited, "loadavg_before": round(load, 2), "busy": bool(others)}
        print(f"waiting: load {load:.2f}; {others[:200]}", flush=True)
        time.sleep(60)
        waited += 60


def train_run(
    work: Path, name: str, threads: int, extra: list[str], a: Any, steps: int = 0, **env: str
) -> Path:
    """One ``nmt-train`` run of ``steps`` steps (0: ``--steps``) in ``work/name`` (``env``:
    more environment); its output, stdout and stderr in one stream, in ``output.log`` there."""
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    args = [*BASE, f"train.max_steps={steps or a.steps}", f"train.precision={a.precision}",
            f"train.threads={threads}", f"hydra.run.dir={out}", *extra]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(nmt_command("train") + args, env=child_env(threads, **env),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the ranks' processes included
    if r.returncode != 0:
        raise SystemExit(f"{name} failed: {r.stdout[-2000:]}")
    (out / "output.log").write_text(r.stdout)
    cpu = {"user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime}
    (out / "cpu.json").write_text(json.dumps(cpu))
    return out


def cpu_ms(work: Path, full: Path, threads: int, extra: list[str], a: Any) -> dict[str, float]:
    """CPU ms per step (user and system, every process of the run) of steps ``skip+1..steps``
    of the run in ``full``: its CPU time less that of the same run stopped at step ``skip``
    (start-up included in both), over the steps between. Not for runs at the same time."""
    short = train_run(work, f"{full.name}_to_skip", threads, extra, a, steps=a.skip)
    cpu = [json.loads((run / "cpu.json").read_text()) for run in (full, short)]
    n = a.steps - a.skip
    return {kind: (cpu[0][f"{kind}_s"] - cpu[1][f"{kind}_s"]) * 1e3 / n for kind in ("user", "sys")}


def step_ms(out: Path) -> dict[int, float]:
    """``ms_per_step`` of each step a run logged (``metrics.jsonl``)."""
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {int(r["step"]): float(r["ms_per_step"]) for r in recs if "ms_per_step" in r}


def mean_step_ms(out: Path, skip: int) -> float:
    ms = [v for s, v in step_ms(out).items() if s > skip]
    return sum(ms) / len(ms)


def measure(work: Path, a: Any, out_dir: Path) -> dict[str, Any]:
    """The nmt-train runs, ``--rounds`` times in turn (the machine's speed drifts: every
    configuration sees each phase of it): mean ms per step of each configuration over the
    rounds, and each round's (``rounds``)."""
    rounds: list[dict[str, float]] = []
    for _ in range(a.rounds):
        res: dict[str, float] = {}
        for name, threads in (("plain_1x1", 1), ("plain_1x2", 2)):
            run = train_run(work, name, threads, PLAIN, a)
            res[f"{name}_ms"] = mean_step_ms(run, a.skip)
            for kind, ms in cpu_ms(work, run, threads, PLAIN, a).items():
                res[f"{name}_cpu_{kind}_ms"] = ms
        res["plain_1x1_pair_ms"] = pair_ms(work, a)
        res["dp_2x1_ms"] = dp_batch_ms(work, a)
        for spec in specs(a):
            run = train_run(work, spec.name, 1, spec.overrides(), a)
            res[key(spec)] = mean_step_ms(run, a.skip)
            res[key(spec, "rest")] = rest_of_step_ms(run)
            for kind, ms in cpu_ms(work, run, 1, spec.overrides(), a).items():
                res[key(spec, f"cpu_{kind}")] = ms
            if (run / "timeline.png").is_file():
                out_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(run / "timeline.png", out_dir / f"timeline_{spec.name}.png")
        rounds.append(res)
    mean = {k: sum(r[k] for r in rounds) / len(rounds) for k in rounds[0]}
    return mean | {"rounds": [{k: round(v, 1) for k, v in r.items()} for r in rounds]}


def rest_of_step_ms(out: Path) -> float:
    """The mean ms of a wave run's steps outside the wave itself (gradient sums, clip, Adam,
    the loop), over the steps its timeline recorded (``TIMELINE_STEPS``): ``ms_per_step``
    less the timeline's mean step (first piece's start to last piece's end on any rank)."""
    summary = json.loads((out / "timeline.json").read_text())["otherData"]
    ms = step_ms(out)
    first = TIMELINE_STEPS[0] + 1  # the run's step of the timeline's first (steps from 1)
    logged = [ms[first + i] for i in range(summary["steps"])]
    return sum(logged) / len(logged) - float(summary["step_ms"])


def dp_batch_ms(work: Path, a: Any) -> float:
    """2 processes x 1 thread data-parallel (``parallel.dp=2``: each step takes two batches,
    one per process, and sums the gradients): ms per batch, half the mean step of steps
    ``skip/2+1..steps/2``, whose batches are those of the other runs' steps
    ``skip+1..steps``."""
    run = train_run(work, "dp2", 1, DP, a, steps=a.steps // 2)
    return mean_step_ms(run, a.skip // 2) / 2


def pair_ms(work: Path, a: Any) -> float:
    """Two plain 1-thread runs at once (the two processes' slowdown of each other): the mean
    of their ms per step."""
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda n: train_run(work, n, 1, PLAIN, a),
                             ["pairA", "pairB"]))  # fmt: skip
    return sum(mean_step_ms(r, a.skip) for r in runs) / 2


def specs(a: Any) -> list[wp.WaveSpec]:
    return [wp.WaveSpec.parse(w) for w in a.waves]


def key(spec: wp.WaveSpec, part: str = "") -> str:
    return f"wave_2x1_{spec.name}{'_' + part if part else ''}_ms"


def prediction(a: Any, measured: dict[str, Any]) -> dict[str, Any]:
    """Measured pieces, the link, and the simulator's steps (see the module doc)."""
    import torch

    from nmt.config import compose_config

    cfg = compose_config([*BASE, f"train.precision={a.precision}"])
    model, batches = wp.run_batches(cfg, a.steps)
    mine = batches[a.skip :]
    n = len(mine)
    sizes = {"tt": sum(b.tgt_in.size(0) for b in mine) / n,
             "ts": sum(b.src.size(0) for b in mine) / n,
             "bt": sum(b.tgt_in.size(1) for b in mine) / n, "hidden": model.hidden}  # fmt: skip
    tt, bt, hidden = sizes["tt"], sizes["bt"], model.hidden
    rows = sum(int(torch.unique(b.src).numel()) for b in mine) / n  # distinct source tokens
    params = {s.name: shared_params(model, s) for s in specs(a)}
    numel = {name: sum(p.numel() for p in ps) for name, ps in params.items()}
    shapes = {numel[name]: [list(p.shape) for p in ps] for name, ps in params.items()}
    # processes with overlap_gradients: what is left to sum after the wave (recorded only:
    # the simulator counts the whole all-reduce after the wave, as its copies take the two
    # vCPUs from the encoder's backward wherever it runs)
    after = {s.name: late_numel(model, s, rows) for s in specs(a) if not (s.threads or s.sync)}
    small, large = int(tt / 8 * bt * hidden), int(tt / 2 * bt * hidden)
    link = wl.probe_link([small, large], shapes[min(shapes)])
    allreduce = {n: wl.probe_link([small], shapes[n])["allreduce_ms"] for n in sorted(shapes)}
    total = sum(p.numel() for p in model.parameters())
    memory = {n: wl.probe_memory([small, large], n, total)
              for n in sorted({numel[s.name] for s in specs(a) if s.threads})}  # fmt: skip
    per_wave = {s.name: memory[numel[s.name]]["allreduce_ms"] if s.threads
                else allreduce[numel[s.name]] for s in specs(a)}  # fmt: skip
    out: dict[str, Any] = {"link": link, "memory_link": memory[min(memory)] if memory else None,
                           "allreduce_ms": per_wave,
                           "allreduce_numel": {"shared": numel, "after_wave": after},
                           "sizes": sizes | {"source_tokens": rows}, "chunks": {},
                           "pieces_ms": {}}  # fmt: skip
    from nmt.machine import hostmem

    hostmem.tune()  # as nmt-train runs: its allocator, and oneDNN's cache capped (a larger
    hostmem.cap_onednn_cache()  # cache keeps kernels that every training step builds anew)
    torch.set_num_threads(1)
    whole = wp.unit_costs(cfg, model, mine, 1)
    loop = max(measured["plain_1x1_ms"] - whole["step"] - whole["extra"], 0.0)
    out["one_process_ms"] = {k: round(v, 2) for k, v in whole.items()} | {"loop": round(loop, 2)}
    chunks = sorted({s.chunks for s in specs(a)})
    for c in chunks:
        out["pieces_ms"][f"c{c}"] = rounded(wp.unit_costs(cfg, model, mine, c))
    overrides = [*BASE, f"train.precision={a.precision}"]
    shares = sorted({s.share for s in specs(a) if s.share > 0})
    encoders = sorted({s.encoder_shares for s in specs(a) if s.split})
    together = wp.unit_costs_together(overrides, a.steps, a.skip, [1, *chunks], shares, encoders)
    out["pieces_ms_two_at_once"] = {f"c{c}": rounded(v) for c, v in together.items()}
    for c in chunks:
        costs = together[c] | {"loop": loop}
        for spec in (s for s in specs(a) if s.chunks == c):
            wire = {**(memory[numel[spec.name]] if spec.threads else link),
                    "allreduce_ms": per_wave[spec.name]}  # fmt: skip
            sim = wp.summary(wp.predict(costs, spec, sizes, wire, together[1]))
            got = measured[key(spec)]
            sim["measured_ms"] = round(got, 1)
            sim["error"] = round(sim["step_ms"] / got - 1.0, 4)
            sim["rest_ms"] = round(wp.extra_ms(costs, wire), 1)  # the simulator's, after the wave
            sim["measured_rest_ms"] = round(measured[key(spec, "rest")], 1)
            wave_ms = got - measured[key(spec, "rest")]
            sim["wave_error"] = round((sim["step_ms"] - sim["rest_ms"]) / wave_ms - 1.0, 4)
            out["chunks"][spec.name] = sim
    return out


def shared_params(model: Any, spec: wp.WaveSpec) -> list[Any]:
    """The parameters whose gradients rank 1 shares with rank 0 in a run of ``spec``: the
    generator (and the tied embedding), Dec2..D with ``b3-2``, the encoder when split, the
    attention when split."""
    params = list(model.stages[-1].parameters())
    params += (
        [p for s in model.dec_stages for p in s.parameters()] if spec.balance == (3, 2) else []
    )
    params += list(encoder_parameters(model)) if spec.split else []
    params += list(model.attn_stage.attention.parameters()) if spec.attention else []
    return list({id(p): p for p in params}.values())


def late_numel(model: Any, spec: wp.WaveSpec, rows: float) -> int:
    """Elements of the shared gradients the processes sum after the wave: the encoder's
    (when split) but the embedding, and the embedding's ``rows`` source-token rows (the
    generator and the tied embedding's gradient, the decoder's and the attention's are
    summed while the encoder's backward runs)."""
    emb = model.embed_stage.embedding.weight
    enc = [p for p in encoder_parameters(model) if p is not emb] if spec.split else []
    return sum(p.numel() for p in enc) + int(rows * emb.size(1))


def rounded(costs: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in costs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=10, help="steps left out of the mean")
    ap.add_argument("--rounds", type=int, default=2, help="times every run is repeated, in turn")
    ap.add_argument("--waves", nargs="+", default=WAVES,
                    help="wavefront runs: c<C>[/split][/b<R0>-<R1>][/s<F>][/e<E>][/attn][/thr]"
                         "[/sync]")  # fmt: skip
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--work", type=Path, default=None, help="run folders (default: temporary)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-wait", action="store_true", help="time at once (smoke runs)")
    ap.add_argument("--wait-max", type=float, default=900.0, help="seconds to wait at most")
    gpu = "gnmt4 bf16 batch 128 on CUDA: plain vs wavefront with streams"
    ap.add_argument("--gpu", action="store_true", help=gpu)
    ap.add_argument("--chunks", type=int, nargs="+", default=[4, 8], help="--gpu: time chunks")
    a = ap.parse_args(argv)
    if a.steps % 2 or a.skip % 2 or a.skip < 2:  # dp: two batches a step; CPU: a short run
        raise SystemExit("--steps and --skip must be even, --skip at least 2")
    if a.gpu:
        return gpu_main(a, argv)
    out = Path(a.out) if a.out else results_for("wavefront", "wavefront.json")
    quiet = quiet_machine(0.0 if a.no_wait else a.wait_max)
    with work_folder(a.work, "wavefront-") as work:
        measured = measure(work, a, out.parent)
        load_after = round(os.getloadavg()[0], 2)
        predicted = prediction(a, measured)
    base, two = measured["plain_1x1_ms"], measured["plain_1x2_ms"]
    runs = {s.name: measured[key(s)] for s in specs(a)} | {"dp_2x1": measured["dp_2x1_ms"]}
    speed = {name: {"vs_1x1": round(base / ms, 3), "vs_1x2": round(two / ms, 3)}
             for name, ms in runs.items()}  # fmt: skip
    errors = [abs(v["error"]) for v in predicted["chunks"].values()]
    doc = {
        "command": command(__name__, argv),
        "machine": machine(threads_plain=[1, 2], quiet=quiet, loadavg_after=load_after),
        "config": {
            "model": "gnmt_demo",
            "batch_tokens": 2048,
            "precision": a.precision,
            "steps": a.steps,
            "skip": a.skip,
        },  # fmt: skip
        "measured_ms": {k: round(v, 1) for k, v in measured.items() if k != "rounds"},
        "measured_rounds_ms": measured["rounds"],
        "plain_2_threads_vs_1": round(base / two, 3),
        "cpu_ms_per_step": cpu_table(measured),
        "speedup": speed,
        "predicted": predicted,
        "goals": {
            "speedup_1.6x_vs_1x1_processes": best(speed, a, threads=False) >= 1.6,
            "speedup_1.6x_vs_1x1_threads": best(speed, a, threads=True) >= 1.6,
            "simulator_within_15pct": max(errors) <= 0.15,
        },  # fmt: skip
    }
    return finish(doc, out)


def cpu_table(measured: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per run (but the runs at the same time): CPU ms per step, user, system and both, and
    the cores that kept busy (both over the step's wall time)."""
    out = {}
    for k in measured:
        if k.endswith("_cpu_user_ms"):
            run = k.removesuffix("_cpu_user_ms")
            user, system = measured[k], measured[f"{run}_cpu_sys_ms"]
            out[run] = {"user": round(user, 1), "sys": round(system, 1),
                        "total": round(user + system, 1),
                        "cores": round((user + system) / measured[f"{run}_ms"], 2)}  # fmt: skip
    return out


def best(speed: dict[str, dict[str, float]], a: Any, threads: bool) -> float:
    """The best speedup over 1 x 1 of the waves run as processes (or as threads); 0 if none."""
    return max((speed[s.name]["vs_1x1"] for s in specs(a) if s.threads == threads), default=0.0)


def gpu_main(a: Any, argv: list[str] | None) -> int:
    """``--gpu``: :func:`scripts.bench._wave_gpu.gpu_rows` for gnmt4, batch 128, length 32."""
    import torch

    from scripts.bench._wave_gpu import gpu_rows

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    rows = gpu_rows("gnmt4", 128, 32, a.chunks)
    doc = {"command": command(__name__, argv), "machine": machine(torch.device("cuda")),
           "config": {"model": "gnmt4", "batch": 128, "len": 32, "precision": "bf16"},
           "ms": rows}  # fmt: skip
    return finish(doc, a.out or "-")
