"""Starting the worker processes of a one-machine job with torch's own launcher.

``launch(entry, *args, nproc=N)``:

* already a worker (``RANK`` and ``WORLD_SIZE`` set: started by ``torchrun`` or a test
  harness) - run ``entry(*args)`` here, as this rank;
* ``nproc == 1`` - run ``entry(*args)`` in this process (world size 1);
* else - start ``N`` workers through the elastic agent
  (``torch.distributed.launcher.api.elastic_launch``, c10d rendezvous on 127.0.0.1,
  no restarts) and return ``{rank: entry's return value}``.  A failed worker makes the
  agent stop the others; :class:`WorkerFailure` then names the rank(s) and exit codes.

``entry`` must be importable (a module-level function) because workers are spawned.  Inside
the workers, :func:`run_worker` turns any exception into one ``pipenmt: rank R failed:``
line on stderr (after the traceback) and a non-zero exit (2 for a ``PlacementError``),
without waiting on process-group teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from parallel.errors import PlacementError
from parallel.runtime.faults import report_failure, short_error
from parallel.runtime.loopback import register as register_loopback

T = TypeVar("T")


class WorkerFailure(RuntimeError):
    """One or more worker processes failed; the message names them."""


def in_worker() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_worker(entry: Callable[..., T], *args: Any) -> T:
    """Run ``entry`` as a worker; on any exception print one line and exit non-zero."""
    try:
        return entry(*args)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - a worker must never hang on teardown
        rank = os.environ.get("RANK", "?")
        traceback.print_exc()
        first = short_error(e, 400)
        report_failure(f"{type(e).__name__}: {first[:300]}")
        print(
            f"pipenmt: rank {rank} failed: {type(e).__name__}: {first}", file=sys.stderr, flush=True
        )
        sys.stdout.flush()
        os._exit(2 if isinstance(e, PlacementError) else 1)


def _elastic_entry(entry: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return run_worker(entry, *args)


def _describe_failures(failures: dict[int, Any]) -> str:
    parts = []
    for rank, f in sorted(failures.items()):
        code = int(getattr(f, "exitcode", 1))
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        pid = getattr(f, "pid", "?")
        parts.append(f"rank {rank} (pid {pid}) {how}")
    return "; ".join(parts)


def launch(
    entry: Callable[..., T],
    *args: Any,
    nproc: int,
    timeout_s: float = 120.0,
    threads_per_worker: int | None = None,
    start_method: str = "spawn",
) -> dict[int, T]:
    """Run ``entry(*args)`` on ``nproc`` ranks (see module docstring)."""
    if nproc < 1:
        raise PlacementError(f"nproc must be >= 1, got {nproc}", nproc=nproc)
    if in_worker():
        world = int(os.environ["WORLD_SIZE"])
        if world != nproc:
            raise PlacementError(
                f"started with WORLD_SIZE={world} but the configuration needs {nproc} processes "
                "(dp x pp)",
                world_size=world,
                nproc=nproc,
            )
        return {int(os.environ["RANK"]): run_worker(entry, *args)}
    if nproc == 1:
        return {0: entry(*args)}

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if threads_per_worker is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads_per_worker)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"pipenmt-{uuid.uuid4().hex[:8]}",
        rdzv_backend=register_loopback(),  # stores on 127.0.0.1 only
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        rdzv_configs={"timeout": max(int(timeout_s), 30)},
        max_restarts=0,
        monitor_interval=0.2,
        start_method=start_method,
        local_addr="127.0.0.1",
        shutdown_timeout=5,
    )
    try:
        values = elastic_launch(config, _elastic_entry)(entry, args)
    except ChildFailedError as e:
        raise WorkerFailure(f"worker failure: {_describe_failures(e.failures)}") from e
    return {int(k): v for k, v in values.items()}
