"""How the argparse commands (``nmt-export``, ``nmt-average``, ``nmt-tune-decode``, ``nmt-plot``)
run: with the allocator settings of every entry point (:mod:`nmt.machine.hostmem`) and the
error contract of the Hydra commands in :mod:`nmt.cli`: a user error or an unusable file is one
line ``<command>: error: ...`` and exit status 2, an interrupt 130, a closed pipe 141."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from nmt.errors import user_error_types


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The command's argument parser, described by its module docstring's first paragraph
    without the command's name (``nmt-x: does y.`` -> ``does y.``)."""
    first = " ".join((doc or "").split("\n\n")[0].split())
    return argparse.ArgumentParser(prog=name, description=first.partition(": ")[2] or first)


def run_tool(name: str, body: Callable[[], int]) -> int:
    """``body()``'s exit status; the errors above become one line on stderr."""
    from nmt.machine import hostmem

    hostmem.tune()
    try:
        return body()
    except user_error_types() as err:
        print(f"{name}: error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nmt-... | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # an unreadable input, an unwritable folder, a full disk
        where = f": {err.filename}" if err.filename else ""
        print(f"{name}: error: {err.strerror or err}{where}", file=sys.stderr)
    return 2
