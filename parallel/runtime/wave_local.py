"""The wavefront's chunk messages between the threads of one process.

:class:`LocalWire` is :class:`parallel.runtime.wave.Wire` for ranks that are threads of one
process (``parallel.wave_threads``): a message is a list of tensors handed over through a
:class:`Mailbox` keyed like a c10d tag (sender, receiver, kind, boundary, chunk), instead of
``isend`` / ``irecv``. The tensors are float32 copies, as on the wire between processes, so
a receiver never shares memory with the sender's graph. A receive waits at most
``timeout_s``; when one rank fails, :meth:`Mailbox.fail` wakes every waiting rank with an
error instead of leaving it blocked.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from parallel.runtime.wave import Pending, Wire

Key = tuple[int, int, int, int, int]  # (sender, receiver, kind, boundary, chunk)


class MailboxError(RuntimeError):
    """A receive that cannot complete: its sender failed, or it waited past the timeout."""


class Mailbox:
    """Messages in flight between the ranks of one process."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._letters: dict[Key, deque[list[Tensor]]] = {}  # in sending order, as c10d
        self._cond = threading.Condition()
        self._failed: str | None = None

    def put(self, key: Key, tensors: list[Tensor]) -> None:
        with self._cond:
            self._letters.setdefault(key, deque()).append(tensors)
            self._cond.notify_all()

    def take(self, key: Key) -> list[Tensor]:
        """Wait for message ``key`` and remove it."""
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while not self._letters.get(key):
                if self._failed is not None:
                    raise MailboxError(f"rank {key[1]} stops: {self._failed}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MailboxError(
                        f"rank {key[1]} waited {self.timeout_s:.0f} s for message {key} from "
                        f"rank {key[0]} (parallel.timeout_s)"
                    )
                self._cond.wait(left)
            return self._letters[key].popleft()

    def fail(self, why: str) -> None:
        """Wake every waiting receive with an error (a rank failed)."""
        with self._cond:
            self._failed = self._failed or why
            self._cond.notify_all()

    def unreceived(self) -> list[Key]:
        """Keys of the messages sent but not received."""
        with self._cond:
            return [k for k, q in self._letters.items() if q]

    def clear(self) -> None:
        """Forget the messages and the failure (between steps)."""
        with self._cond:
            self._letters.clear()
            self._failed = None


@dataclass
class Letter(Pending):
    """A posted receive of one message from the mailbox."""

    mailbox: Mailbox | None = None
    key: Key = (0, 0, 0, 0, 0)
    shapes: Sequence[tuple[int, ...]] = ()
    received: bool = False

    def wait(self) -> list[Tensor]:
        if not self.received:
            assert self.mailbox is not None
            got = self.mailbox.take(self.key)
            if [tuple(t.shape) for t in got] != [tuple(s) for s in self.shapes]:
                raise MailboxError(
                    f"message {self.key}: shapes {[tuple(t.shape) for t in got]}, expected "
                    f"{[tuple(s) for s in self.shapes]}"
                )
            self.buffers, self.received = got, True
        return self.buffers


@dataclass
class LocalWire(Wire):
    """:class:`Wire` of rank ``rank`` among the threads of one process."""

    rank: int = 0
    mailbox: Mailbox = field(default_factory=lambda: Mailbox(120.0))

    def send(self, tensors: Sequence[Tensor], dst: int, kind: int, boundary: int, c: int) -> None:
        copies = [t.detach().to(torch.float32, copy=True) for t in tensors]
        self.mailbox.put((self.rank, dst, kind, boundary, c), copies)

    def post(
        self, shapes: Sequence[tuple[int, ...]], src: int, kind: int, boundary: int, c: int
    ) -> Pending:
        return Letter([], [], self.mailbox, (src, self.rank, kind, boundary, c), shapes)

    def flush(self) -> None:
        """Nothing to wait for: a message is delivered when it is sent."""
