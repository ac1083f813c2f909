"""nmt-serve under N concurrent clients on loopback against nmt-translate on the same lines.

    python -m scripts.bench serve_load --checkpoint gnmt-debian-en-de --lines 500 \
        --clients 16 --seconds 30 --phases 1,16,16/256 --threads 2 \
        [--out docs/results/localisation/<machine>/serve_load.json]

The first ``--lines`` sources of the test split (``--corpus``, first column) are translated
with the model's own decoding settings (as ``checkpoint=NAME`` applies them) and
``--threads`` threads:

1. by ``nmt-translate`` in a child process, as users run it (``sent_per_s`` leaves out its
   start-up, timed on one line); and by ``Translator.translate`` in this process a second time
   (``warm_translator``: every shape seen once, as in a server that has run a while);
2. by ``nmt-serve`` with one client sending one sentence at a time: each sentence's answer
   alone (a batch of one), and the single-client latency;
3. by ``nmt-serve`` with ``--clients`` clients (threads, one keep-alive connection each) for
   ``--seconds`` per phase ``PER[/MAX_BATCH[/WAIT_MS]]``: ``PER`` sentences per request (1: an
   editor asking for one string; 16: a tool sending a catalogue in lists) to a server with
   ``serve.max_batch`` (64) and ``serve.batch_wait_ms`` (5) as given, cycling over the lines:
   requests/s, sentences/s, latency p50/p90/p99, the server's batches, every answer checked.

An answer is *lost* when its request got no 200 (or fewer texts back), *wrong* when it is
neither the sentence's answer alone (2) nor nmt-translate's (1): a mix-up of requests.
``differs_from_alone`` counts answers that are nmt-translate's but not the one alone: the
arithmetic, not the server, when a sentence translates differently in a batch of one
(``determinism`` compares 1 and 2 directly). Each server is stopped with SIGTERM (its exit
status is reported: 0 for a clean stop). Prints a final JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from scripts.bench import common
from scripts.bench._serve import CORPUS, Client, ServeProcess, read_lines

PHASES = "1,16,16/256"  # sentences per request[/serve.max_batch[/serve.batch_wait_ms]]


def nmt_translate(ckpt: str, lines: list[str], threads: int) -> dict[str, Any]:
    """``nmt-translate`` on ``lines`` in a child process, as users run it: timed (after an
    untimed run that calibrates, if due) on one line and on ``lines``; ``sent_per_s`` leaves
    out the start-up (the one-line run), not the first batches of each shape (slow once)."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.txt", Path(tmp) / "out.txt"
        args = [
            *common.nmt_command("translate"),
            f"checkpoint={ckpt}",
            f"input={inp}",
            f"output={out}",
        ]
        args += [f"train.threads={threads}"] if threads else []
        seconds = []
        for text in (lines[:1], lines[:1], lines):
            inp.write_text("".join(x + "\n" for x in text), encoding="utf-8")
            t = time.perf_counter()
            env = common.child_env(threads)
            run = subprocess.run(args, check=True, env=env, capture_output=True, cwd=common.ROOT)
            seconds.append(time.perf_counter() - t)
        hyps = out.read_text(encoding="utf-8").split("\n")[: len(lines)]
    chosen = [x for x in run.stderr.decode().splitlines() if x.startswith("decode: ")]
    _, one, whole = seconds
    return {
        "command": f"nmt-translate checkpoint={ckpt} input=... output=... train.threads={threads}",
        "arithmetic": chosen[0].removeprefix("decode: ").split()[0] if chosen else None,
        "sentences": len(lines),
        "seconds": round(whole, 2),
        "startup_seconds": round(one, 2),
        "sent_per_s": round(len(lines) / max(whole - one, 1e-9), 1),
        "hyps": hyps,
    }


def warm_translator(ckpt: str, lines: list[str], threads: int) -> dict[str, Any]:
    """The same lines through ``Translator(ckpt).translate`` in this process, a second time
    (every shape seen once): the decoding rate of a warm process, nmt-translate's ceiling."""
    from nmt.translator import Translator

    common.set_threads(threads)
    tr = Translator(ckpt)
    tr.translate(lines)
    t = time.perf_counter()
    out = [h[0].text for h in tr.translate(lines)]
    sec = time.perf_counter() - t
    rate = round(len(lines) / sec, 1)
    return {"arithmetic": tr.arithmetic.name, "sent_per_s": rate, "hyps": out}


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of latencies in seconds, as milliseconds."""
    if not values:
        return {}
    v = sorted(values)

    def at(p: float) -> float:
        return round(1000 * v[min(len(v) - 1, int(p * len(v)))], 1)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(1000 * v[-1], 1)}


def load_phase(url: str, lines: list[str], langs: tuple[str, str], clients: int, per: int,
               seconds: float, refs: dict[str, list[str]]) -> dict[str, Any]:  # fmt: skip
    """``clients`` threads sending ``per`` sentences per request for ``seconds``: counts,
    rates, latencies and the check of every answer against ``refs`` (alone, batched)."""
    lock = threading.Lock()
    cursor = [0]
    rows: list[tuple[float, int, int]] = []  # (latency, sentences answered, sentences lost)
    checks = {"wrong": 0, "differs_from_alone": 0, "differs_from_nmt_translate": 0}
    examples: list[dict[str, Any]] = []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        conn = Client(url)
        start.wait()
        while time.perf_counter() < stop_at[0]:
            with lock:
                idx = [(cursor[0] + k) % len(lines) for k in range(per)]
                cursor[0] += per
            t = time.perf_counter()
            try:
                status, doc = conn.translate([lines[i] for i in idx], *langs)
            except (OSError, http.client.HTTPException, ValueError):
                status, doc = 0, None
            latency = time.perf_counter() - t
            got = doc.get("translatedText") if status == 200 and isinstance(doc, dict) else None
            texts = [got] if isinstance(got, str) else got if isinstance(got, list) else []
            with lock:
                rows.append((latency, len(texts), per - len(texts)))
                for i, text in zip(idx, texts, strict=False):
                    alone, batched = refs["alone"][i], refs["nmt_translate"][i]
                    checks["differs_from_alone"] += text != alone
                    checks["differs_from_nmt_translate"] += text != batched
                    if text not in (alone, batched):
                        checks["wrong"] += 1
                        if len(examples) < 5:
                            examples.append({"line": i, "answer": text, "alone": alone})

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    stop_at[0] = time.perf_counter() + seconds
    begin = time.perf_counter()
    start.wait()
    for th in threads:
        th.join()
    wall = time.perf_counter() - begin
    answered = sum(r[1] for r in rows)
    return {
        "clients": clients,
        "sentences_per_request": per,
        "seconds": round(wall, 2),
        "requests": len(rows),
        "requests_per_s": round(len(rows) / wall, 1),
        "sentences": answered,
        "sent_per_s": round(answered / wall, 1),
        "latency_ms": percentiles([r[0] for r in rows]),
        "lost": sum(r[2] for r in rows),
        **checks,
        "wrong_examples": examples,
    }


def single_client(one: Client, lines: list[str], langs: tuple[str, str]) -> dict[str, Any]:
    """One sentence at a time from one client, after an untimed warm-up: each sentence's
    answer alone (``answers``), the rate and the latencies."""
    for i in range(0, min(len(lines), 64), 16):
        one.translate(lines[i : i + 16], *langs)
    answers: list[str] = []
    latencies: list[float] = []
    begin = time.perf_counter()
    for line in lines:
        t = time.perf_counter()
        status, doc = one.translate([line], *langs)
        latencies.append(time.perf_counter() - t)
        answers.append(doc["translatedText"] if status == 200 else f"<error {status}>")
    wall = time.perf_counter() - begin
    return {
        "sentences": len(lines),
        "sent_per_s": round(len(lines) / wall, 1),
        "latency_ms": percentiles(latencies),
        "answers": answers,
    }


def measured(server: ServeProcess, one: Client, args: argparse.Namespace, per: int,
             lines: list[str], langs: tuple[str, str],
             refs: dict[str, list[str]]) -> dict[str, Any]:  # fmt: skip
    """A load phase with the server's settings and batch counters."""
    before = one.call("GET", "/health")[1]
    phase = load_phase(server.url, lines, langs, args.clients, per, args.seconds, refs)
    after = one.call("GET", "/health")[1]
    batches = after["batches"] - before["batches"]
    phase["max_batch"] = after["max_batch"]
    phase["batch_wait_ms"] = after["batch_wait_ms"]
    phase["server_batches"] = batches
    phase["mean_batch"] = round((after["sentences"] - before["sentences"]) / max(1, batches), 1)
    ms = phase["latency_ms"]
    print(f"{args.clients} clients x {per} sentence(s), max_batch {phase['max_batch']}, wait "
          f"{phase['batch_wait_ms']:g} ms: {phase['sent_per_s']} sent/s, "
          f"{phase['requests_per_s']} req/s, p50 {ms.get('p50')} ms, p99 {ms.get('p99')} ms, "
          f"lost {phase['lost']}, wrong {phase['wrong']}, mean batch {phase['mean_batch']}",
          flush=True)  # fmt: skip
    return phase


def parse_phases(text: str) -> list[tuple[int, int, float]]:
    """``"1,16/256/20"`` -> [(sentences per request, serve.max_batch (64 when not given),
    serve.batch_wait_ms (5 when not given)), ...]."""
    out = []
    for item in text.split(","):
        parts = item.split("/")
        per, batch, wait = (parts + ["64", "5"][len(parts) - 1 :])[:3]
        out.append((int(per), int(batch), float(wait)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__name__, __doc__)
    ap.add_argument("--checkpoint", default="gnmt-debian-en-de")
    ap.add_argument("--corpus", type=Path, default=CORPUS.relative_to(common.ROOT),
                    help="TSV(.gz) of the lines (relative: to the repository)")  # fmt: skip
    ap.add_argument("--column", type=int, default=0, help="the column of the sources")
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0, help="per load phase")
    ap.add_argument("--phases", type=parse_phases, default=parse_phases(PHASES),
                    help="PER[/MAX_BATCH[/WAIT_MS]],...: sentences per request, serve.max_batch "
                    f"and serve.batch_wait_ms of each phase (default {PHASES})")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="decoding threads of both commands")
    ap.add_argument("--out", default=str(common.results_for("localisation", "serve_load.json")),
                    help="'-': none")  # fmt: skip
    args = ap.parse_args(argv)
    lines = read_lines(common.ROOT / args.corpus, args.lines, args.column)
    ref = nmt_translate(args.checkpoint, lines, args.threads)
    warm = warm_translator(args.checkpoint, lines, args.threads)
    print(f"nmt-translate: {ref['sent_per_s']} sent/s; a warm Translator {warm['sent_per_s']}",
          flush=True)  # fmt: skip
    refs = {"nmt_translate": ref.pop("hyps")}
    warm["same_as_nmt_translate"] = warm.pop("hyps") == refs["nmt_translate"]
    queue = max(256, args.clients * max(p[0] for p in args.phases))
    phases: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    single: dict[str, Any] = {}
    for batch, wait in dict.fromkeys((b, w) for _, b, w in args.phases):
        overrides = [f"checkpoint={args.checkpoint}", f"serve.max_queue={queue}",
                     f"serve.max_batch={batch}", f"serve.batch_wait_ms={wait:g}"]  # fmt: skip
        with ServeProcess(*overrides, threads=args.threads) as server:
            one = Client(server.url)
            langs_doc = one.call("GET", "/languages")[1]
            langs = (langs_doc[0]["code"], langs_doc[0]["targets"][0])
            if not single:  # each sentence alone: the reference of every phase
                single = single_client(one, lines, langs)
                refs["alone"] = single.pop("answers")
            else:  # the same warm-up as the first server's
                single_client(one, lines[:64], langs)
            for per in [p for p, b, w in args.phases if (b, w) == (batch, wait)]:
                phase = measured(server, one, args, per, lines, langs, refs)
                phase["vs_nmt_translate"] = round(phase["sent_per_s"] / ref["sent_per_s"], 2)
                phase["vs_warm_translator"] = round(phase["sent_per_s"] / warm["sent_per_s"], 2)
                print(f"  {phase['vs_nmt_translate']}x nmt-translate, "
                      f"{phase['vs_warm_translator']}x a warm Translator", flush=True)  # fmt: skip
                phases.append(phase)
            health = one.call("GET", "/health")[1]
            one.conn.close()
            code = server.stop(signal.SIGTERM)
        servers.append({"overrides": overrides, "arithmetic": health["arithmetic"],
                        "beam_size": health["beam_size"], "refused": health["refused"],
                        "failed": health["failed"], "exit_status_after_sigterm": code})  # fmt: skip
    alone, batched = refs["alone"], refs["nmt_translate"]
    differ = [i for i in range(len(lines)) if alone[i] != batched[i]]
    examples = [{"line": i, "source": lines[i], "alone": alone[i], "nmt_translate": batched[i]}
                for i in differ[:5]]  # fmt: skip
    good = [p for p in phases if p["vs_nmt_translate"] >= 0.8 and not p["lost"] + p["wrong"]]
    doc = {
        "bench": "serve_load",
        "command": common.command(__name__, argv),
        "checkpoint": args.checkpoint,
        "corpus": str(args.corpus),
        "lines": len(lines),
        "threads": args.threads,
        "nmt_translate": ref,
        "warm_translator": warm,
        "servers": servers,
        "single_client": single,
        "load": phases,
        "goal": {
            "throughput_vs_nmt_translate": 0.8,
            "met_by": [
                f"{p['sentences_per_request']}/{p['max_batch']}/{p['batch_wait_ms']:g}"
                for p in good
            ],
        },
        "determinism": {
            "alone_differs_from_nmt_translate": len(differ),
            "of": len(lines),
            "examples": examples,
        },
        "machine": common.machine(),
    }
    return common.finish(doc, None if args.out == "-" else args.out)


if __name__ == "__main__":
    sys.exit(main())
