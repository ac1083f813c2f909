"""Dynamic batching: the texts of concurrent requests decoded together by one worker thread.

A request's texts are one :class:`Job`. :meth:`Batcher.submit` queues it (or refuses it with
:class:`QueueFull` when the queue would hold more than ``max_queue`` sentences) and returns a
:class:`concurrent.futures.Future`. The worker takes the oldest job and every later one with
the same decoding settings, up to ``max_batch`` sentences (a larger job goes alone). Before it
starts a batch that is not full it waits for others to join, until no job has arrived for
``batch_wait_s`` (counted from the oldest job's arrival or the end of the worker's last batch,
whichever is later), at most ``WAIT_CAP`` times that long: the clients it just answered come
back one after the other (without it, 16 clients split into two halves that take turns), a
lone request waits ``batch_wait_s``. It calls the translate function once for them all and
resolves each job's future with its own share of the results. When a batch fails, its jobs
are retried one by one, so a bad one fails alone. :meth:`Batcher.close` stops taking jobs,
finishes those queued (or fails them) and waits for the worker.

The worker is a thread of its own, or (``thread=False``) whichever thread calls
:meth:`Batcher.run`: ``nmt-serve`` decodes in its main thread, the one that loaded the model
(torch's OpenMP threads ran a search twice as slow when a second thread used them).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Result = TypeVar("Result")
WAIT_CAP = 10  # a batch waits at most this many batch_wait_s for jobs that keep arriving
# translate(texts, settings) -> one result per text, in order
TranslateFn = Callable[[list[str], Hashable], Sequence[Result]]


class QueueFull(Exception):
    """The queue cannot take the job now (HTTP 503)."""


class Closed(Exception):
    """The batcher is shutting down (HTTP 503)."""


@dataclass
class Job(Generic[Result]):
    """One request's texts, its decoding settings (jobs batch together only with equal
    settings) and the future its results go to."""

    texts: list[str]
    settings: Hashable
    future: Future[list[Result]] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Stats:
    """Counters since start: requests and sentences decoded, batches (calls of the translate
    function), the largest batch, failed requests."""

    requests: int = 0
    sentences: int = 0
    batches: int = 0
    largest_batch: int = 0
    failed: int = 0
    refused: int = 0  # QueueFull


class Batcher(Generic[Result]):
    """Queue plus worker thread (see the module docstring)."""

    def __init__(
        self,
        translate: TranslateFn[Result],
        max_queue: int = 256,
        max_batch: int = 64,
        batch_wait_s: float = 0.005,
        thread: bool = True,
    ) -> None:
        if max_queue < 1 or max_batch < 1 or batch_wait_s < 0:
            raise ValueError(
                f"max_queue={max_queue}, max_batch={max_batch} must be >= 1 and "
                f"batch_wait_s={batch_wait_s} >= 0"
            )
        self._translate = translate
        self.max_queue, self.max_batch, self.batch_wait_s = max_queue, max_batch, batch_wait_s
        self._jobs: deque[Job[Result]] = deque()
        self._queued = 0  # sentences in self._jobs
        self._cond = threading.Condition()
        self._closing = False
        self._free_since = 0.0  # when the worker finished its last batch
        self._last_arrival = 0.0
        self._done = threading.Event()
        self.stats = Stats()
        if thread:
            name = "nmt-serve-batcher"
            threading.Thread(target=self.run, name=name, daemon=True).start()

    @property
    def queued(self) -> int:
        """Sentences waiting (not yet taken by the worker)."""
        return self._queued

    def submit(self, texts: list[str], settings: Hashable) -> Future[list[Result]]:
        """Queue ``texts``; the future gets one result per text. Raises :class:`QueueFull`
        when the queue lacks room and :class:`Closed` after :meth:`close`."""
        job: Job[Result] = Job(list(texts), settings)
        with self._cond:
            if self._closing:
                raise Closed("the server is shutting down")
            if self._queued + len(job.texts) > self.max_queue:
                self.stats.refused += 1
                raise QueueFull(
                    f"the queue is full ({self._queued} of {self.max_queue} sentences waiting)"
                )
            self._jobs.append(job)
            self._queued += len(job.texts)
            self._last_arrival = job.arrived
            self._cond.notify_all()
        return job.future

    def close(self, finish: bool = True, timeout: float | None = None) -> None:
        """Take no more jobs; decode the queued ones (``finish``) or fail them with
        :class:`Closed`; wait for the worker to finish (up to ``timeout`` seconds)."""
        with self._cond:
            self._closing = True
            if not finish:
                while self._jobs:
                    job = self._jobs.popleft()
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(Closed("the server is shutting down"))
                self._queued = 0
            self._cond.notify_all()
        self._done.wait(timeout)

    def _take(self) -> list[Job[Result]] | None:
        """The next batch (None: closed and nothing left), after waiting for jobs to join."""
        with self._cond:
            while not self._jobs and not self._closing:
                self._cond.wait()
            if not self._jobs:
                return None
            start = max(self._jobs[0].arrived, self._free_since)
            cap = start + WAIT_CAP * self.batch_wait_s
            while self._queued < self.max_batch and not self._closing:
                quiet = max(start, self._last_arrival) + self.batch_wait_s
                left = min(quiet, cap) - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            first = self._jobs[0]
            taken: list[Job[Result]] = []
            count = 0
            for job in list(self._jobs):
                if job.settings != first.settings:
                    continue
                if taken and count + len(job.texts) > self.max_batch:
                    break
                taken.append(job)
                count += len(job.texts)
            for job in taken:
                self._jobs.remove(job)
            self._queued -= count
            return taken

    def run(self) -> None:
        """The worker's loop, in the calling thread; returns once closed and done."""
        try:
            while (batch := self._take()) is not None:
                live = [job for job in batch if job.future.set_running_or_notify_cancel()]
                if live:
                    self._decode(live)
                self._free_since = time.monotonic()
        finally:
            self._done.set()

    def _decode(self, jobs: list[Job[Result]]) -> None:
        """One call of the translate function for ``jobs``; each future gets its share."""
        texts = [t for job in jobs for t in job.texts]
        try:
            results = list(self._translate(texts, jobs[0].settings))
            if len(results) != len(texts):
                raise RuntimeError(f"{len(results)} results for {len(texts)} texts")
        except Exception as err:
            if len(jobs) > 1:  # retry one by one: only the job at fault fails
                for job in jobs:
                    self._decode([job])
                return
            self.stats.failed += 1
            jobs[0].future.set_exception(err)
            return
        self.stats.batches += 1
        self.stats.requests += len(jobs)
        self.stats.sentences += len(texts)
        self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
        start = 0
        for job in jobs:
            job.future.set_result(results[start : start + len(job.texts)])
            start += len(job.texts)
