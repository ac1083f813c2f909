"""uvicorn's server with a clean stop: SIGINT or SIGTERM stop it gracefully (no new
connections, requests in progress answered, the application's shutdown run) and are not
raised again afterwards, so that ``nmt-serve`` exits 0; a second SIGINT forces the exit."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn


class Server(uvicorn.Server):
    """:class:`uvicorn.Server` that remembers the signal that stopped it (``stopped_by``)
    instead of raising it again once it has shut down (uvicorn does, for an exit status
    130/143)."""

    stopped_by = ""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopped_by = signal.Signals(sig).name
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
