"""``nmt-serve``'s dynamic batching (:mod:`nmt.serve.batcher`) and request checks
(:mod:`nmt.serve.protocol`) on their own: no model, no HTTP, no extra package."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from concurrent.futures import CancelledError

import pytest

from nmt.serve.batcher import Batcher, Closed, QueueFull
from nmt.serve.protocol import ApiError, form_fields, json_fields, parse_translate


class Recorder:
    """A translate function that upper-cases, records each call, and can be held."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Hashable]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, texts: list[str], settings: Hashable) -> list[str]:
        self.gate.wait(10)
        if any("BAD" in t for t in texts):
            raise ValueError("bad text")
        self.calls.append((list(texts), settings))
        return [f"{t.upper()}/{settings}" for t in texts]


def test_concurrent_jobs_decode_together_each_gets_its_own() -> None:
    rec = Recorder()
    b: Batcher[str] = Batcher(rec, max_queue=100, max_batch=64, batch_wait_s=0.2)
    futures = [b.submit([f"a{i}", f"b{i}"], "s") for i in range(10)]
    assert [f.result(5) for f in futures] == [[f"A{i}/s", f"B{i}/s"] for i in range(10)]
    assert len(rec.calls) == 1 and len(rec.calls[0][0]) == 20
    assert (b.stats.batches, b.stats.requests, b.stats.sentences) == (1, 10, 20)
    assert b.stats.largest_batch == 20
    b.close()


def test_jobs_that_keep_arriving_join_until_a_quiet_gap() -> None:
    """Jobs 20 ms apart join one batch (each resets the 100 ms wait, up to 10 x 100 ms);
    one after a longer quiet gap starts another."""
    rec = Recorder()
    b: Batcher[str] = Batcher(rec, max_queue=100, max_batch=64, batch_wait_s=0.1)
    futures = []
    for i in range(8):  # 140 ms in all: more than one wait, less than the cap
        futures.append(b.submit([f"t{i}"], "s"))
        time.sleep(0.02)
    for f in futures:
        f.result(5)
    time.sleep(0.3)
    b.submit(["late"], "s").result(5)
    assert [len(texts) for texts, _ in rec.calls] == [8, 1]
    b.close()


def test_max_batch_settings_and_a_large_job_alone() -> None:
    rec = Recorder()
    rec.gate.clear()  # hold the worker until everything is queued
    b: Batcher[str] = Batcher(rec, max_queue=100, max_batch=4, batch_wait_s=0.0)
    first = b.submit(["x"], "s")
    time.sleep(0.05)  # the worker holds "x"; the rest queue up behind it
    jobs = [b.submit(["a", "b", "c"], "s"), b.submit(["d"], "t"), b.submit(["e"], "s"),
            b.submit(list("fghijk"), "s"), b.submit(["l"], "t")]  # fmt: skip
    rec.gate.set()
    for f in [first, *jobs]:
        f.result(5)
    sizes = [(len(texts), s) for texts, s in rec.calls]
    assert sizes == [(1, "s"), (4, "s"), (2, "t"), (6, "s")]  # oldest first, settings apart
    assert all(len(t) <= 4 or len(t) == 6 for t, _ in rec.calls)
    b.close()


def test_full_queue_is_refused_and_counted() -> None:
    rec = Recorder()
    rec.gate.clear()
    b: Batcher[str] = Batcher(rec, max_queue=3, max_batch=1, batch_wait_s=0.0)
    held = b.submit(["x"], "s")
    time.sleep(0.05)  # taken by the worker: not waiting any more
    waiting = b.submit(["a", "b"], "s")
    assert b.queued == 2
    with pytest.raises(QueueFull, match="2 of 3 sentences waiting"):
        b.submit(["c", "d"], "s")
    b.submit(["c"], "s")
    assert b.stats.refused == 1
    rec.gate.set()
    assert held.result(5) == ["X/s"] and waiting.result(5) == ["A/s", "B/s"]
    b.close()


def test_a_failing_job_fails_alone() -> None:
    rec = Recorder()
    b: Batcher[str] = Batcher(rec, max_queue=100, max_batch=64, batch_wait_s=0.2)
    good, bad, other = b.submit(["a"], "s"), b.submit(["BAD"], "s"), b.submit(["b"], "s")
    assert good.result(5) == ["A/s"] and other.result(5) == ["B/s"]
    with pytest.raises(ValueError, match="bad text"):
        bad.result(5)
    assert b.stats.failed == 1
    b.close()


def test_cancelled_jobs_are_skipped() -> None:
    rec = Recorder()
    b: Batcher[str] = Batcher(rec, max_queue=100, max_batch=64, batch_wait_s=0.3)
    gone, kept = b.submit(["gone"], "s"), b.submit(["kept"], "s")
    assert gone.cancel()
    assert kept.result(5) == ["KEPT/s"]
    with pytest.raises(CancelledError):
        gone.result(0)
    assert rec.calls == [(["kept"], "s")]
    b.close()


def test_close_finishes_or_fails_the_queue() -> None:
    rec = Recorder()
    b: Batcher[str] = Batcher(rec, max_queue=100, max_batch=64, batch_wait_s=5.0)
    queued = b.submit(["a"], "s")
    b.close(finish=True, timeout=5)  # no waiting for others once closing
    assert queued.result(0) == ["A/s"]
    with pytest.raises(Closed):
        b.submit(["b"], "s")
    rec2 = Recorder()
    rec2.gate.clear()
    b2: Batcher[str] = Batcher(rec2, max_queue=100, max_batch=1, batch_wait_s=0.0)
    running = b2.submit(["r"], "s")
    time.sleep(0.05)
    dropped = b2.submit(["d"], "s")
    threading.Timer(0.2, rec2.gate.set).start()
    b2.close(finish=False, timeout=5)
    assert running.result(5) == ["R/s"]
    with pytest.raises(Closed):
        dropped.result(0)


def test_bad_limits() -> None:
    with pytest.raises(ValueError):
        Batcher(Recorder(), max_queue=0)


def test_parse_translate_fields() -> None:
    req = parse_translate({"q": ["a", "b"], "source": "en", "target": "de"}, 100, 10)
    assert req.texts == ["a", "b"] and req.batch and not req.html and req.alternatives == 0
    req = parse_translate(
        {"q": "a", "source": " en ", "target": "de", "format": "html", "alternatives": "2"}, 9, 1
    )
    assert req.texts == ["a"] and not req.batch and req.html and req.alternatives == 2
    assert req.source == "en"
    for fields, status, needle in [
        ({"source": "en", "target": "de"}, 400, "missing q"),
        ({"q": None, "source": "en", "target": "de"}, 400, "missing q"),
        ({"q": 3, "source": "en", "target": "de"}, 400, "got a number"),
        ({"q": ["a", None], "source": "en", "target": "de"}, 400, "got null"),
        ({"q": "a", "source": ["en"], "target": "de"}, 400, "source must be a string"),
        ({"q": "a", "source": "en", "target": "de", "alternatives": True}, 400, "boolean"),
        ({"q": "a", "source": "en", "target": "de", "alternatives": 1.5}, 400, "number"),
        ({"q": "a" * 101, "source": "en", "target": "de"}, 413, "101 characters"),
        ({"q": ["a"] * 11, "source": "en", "target": "de"}, 413, "11 texts"),
    ]:
        with pytest.raises(ApiError) as err:
            parse_translate(fields, 100, 10)
        assert err.value.status == status and needle in err.value.message, err.value.message


def test_bodies_and_forms() -> None:
    assert json_fields(b'{"q": "a"}') == {"q": "a"}
    for body, needle in [(b"{", "malformed JSON"), (b"[1]", "an array"), (b"\xff", "UTF-8")]:
        with pytest.raises(ApiError, match=needle):
            json_fields(body)
    assert form_fields([("q", "a"), ("source", "en"), ("q", "b"), ("q", "c")]) == {
        "q": ["a", "b", "c"],
        "source": "en",
    }
    assert ApiError(400, "two\nlines").message == "two lines"
