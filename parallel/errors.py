"""User-facing errors of the ``parallel`` package (the CLI prints one line and exits 2)."""

from __future__ import annotations


class PlacementError(ValueError):
    """A placement/schedule/micro-batch combination that cannot run.

    ``values`` carries the offending settings (e.g. ``{"balance": [3, 2], "n_stages": 9}``).
    """

    def __init__(self, message: str, **values: object) -> None:
        super().__init__(message)
        self.values: dict[str, object] = dict(values)
