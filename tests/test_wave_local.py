"""The wavefront's chunk messages between the threads of one process
(:mod:`parallel.runtime.wave_local`): in sending order per message key, as float32 copies,
shape-checked; a receive that cannot complete ends in an error naming the message (its
sender failed, or the timeout passed) instead of blocking."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from parallel.runtime.wave import BWD, FWD
from parallel.runtime.wave_local import LocalWire, Mailbox, MailboxError

CPU = torch.device("cpu")


def wires(timeout_s: float = 5.0) -> tuple[LocalWire, LocalWire]:
    box = Mailbox(timeout_s)
    return LocalWire(CPU, rank=0, mailbox=box), LocalWire(CPU, rank=1, mailbox=box)


def test_messages_arrive_in_order_as_float32_copies() -> None:
    a, b = wires()
    x = torch.ones(2, 3, 4, dtype=torch.bfloat16)
    a.send([x], 1, FWD, 2, 0)
    a.send([x * 2], 1, FWD, 2, 0)  # the same key again: after the first, as c10d matches
    a.send([x * 3, x[:1]], 1, BWD, 2, 0)
    first = b.post([(2, 3, 4)], 0, FWD, 2, 0).wait()[0]
    second = b.post([(2, 3, 4)], 0, FWD, 2, 0).wait()[0]
    assert first.dtype == torch.float32 and torch.equal(first, torch.ones(2, 3, 4))
    assert torch.equal(second, 2 * first)
    grads = b.post([(2, 3, 4), (1, 3, 4)], 0, BWD, 2, 0).wait()
    assert [tuple(g.shape) for g in grads] == [(2, 3, 4), (1, 3, 4)]
    x.fill_(7)  # the sender's tensor changes later: the receiver holds its own copy
    assert torch.equal(first, torch.ones(2, 3, 4))


def test_a_receive_waits_for_its_send() -> None:
    a, b = wires()
    got: list[torch.Tensor] = []
    t = threading.Thread(target=lambda: got.extend(b.post([(3,)], 0, FWD, 1, 2).wait()))
    t.start()
    time.sleep(0.05)
    a.send([torch.arange(3.0)], 1, FWD, 1, 2)
    t.join(5)
    assert torch.equal(got[0], torch.arange(3.0))


def test_wrong_shape_is_named() -> None:
    a, b = wires()
    a.send([torch.zeros(4)], 1, FWD, 3, 1)
    with pytest.raises(MailboxError, match=r"shapes \[\(4,\)\], expected \[\(5,\)\]"):
        b.post([(5,)], 0, FWD, 3, 1).wait()


def test_a_failed_rank_wakes_the_waiting_one() -> None:
    a, b = wires(timeout_s=30.0)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            b.post([(1,)], 0, FWD, 1, 0).wait()
        except MailboxError as err:
            errors.append(err)

    t = threading.Thread(target=wait)
    start = time.monotonic()
    t.start()
    time.sleep(0.05)
    a.mailbox.fail("rank 0 failed: boom")
    t.join(5)
    assert time.monotonic() - start < 5
    assert len(errors) == 1 and "rank 0 failed: boom" in str(errors[0])


def test_a_receive_that_never_comes_times_out_naming_it() -> None:
    _, b = wires(timeout_s=0.2)
    with pytest.raises(MailboxError, match=r"rank 1 waited 0 s for message \(0, 1, 1, 4, 2\)"):
        b.post([(1,)], 0, BWD, 4, 2).wait()
