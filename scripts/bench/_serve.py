"""``nmt-serve`` in a child process and a stdlib HTTP client: what the load test
(:mod:`scripts.bench.serve_load`) and the server's tests (``tests/test_serve*.py``) share."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scripts.bench.common import ROOT, child_env, nmt_command

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
        return self.wait(timeout)

    def wait(self, timeout: float = 120) -> int:
        """Wait for the exit status without signalling (a second SIGTERM that lands after
        the server restored the default handlers would kill it: -15); kill after ``timeout``."""
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
