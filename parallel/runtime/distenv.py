"""Process-group set-up for data x pipeline parallelism (``DeviceMesh`` ``("dp", "pp")``).

:func:`init_distributed` is called once per worker process.  It reads torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
without it, it sets up a one-process group (world size 1) so the same code path runs
everywhere.  Global rank ``dp_rank * pp + pp_rank``; every process group (world, mesh
dimensions, tie subgroups) gets ``timeout_s``; gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import HashStore, PrefixStore, Store, TCPStore
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from parallel.errors import PlacementError
from parallel.runtime.faults import Heartbeat


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    dp: int
    pp: int
    dp_rank: int
    pp_rank: int
    device: torch.device
    backend: str
    timeout_s: float
    mesh: DeviceMesh | None = None
    pp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    monitor: Heartbeat | None = None
    owns_group: bool = True
    # gloo group over all ranks with a longer timeout, for phases where rank 0 works alone
    # (validation decoding, export) while the others wait
    phase_group: dist.ProcessGroup | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def global_rank(self, pp_rank: int, dp_rank: int | None = None) -> int:
        return (self.dp_rank if dp_rank is None else dp_rank) * self.pp + pp_rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Mark this rank done and tear down the process group (call on success)."""
        if self.monitor is not None:
            self.monitor.mark_done()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def external_store() -> bool:
    """Is the job's TCPStore hosted outside the workers (elastic agent / test harness)?"""
    return (
        os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        or os.environ.get("PIPENMT_STORE_EXTERNAL") == "1"
    )


_SOCKETS: list[socket.socket] = []  # listening sockets must outlive their stores


def _listen_on(host: str, port: int) -> dict[str, Any]:
    """For a loopback ``MASTER_ADDR`` (torchrun ``--master-addr 127.0.0.1``, one-machine jobs):
    ``TCPStore`` arguments that make its server listen on that address only (torch's own server
    listens on every interface, whatever host it is given); else no arguments."""
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        loopback = False
    if not loopback:
        return {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((socket.gethostbyname(host), port))
    sock.listen(128)
    _SOCKETS.append(sock)
    return {"master_listen_fd": sock.fileno()}


def pick_backend(backend: str, device: str | torch.device | None) -> tuple[str, str]:
    """(backend, device type) for ``backend`` in auto|gloo|nccl and ``device`` auto|cpu|cuda."""
    if device is None or device == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        dev = torch.device(device).type
    if backend == "auto":
        backend = "nccl" if dev == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise PlacementError(f"unknown backend {backend!r} (auto|gloo|nccl)", backend=backend)
    if backend == "nccl" and dev != "cuda":
        raise PlacementError("backend nccl needs device cuda", backend=backend, device=dev)
    return backend, dev


def _options(backend: str, timeout_s: float) -> Any:
    opts: Any
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
    else:
        opts = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
    opts._timeout = timedelta(seconds=timeout_s)
    return opts


def init_distributed(
    dp: int = 1,
    pp: int = 1,
    *,
    backend: str = "auto",
    device: str | torch.device | None = "auto",
    timeout_s: float = 120.0,
    heartbeat: bool = True,
    phase_timeout_s: float | None = None,
) -> DistContext:
    """Join (or create) the job's process group and build the ``("dp", "pp")`` mesh."""
    backend, dev_type = pick_backend(backend, device)
    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if dp < 1 or pp < 1 or dp * pp != world:
        raise PlacementError(
            f"dp x pp must equal the number of processes: dp={dp} pp={pp} world_size={world}",
            dp=dp,
            pp=pp,
            world_size=world,
        )
    if dev_type == "cuda":
        torch.cuda.set_device(local_rank % max(torch.cuda.device_count(), 1))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    timeout = timedelta(seconds=timeout_s)
    monitor: Heartbeat | None = None
    owns = not dist.is_initialized()
    if owns:
        if world == 1 and "MASTER_PORT" not in os.environ:
            store: Store = HashStore()
        else:
            host = os.environ.get("MASTER_ADDR", "127.0.0.1")
            port = _env_int("MASTER_PORT", 29500)
            is_master = rank == 0 and not external_store()
            tcp = TCPStore(
                host,
                port,
                world,
                is_master=is_master,
                timeout=timeout,
                wait_for_workers=False,
                **_listen_on(host, port) if is_master else {},
            )
            store = PrefixStore("pipenmt/pg/", tcp)
            if heartbeat and world > 1:
                monitor = Heartbeat(host, port, rank, world)
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world, timeout=timeout, **kwargs
        )
    opts = _options(backend, timeout_s)
    mesh = init_device_mesh(
        dev_type,
        (dp, pp),
        mesh_dim_names=("dp", "pp"),
        backend_override={"dp": (backend, opts), "pp": (backend, opts)},
    )
    phase = None
    if world > 1:
        span = timedelta(seconds=max(timeout_s, phase_timeout_s or timeout_s))
        phase = dist.new_group(list(range(world)), timeout=span, backend="gloo")
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        dp=dp,
        pp=pp,
        dp_rank=rank // pp,
        pp_rank=rank % pp,
        device=dev,
        backend=backend,
        timeout_s=timeout_s,
        mesh=mesh,
        pp_group=mesh["pp"].get_group(),
        dp_group=mesh["dp"].get_group(),
        monitor=monitor,
        owns_group=owns,
        phase_group=phase,
    )
