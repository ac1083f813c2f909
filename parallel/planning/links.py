"""The link model of the planners: a message between two ranks takes
``latency + bytes / bandwidth`` (sends are asynchronous, links do not contend; on one rank it
is free), and a ring all-reduce over ``n`` parties takes ``2 (n - 1)`` such steps of
``bytes / n``.  :class:`Link`, the presets and :func:`parse_link` (the ``--link`` syntax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from parallel.errors import PlacementError


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth_bytes_per_s: float
    latency_s: float

    def transfer_ms(self, nbytes: int) -> float:
        if nbytes <= 0:
            return 0.0
        return (self.latency_s + nbytes / self.bandwidth_bytes_per_s) * 1e3

    @property
    def spec(self) -> str:
        if self.name in LINK_PRESETS or self.name == "zero":
            return self.name
        return f"custom:{self.bandwidth_bytes_per_s / 1e9:g}:{self.latency_s * 1e6:g}"


LINK_PRESETS: dict[str, Link] = {
    "nvlink": Link("nvlink", 300e9, 5e-6),
    "pcie": Link("pcie", 25e9, 10e-6),
    "eth100": Link("eth100", 12.5e9, 30e-6),
}
ZERO_LINK = Link("zero", math.inf, 0.0)


def parse_link(spec: str) -> Link:
    """``nvlink`` | ``pcie`` | ``eth100`` | ``zero`` | ``custom:GB_PER_S:LATENCY_US``."""
    if spec in LINK_PRESETS:
        return LINK_PRESETS[spec]
    if spec == "zero":
        return ZERO_LINK
    parts = spec.split(":")
    if len(parts) == 3 and parts[0] == "custom":
        try:
            gbps, lat_us = float(parts[1]), float(parts[2])
        except ValueError:
            gbps = lat_us = -1.0
        if gbps > 0 and lat_us >= 0 and math.isfinite(gbps) and math.isfinite(lat_us):
            return Link(spec, gbps * 1e9, lat_us * 1e-6)
    raise PlacementError(
        f"bad link {spec!r}: use {', '.join(LINK_PRESETS)}, zero or custom:GB_PER_S:LATENCY_US"
    )


def allreduce_ms(link: Link, nbytes: int, parties: int) -> float:
    if parties < 2 or nbytes <= 0:
        return 0.0
    steps = 2 * (parties - 1)
    return (steps * link.latency_s + steps / parties * nbytes / link.bandwidth_bytes_per_s) * 1e3
