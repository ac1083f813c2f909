"""The min-max partition of a sequence of stage weights into consecutive runs: the one
definition that placement (``contiguous``) and planning (``balanced_cuts``) share."""

from __future__ import annotations

from collections.abc import Sequence

from parallel.errors import PlacementError


def balanced_runs(weights: Sequence[float], parts: int) -> list[int]:
    """Sizes of ``parts`` consecutive runs of ``weights`` minimising the heaviest run."""
    n = len(weights)
    if not 1 <= parts <= n:
        raise PlacementError(
            f"cannot cut {n} stages into {parts} runs (more ranks than stages?)",
            n_stages=n,
            parts=parts,
        )
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + float(w))
    inf = float("inf")
    # best[k][i]: minimal max-run weight for the first i stages in k runs
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    sizes: list[int] = []
    i = n
    for k in range(parts, 0, -1):
        j = cut[k][i]
        sizes.append(i - j)
        i = j
    return sizes[::-1]
