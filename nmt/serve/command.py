"""``nmt-serve checkpoint=NAME|PATH [host=127.0.0.1] [port=5000] [api_key=...] [serve.KEY=...]``.

Loads the model once (decoding settings as ``nmt-translate``'s: the model's ``decode.yaml``
and ``decode.*``; threads ``train.threads``), binds the port (``port=0``: a free one; a
port in use is a one-line error, exit 2), prints one line ``nmt-serve: <model> (<pairs>,
<arithmetic>) on http://HOST:PORT/`` and serves :mod:`nmt.serve.app` with uvicorn until
SIGINT or SIGTERM: then it stops accepting connections, answers every request it has
taken (the batcher finishes its queue; after ``serve.request_timeout_s`` the rest are
failed), prints its counters and exits 0. uvicorn runs in a thread; the main thread, which
loaded the model, decodes (the batcher's worker): torch's OpenMP threads decoded twice as
slowly from a second thread once the first had used them.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from typing import Any

import torch

from nmt.config import AppConfig
from nmt.errors import UserError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def check_settings(cfg: AppConfig) -> None:
    """The server's settings; a bad one is a one-line user error."""
    if not cfg.checkpoint:
        raise UserError("checkpoint=PATH is required (a checkpoint file or a shipped model name)")
    if not 0 <= int(cfg.port) <= 65535:
        raise UserError(f"port={cfg.port}: must be between 0 (any free port) and 65535")
    s = cfg.serve
    for name, value in (
        ("max_queue", s.max_queue),
        ("max_chars", s.max_chars),
        ("max_batch", s.max_batch),
    ):
        if int(value) < 1:
            raise UserError(f"serve.{name}={value}: must be >= 1")
    if float(s.batch_wait_ms) < 0:
        raise UserError(f"serve.batch_wait_ms={s.batch_wait_ms}: must be >= 0")
    if float(s.request_timeout_s) <= 0:
        raise UserError(f"serve.request_timeout_s={s.request_timeout_s}: must be > 0")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when ``host`` has a colon). Made with
    ``IPPROTO_TCP`` and ``TCP_NODELAY``: asyncio disables Nagle's algorithm only on sockets
    whose protocol says TCP, and with it on, a response sent in two writes waited 40 ms for
    the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, OverflowError) as err:
        sock.close()
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise UserError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def serve(cfg: AppConfig) -> dict[str, Any]:
    """Run the server (see the module docstring); returns the batcher's counters."""
    check_settings(cfg)
    try:
        import uvicorn

        from nmt.serve.app import create_app, make_batcher
        from nmt.serve.server import Server
    except ImportError as err:
        raise UserError(
            f"nmt-serve needs the serve extra ({err.name} is missing): pip install 'pipenmt[serve]'"
        ) from None
    from nmt.machine.calibrate import announce
    from nmt.translator import Translator

    if int(cfg.train.threads):
        torch.set_num_threads(int(cfg.train.threads))
    translator = Translator(str(cfg.checkpoint), cfg.decode)
    announce(translator.arithmetic.choice)
    sock = bind(str(cfg.host), int(cfg.port))
    host, port = sock.getsockname()[:2]
    batcher = make_batcher(translator, cfg, thread=False)
    pairs = ", ".join(f"{d['code']}-{t}" for d in translator.languages() for t in d["targets"])
    shown = f"[{host}]" if ":" in str(host) else host

    def started() -> None:
        print(
            f"nmt-serve: {translator.name or cfg.checkpoint} ({pairs}, "
            f"{translator.arithmetic.name}) on http://{shown}:{port}/",
            file=sys.stderr,
            flush=True,
        )

    app = create_app(translator, cfg, batcher, translator.arithmetic.name, started)
    config = uvicorn.Config(
        app,
        host=str(host),
        port=int(port),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(cfg.serve.request_timeout_s) + 1,
    )
    server = Server(config)

    def http() -> None:  # uvicorn in a thread; its shutdown closes the batcher
        try:
            server.run(sockets=[sock])
        finally:
            batcher.close(finish=False, timeout=0)  # ends run() if uvicorn did not

    previous = {sig: signal.signal(sig, server.handle_exit) for sig in STOP_SIGNALS}
    thread = threading.Thread(target=http, name="nmt-serve-http", daemon=True)
    try:
        thread.start()
        batcher.run()  # decode here, in the thread that loaded the model
        while thread.is_alive():
            thread.join(0.1)  # a short wait: a signal stays deliverable
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    st = batcher.stats
    print(
        f"nmt-serve: stopped ({server.stopped_by or 'done'}): {st.requests} requests, "
        f"{st.sentences} sentences in {st.batches} batches, {st.refused} refused (queue full)",
        file=sys.stderr,
        flush=True,
    )
    return {"requests": st.requests, "sentences": st.sentences, "batches": st.batches}
