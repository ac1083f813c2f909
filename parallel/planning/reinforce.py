"""The learned placer (Mirhoseini et al., 2017): REINFORCE over stage -> device assignments
with the pipeline simulator as its environment.

A softmax policy per stage over devices; each sampled placement runs with the ``greedy``
dataflow executor and, where torch's schedules can run it, with those; reward = minus the best
step time relative to one device, with a moving-average baseline. Plan files only hold
torch-runnable results (``ReinforceResult.best_runnable``). Compare with ``plan.search``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from parallel.errors import PlacementError
from parallel.planning.costs import CostTable
from parallel.planning.links import Link
from parallel.planning.plan import (
    Candidate,
    SearchSpace,
    evaluate,
    fits,
    schedule_combos,
    single_device_ms,
)
from parallel.schedules import group_virtual_stages


@dataclass(frozen=True)
class ReinforceResult:
    best: Candidate | None  # any executor (``greedy`` included)
    best_runnable: Candidate | None  # a torch schedule: what a plan file can hold
    history: tuple[float, ...]  # best step time found after each iteration
    samples: int


def reinforce(
    tables: Sequence[CostTable],
    num_ranks: int,
    link: Link,
    microbatches: int,
    *,
    iterations: int = 100,
    batch: int = 32,
    lr: float = 2.0,
    seed: int = 0,
    memory_limit_bytes: int | None = None,
    dp: int = 1,
) -> ReinforceResult:
    """REINFORCE over stage -> device assignments; the environment runs a sample with the
    best of the ``greedy`` executor and the torch schedules that can run it."""
    n, k = tables[0].num_stages, num_ranks
    rng = np.random.default_rng(seed)
    logits = np.zeros((n, k))
    ref = single_device_ms(tables, link)
    cache: dict[tuple[int, ...], list[Candidate]] = {}
    limit = memory_limit_bytes
    best: Candidate | None = None
    runnable: Candidate | None = None
    baseline: float | None = None
    history = []
    for _ in range(iterations):
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        cum = np.cumsum(p, axis=1)
        acts = (rng.random((batch, n, 1)) > cum[None, :, :-1]).sum(axis=2)
        rewards = np.empty(batch)
        for i, a in enumerate(acts):
            key = tuple(int(x) for x in a)
            if key not in cache:
                cache[key] = _environment(tables, key, microbatches, link, k, limit, dp)
            found = cache[key]
            rewards[i] = -found[0].step_ms / ref if found else -2.0
            for c in found:
                if best is None or c.step_ms < best.step_ms:
                    best = c
                if c.schedule != "greedy" and (runnable is None or c.step_ms < runnable.step_ms):
                    runnable = c
        mean = float(rewards.mean())
        baseline = mean if baseline is None else 0.9 * baseline + 0.1 * mean
        adv = rewards - baseline
        adv /= float(rewards.std()) + 1e-8
        grad = -p * adv.sum()
        for i, a in enumerate(acts):
            grad[np.arange(n), a] += adv[i]
        logits += lr * grad / batch
        history.append(best.step_ms if best else math.inf)
    return ReinforceResult(best, runnable, tuple(history), len(cache))


def _environment(
    tables: Sequence[CostTable],
    placement: tuple[int, ...],
    m: int,
    link: Link,
    k: int,
    limit: int | None,
    dp: int,
) -> list[Candidate]:
    """Feasible executions of one sampled placement, fastest first."""
    space = SearchSpace(microbatches=(m,), memory_limit_bytes=limit, dp=dp)
    found = [evaluate(tables, placement, "greedy", m, link, k, dp=dp)]
    try:
        v = len(group_virtual_stages(placement, k)) // k
    except PlacementError:
        v = 0
    if v:
        found += [evaluate(tables, placement, sched, m, link, k, recompute=rc, dp=dp)
                  for sched, _, rc in schedule_combos(tables, k, v, space)]  # fmt: skip
    return sorted((c for c in found if fits(c, space)), key=lambda c: c.step_ms)
