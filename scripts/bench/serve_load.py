"""nmt-serve under N concurrent clients on loopback against nmt-translate on the same lines.

    python -m scripts.bench serve_load --checkpoint gnmt-debian-en-de --lines 500 \
        --clients 16 --seconds 30 --per-request 1,16 --threads 2 \
        [--out docs/results/localisation/<machine>/serve_load.json]

The first ``--lines`` sources of the test split (``--corpus``, first column) are translated
three ways, with the same decoding settings (the model's, as ``checkpoint=NAME`` applies
them) and ``train.threads=--threads``:

1. ``nmt-translate`` in a child process (the whole file; its start-up, timed on one line, is
   subtracted: ``sent_per_s`` is the decoding rate of a running process);
2. ``nmt-serve`` with one client sending one sentence at a time: each sentence's answer alone
   (a batch of one), and the single-client latency;
3. ``nmt-serve`` with ``--clients`` clients (threads, one keep-alive connection each) for
   ``--seconds`` each, once per ``--per-request`` value (sentences per request: 1 is an
   editor asking for one string, 16 a tool sending a catalogue in lists), cycling over the
   lines: requests/s, sentences/s, latency p50/p90/p99, and every answer checked.

An answer is *lost* when its request got no 200 (or fewer texts back), *wrong* when it is
neither the sentence's answer alone (2) nor nmt-translate's (1): a mix-up of requests.
``differs_from_alone`` counts answers that are nmt-translate's but not the one alone: the
arithmetic, not the server, when a sentence translates differently in a batch of one
(``determinism`` compares 1 and 2 directly). The server is stopped with SIGTERM at the end
(its exit status is reported: 0 for a clean stop). Prints a final JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scripts.bench.common import (
    ROOT,
    child_env,
    command,
    finish,
    machine,
    nmt_command,
    parser,
    results_for,
)

CORPUS = ROOT / "data" / "corpus" / "debian_de_en.test.tsv.gz"


class ServeProcess:
    """``nmt-serve`` in a child process on a free port (``port=0``): ``url`` once it listens,
    ``lines`` of its stderr; :meth:`stop` sends a signal and returns the exit status."""

    def __init__(self, *overrides: str, threads: int = 0, timeout: float = 180) -> None:
        args = [*nmt_command("serve"), "port=0", *overrides]
        args += [f"train.threads={threads}"] if threads else []
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=child_env(threads), cwd=ROOT)  # fmt: skip
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self.url:
            self.stop(signal.SIGKILL)
            raise RuntimeError("nmt-serve did not start: " + "".join(self.lines[-20:]))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if " on http://" in line and not self.url:
                self.url = line.rsplit(" on ", 1)[1].strip().rstrip("/")
                self._ready.set()
        self._ready.set()  # exited before listening

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        """Send ``sig`` (if it still runs) and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        return code

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Client:
    """One keep-alive HTTP connection to the server (stdlib, no extra package)."""

    def __init__(self, url: str, timeout: float = 300) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)

    def call(self, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
        """(status, JSON answer) of one request; ``doc`` is sent as JSON."""
        body = None if doc is None else json.dumps(doc).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body, headers)
                res = self.conn.getresponse()
                data = res.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()  # an idle keep-alive connection the server closed: again
                if attempt == 2:
                    raise
            except (OSError, http.client.HTTPException):
                self.conn.close()  # reconnects on the next request
                raise
        return res.status, json.loads(data) if data else None

    def translate(self, texts: list[str], source: str, target: str) -> tuple[int, Any]:
        q: str | list[str] = texts[0] if len(texts) == 1 else texts
        return self.call("POST", "/translate", {"q": q, "source": source, "target": target})


def read_lines(path: Path, n: int, column: int) -> list[str]:
    """The first ``n`` values of ``column`` of a (gzipped) TSV file."""
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[str] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for row in fh:
            if len(out) >= n:
                break
            out.append(row.rstrip("\n").split("\t")[column])
    return out


def nmt_translate(ckpt: str, lines: list[str], threads: int) -> dict[str, Any]:
    """``nmt-translate`` on ``lines`` in a child process, timed on one line (start-up), on
    ``lines`` and on ``lines`` twice: its output, and its rate on the second copy (a warm
    process, as the server is: ``sent_per_s``) and on the first (``sent_per_s_cold``: the
    first batches of each shape are slow)."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.txt", Path(tmp) / "out.txt"
        args = [*nmt_command("translate"), f"checkpoint={ckpt}", f"input={inp}", f"output={out}"]
        args += [f"train.threads={threads}"] if threads else []
        env = child_env(threads)
        seconds = []
        for text in (lines[:1], lines, lines + lines):
            inp.write_text("".join(x + "\n" for x in text), encoding="utf-8")
            t = time.perf_counter()
            run = subprocess.run(args, check=True, env=env, capture_output=True, cwd=ROOT)
            seconds.append(time.perf_counter() - t)
            if len(seconds) == 2:
                hyps = out.read_text(encoding="utf-8").split("\n")[: len(lines)]
                chosen = [x for x in run.stderr.decode().splitlines() if x.startswith("decode: ")]
    one, single, double = seconds
    return {
        "command": f"nmt-translate checkpoint={ckpt} input=... output=... train.threads={threads}",
        "arithmetic": chosen[0].removeprefix("decode: ").split()[0] if chosen else None,
        "sentences": len(lines),
        "seconds": {
            "one_line": round(one, 2),
            "lines": round(single, 2),
            "lines_twice": round(double, 2),
        },
        "sent_per_s": round(len(lines) / max(double - single, 1e-9), 1),
        "sent_per_s_cold": round(len(lines) / max(single - one, 1e-9), 1),
        "hyps": hyps,
    }


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
             lines: list[str], langs: tuple[str, str], refs: dict[str, list[str]],
             rate: float) -> dict[str, Any]:  # fmt: skip
    """A load phase with the server's batch counters and the rate against ``rate``."""
    before = one.call("GET", "/health")[1]
    phase = load_phase(server.url, lines, langs, args.clients, per, args.seconds, refs)
    after = one.call("GET", "/health")[1]
    batches = after["batches"] - before["batches"]
    phase["server_batches"] = batches
    phase["mean_batch"] = round((after["sentences"] - before["sentences"]) / max(1, batches), 1)
    phase["largest_batch"] = after["largest_batch"]
    phase["vs_nmt_translate"] = round(phase["sent_per_s"] / rate, 2)
    ms = phase["latency_ms"]
    print(f"{args.clients} clients x {per} sentence(s): {phase['sent_per_s']} sent/s "
          f"({phase['vs_nmt_translate']}x nmt-translate), {phase['requests_per_s']} req/s, "
          f"p50 {ms.get('p50')} ms, p99 {ms.get('p99')} ms, lost {phase['lost']}, wrong "
          f"{phase['wrong']}, mean batch {phase['mean_batch']}", flush=True)  # fmt: skip
    return phase


def main(argv: list[str] | None = None) -> int:
    ap = parser(__name__, __doc__)
    ap.add_argument("--checkpoint", default="gnmt-debian-en-de")
    ap.add_argument("--corpus", type=Path, default=CORPUS.relative_to(ROOT),
                    help="TSV(.gz) of the lines (relative: to the repository)")  # fmt: skip
    ap.add_argument("--column", type=int, default=0, help="the column of the sources")
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0, help="per load phase")
    ap.add_argument("--per-request", default="1,16", help="sentences per request, per phase")
    ap.add_argument("--threads", type=int, default=2, help="decoding threads of both commands")
    ap.add_argument("--serve", action="append", default=[], metavar="KEY=VALUE",
                    help="nmt-serve override (repeatable), e.g. serve.max_batch=256")  # fmt: skip
    ap.add_argument("--out", default=str(results_for("localisation", "serve_load.json")),
                    help="'-': none")  # fmt: skip
    args = ap.parse_args(argv)
    lines = read_lines(ROOT / args.corpus, args.lines, args.column)
    pers = [int(x) for x in args.per_request.split(",")]
    ref = nmt_translate(args.checkpoint, lines, args.threads)
    print(f"nmt-translate: {ref['sent_per_s']} sent/s warm, {ref['sent_per_s_cold']} cold "
          f"({len(lines)} lines)", flush=True)  # fmt: skip
    overrides = [f"checkpoint={args.checkpoint}", *args.serve]
    overrides += [f"serve.max_queue={max(256, args.clients * max(pers))}"]
    with ServeProcess(*overrides, threads=args.threads) as server:
        one = Client(server.url)
        langs_doc = one.call("GET", "/languages")[1]
        langs = (langs_doc[0]["code"], langs_doc[0]["targets"][0])
        single = single_client(one, lines, langs)
        alone = single.pop("answers")
        refs = {"alone": alone, "nmt_translate": ref.pop("hyps")}
        rate = float(ref["sent_per_s"])
        phases = [measured(server, one, args, per, lines, langs, refs, rate) for per in pers]
        health = one.call("GET", "/health")[1]
        one.conn.close()
        code = server.stop(signal.SIGTERM)
    differ = [i for i in range(len(lines)) if alone[i] != refs["nmt_translate"][i]]
    good = [p for p in phases if p["vs_nmt_translate"] >= 0.8 and not p["lost"] + p["wrong"]]
    doc = {
        "bench": "serve_load",
        "command": command(__name__, argv),
        "checkpoint": args.checkpoint,
        "corpus": str(args.corpus),
        "lines": len(lines),
        "threads": args.threads,
        "server": {
            "overrides": overrides,
            "arithmetic": health["arithmetic"],
            "beam_size": health["beam_size"],
            "max_batch": health["max_batch"],
            "exit_status_after_sigterm": code,
        },
        "nmt_translate": ref,
        "single_client": single,
        "load": phases,
        "goal": {
            "throughput_vs_nmt_translate": 0.8,
            "met_with_sentences_per_request": [p["sentences_per_request"] for p in good],
        },
        "determinism": {
            "alone_differs_from_nmt_translate": len(differ),
            "of": len(lines),
            "examples": [
                {
                    "line": i,
                    "source": lines[i],
                    "alone": alone[i],
                    "nmt_translate": refs["nmt_translate"][i],
                }
                for i in differ[:5]
            ],  # fmt: skip
        },
        "machine": machine(),
    }
    return finish(doc, None if args.out == "-" else args.out)


if __name__ == "__main__":
    sys.exit(main())
