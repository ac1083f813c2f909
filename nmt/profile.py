"""``nmt-profile``: per-stage cost tables for the placement planner (not built yet)."""

from __future__ import annotations

from typing import Any

from nmt.errors import UserError


def profile_cli(cfg: Any) -> None:
    raise UserError(
        "nmt-profile is not built yet: the stage profiler lands with the placement planner"
    )
