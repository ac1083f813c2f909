"""Dead-rank detection: turn "a collective failed or timed out" into "rank N died".

Every rank runs a heartbeat thread that bumps a counter in the job's TCPStore (through its
own client connection) twice a second.  A rank that fails writes ``failed/<rank>`` with the
reason before exiting; a rank that finishes writes ``done/<rank>``.  When a collective
raises (gloo reports a closed connection at once, or its timeout expires), the survivor
looks at the store: a rank whose heartbeat stopped and who left no failure/done marker
died (killed, crashed hard); a rank with a failure marker failed with that reason.
Survivors then exit non-zero with one line naming the rank(s) - never a hang, because
every collective runs under the process group's timeout.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta

from torch._C._distributed_c10d import PrefixStore, Store, TCPStore

PREFIX = "pipenmt/"


class PeerFailure(RuntimeError):
    """Another rank died or failed; the message names it."""


_ACTIVE: list[Heartbeat] = []


def report_failure(reason: str) -> None:
    """Leave a failure marker for the other ranks (no-op without a running heartbeat)."""
    for hb in _ACTIVE:
        hb.mark_failed(reason)


class Heartbeat:
    """Liveness of every rank through a TCPStore (see module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        *,
        interval_s: float = 0.5,
        store_timeout_s: float = 10.0,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.interval_s = interval_s
        self._addr = (host, port)
        self._store_timeout = timedelta(seconds=store_timeout_s)
        self._stop = threading.Event()
        self._failed = False
        self._store = self._client()
        self._thread = threading.Thread(target=self._beat, name="pipenmt-heartbeat", daemon=True)
        self._thread.start()
        _ACTIVE[:] = [self]

    def _client(self) -> Store:
        store = TCPStore(
            self._addr[0],
            self._addr[1],
            is_master=False,
            timeout=self._store_timeout,
            wait_for_workers=False,
        )
        return PrefixStore(PREFIX, store)

    def _beat(self) -> None:
        try:
            store = self._client()  # own connection: the main thread may be using the other
            while not self._stop.is_set():
                store.add(f"hb/{self.rank}", 1)
                self._stop.wait(self.interval_s)
        except Exception:  # store gone (its host died): diagnose() reports that
            return

    def stop(self) -> None:
        self._stop.set()

    def mark_failed(self, reason: str) -> None:
        if self._failed:
            return
        self._failed = True
        with suppress(Exception):
            self._store.set(f"failed/{self.rank}", reason[:500])

    def mark_done(self) -> None:
        with suppress(Exception):
            self._store.set(f"done/{self.rank}", "1")
        self.stop()

    def _marker(self, kind: str, r: int) -> str | None:
        key = f"{kind}/{r}"
        if self._store.check([key]):
            value: bytes = self._store.get(key)
            return value.decode(errors="replace")
        return None

    def diagnose(self) -> str:
        """One line naming dead / failed ranks (waits ~4 heartbeat intervals)."""
        others = [r for r in range(self.world_size) if r != self.rank]
        try:
            before = {r: self._store.add(f"hb/{r}", 0) for r in others}
            time.sleep(max(2.0, 4 * self.interval_s))
            after = {r: self._store.add(f"hb/{r}", 0) for r in others}
            failed = {r: m for r in others if (m := self._marker("failed", r)) is not None}
            done = {r for r in others if self._marker("done", r) is not None}
        except Exception as e:
            return (
                f"the job's store at {self._addr[0]}:{self._addr[1]} is unreachable ({e}); "
                "the rank hosting it (rank 0 unless a launcher hosts it) probably died"
            )
        dead = [r for r in others if after[r] == before[r] and r not in failed and r not in done]
        parts = []
        if dead:
            parts.append(
                f"rank{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))} died "
                f"(no heartbeat for {max(2.0, 4 * self.interval_s):.1f}s, no error reported)"
            )
        # a failure marker that blames another rank is a consequence, not the cause
        causes = {r: m for r, m in failed.items() if not m.startswith("PeerFailure")}
        if not dead and not causes:
            causes = failed
        for r, m in sorted(causes.items()):
            parts.append(f"rank {r} failed ({m})")
        if done and not parts:
            parts.append(f"rank(s) {sorted(done)} already finished")
        if parts:
            return "; ".join(parts)
        return (
            f"no rank died or reported an error; ranks {others} are alive (hung, or slower "
            "than the timeout)"
        )


def short_error(e: BaseException, limit: int = 200) -> str:
    """One line: gloo's source-location prefix and boilerplate advice dropped."""
    text = " ".join(str(e).split())
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\] ", "", text)
    text = text.split(" This is typically caused")[0]
    return text[:limit]


@contextmanager
def failure_guard(monitor: Heartbeat | None, what: str) -> Iterator[None]:
    """Run a collective section; on error, name the dead/failed rank(s) and re-raise."""
    try:
        yield
    except PeerFailure:
        raise
    except Exception as e:
        if monitor is None:
            raise
        first = short_error(e)
        local = not isinstance(e, RuntimeError) or type(e).__name__ == "ShapeGuardError"
        if local:
            monitor.mark_failed(f"{type(e).__name__}: {first}")
            raise
        timed_out = "timed out" in first.lower() or "timeout" in first.lower()
        verdict = monitor.diagnose()
        if verdict.startswith("no rank died") and not timed_out:
            monitor.mark_failed(f"{type(e).__name__} in {what}: {first}")
            raise
        msg = f"{what} failed because {verdict} [{type(e).__name__}: {first}]"
        monitor.mark_failed(f"PeerFailure: {verdict}")
        raise PeerFailure(msg) from e
