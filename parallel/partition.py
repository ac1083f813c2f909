"""The two definitions that placement (the runtime) and planning share: the min-max partition
of stage weights into consecutive runs (``contiguous``, ``balanced_cuts``) and GNMT's expert
rank assignment (``placement=gnmt``, the planner's ``gnmt_placement``)."""

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


def gnmt_ranks(n_enc: int, n_dec: int, pp: int) -> tuple[int, ...]:
    """Rank of each stage ``[Embed+Enc1, Enc2.., Dec1(+Attention), Dec2.., Generator]`` in
    GNMT's expert placement: encoder layer ``i`` and decoder layer ``i`` (0-based) on rank
    ``i * pp // layers`` (rank ``i`` when there are as many layers as ranks), the embedding
    with Enc1, the attention with Dec1, the generator with the last decoder layer."""
    if pp < 1 or n_enc < pp or n_dec < pp:
        raise PlacementError(
            f"gnmt placement needs at least pp layers on each side: enc={n_enc} dec={n_dec} "
            f"pp={pp}",
            n_enc=n_enc,
            n_dec=n_dec,
            pp=pp,
        )
    enc = [i * pp // n_enc for i in range(n_enc)]
    dec = [i * pp // n_dec for i in range(n_dec)]
    return (*enc, *dec, dec[-1])
