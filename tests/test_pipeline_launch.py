"""``parallel.runtime.launch.launch``: workers started through torch's elastic agent."""

from __future__ import annotations

import pytest

from parallel.runtime.launch import WorkerFailure, launch
from tests.pipeline_helpers import (
    launch_entry,
    launch_kill_entry,
    make_batch,
    make_stages,
    reference_step,
)

pytestmark = pytest.mark.timeout(240)


def test_launch_two_workers() -> None:
    losses = launch(launch_entry, 3, nproc=2, timeout_s=120)
    assert sorted(losses) == [0, 1]
    batch = make_batch(6, 5, 8, seed=3)
    ref, _ = reference_step(make_stages(seed=3), batch, batch.ntokens)
    assert losses[0] == pytest.approx(ref, rel=1e-5)
    assert losses[1] == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow
def test_launch_names_a_dead_worker() -> None:
    with pytest.raises(WorkerFailure, match=r"rank 1 \(pid \d+\) killed by SIGKILL"):
        launch(launch_kill_entry, 3, nproc=2, timeout_s=30)


def test_rank0_alone_waits_under_the_phase_timeout() -> None:
    """Rank 0 validates/exports alone for 5 s, beyond the 2 s collective timeout: the other
    rank waits on the phase group (its longer timeout) and the job goes on."""
    from tests.pipeline_helpers import phase_wait_entry

    assert launch(phase_wait_entry, 5.0, nproc=2, timeout_s=60) == {0: "decoded 2", 1: "decoded 2"}
