"""pipenmt: model-parallel GNMT. ``from nmt import Translator`` is the Python API
(:mod:`nmt.decode.translator`)."""

from __future__ import annotations

from typing import Any

__all__ = ["Translator"]


def __getattr__(name: str) -> Any:
    """``nmt.Translator`` imported on first use (``import nmt`` stays light)."""
    if name == "Translator":
        from nmt.decode.translator import Translator

        return Translator
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")
