"""A rendezvous for one-machine jobs whose stores listen on 127.0.0.1 only.

torch's c10d rendezvous creates its ``TCPStore`` servers (the rendezvous store and the workers'
bootstrap store) listening on every interface, whatever host it is given. Here both are created
on a socket we bind to 127.0.0.1 first (``TCPStore(master_listen_fd=...)``), so a local
pipelined run opens no port that another machine can reach. Registered as the rendezvous
backend ``pipenmt-local`` (used by :func:`parallel.runtime.launch.launch`).
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import registry
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
    DynamicRendezvousHandler,
    create_handler,
)

BACKEND = "pipenmt-local"
_SOCKETS: list[socket.socket] = []  # listening sockets must outlive their stores


def loopback_store(timeout_s: float = 60.0) -> Any:
    """A TCPStore server listening on 127.0.0.1 (a free port) only."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    _SOCKETS.append(sock)
    port = int(sock.getsockname()[1])
    return dist.TCPStore(  # type: ignore[attr-defined]
        "127.0.0.1",
        port,
        is_master=True,
        multi_tenant=True,
        master_listen_fd=sock.fileno(),
        timeout=timedelta(seconds=timeout_s),
    )


class _LoopbackHandler(DynamicRendezvousHandler):
    """torch's dynamic rendezvous, with the workers' bootstrap store on loopback too."""

    timeout_s = 60.0

    def _create_tcp_store_server(self, master_addr: Any, master_port: Any) -> Any:
        return loopback_store(self.timeout_s)

    def get_backend(self) -> str:
        return BACKEND  # torch checks it against the requested backend name


def _create_handler(params: Any) -> Any:
    timeout = float(params.get_as_int("read_timeout", 60) or 60)
    store = loopback_store(timeout)
    handler = create_handler(store, C10dRendezvousBackend(store, params.run_id), params)
    handler.__class__ = _LoopbackHandler
    assert isinstance(handler, _LoopbackHandler)
    handler.timeout_s = timeout
    return handler


def register() -> str:
    """Register the ``pipenmt-local`` rendezvous backend (idempotent); returns its name."""
    registry.handler_registry.register(BACKEND, _create_handler)  # type: ignore[attr-defined]
    return BACKEND
