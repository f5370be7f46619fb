"""Assign independent tasks to identical workers, minimising the slowest worker.

This is the K-FAC work assignment (which worker eigendecomposes which
factor): P||C_max, strongly NP-hard in general, but the instances that occur
are small and highly repetitive -- ResNet-50 has 108 factors of only 13
distinct sizes -- so an exact search over *task types* (equal costs grouped)
finishes quickly:

1. lower bound ``max(largest task, sum / N)`` (``ceil`` when all costs are
   integers);
2. LPT (longest processing time first) plus a move/swap local search, which
   hits the lower bound on most instances and is then provably optimal;
3. otherwise a depth-first branch and bound that hands out whole types at a
   time (how many tasks of this size each worker receives), with symmetry
   breaking between workers of equal load, a capacity bound and memoised
   dead states, under a time limit.  When the time limit stops it the result
   is the best assignment found, ``optimal=False``, and ``lower_bound`` says
   how far from optimal it can be at most.
"""
from __future__ import annotations

from array import array
from bisect import bisect_left
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# One home for what every makespan solver shares (checks, bound, LPT): the
# K-FAC core's assignment module; re-exported here for the old import path.
from kfac_ext.assignment import check_costs, lpt_assignment, makespan_lower_bound

__all__ = ["MakespanResult", "optimal_makespan_assignment", "lpt_assignment"]


@dataclass
class MakespanResult:
    owner: list[int]        # owner[i] = worker of task i
    loads: list[float]      # loads[w] = sum of the costs of worker w's tasks
    makespan: float         # max(loads)
    lower_bound: float      # no assignment can have a smaller makespan
    optimal: bool           # makespan is proven minimal (up to float round-off)

    @property
    def gap(self) -> float:
        """Relative distance to the lower bound (0 when optimal or tight)."""
        if self.makespan <= 0:
            return 0.0
        return max(0.0, (self.makespan - self.lower_bound) / self.makespan)


def _loads(costs: list[float], owner: list[int], n_workers: int) -> list[float]:
    loads = [0.0] * n_workers
    for c, w in zip(costs, owner):
        loads[w] += c
    return loads


def _improve(costs: list[float], owner: list[int], n_workers: int, eps: float) -> list[int]:
    """Local search: move one task off the most loaded worker, or swap two tasks,
    while that lowers the larger of the two loads involved."""
    owner = list(owner)
    loads = _loads(costs, owner, n_workers)
    for _ in range(10 * len(costs) + 10):
        top = max(range(n_workers), key=loads.__getitem__)
        peak = loads[top]
        mine = [i for i, w in enumerate(owner) if w == top]
        best = None  # (new pair max, task, other worker, swapped task or None)
        for w in range(n_workers):
            if w == top:
                continue
            for i in mine:
                new_max = max(peak - costs[i], loads[w] + costs[i])
                if new_max < peak - eps and (best is None or new_max < best[0]):
                    best = (new_max, i, w, None)
            others = [j for j, o in enumerate(owner) if o == w]
            for i in mine:
                for j in others:
                    d = costs[i] - costs[j]
                    if d <= 0:
                        continue
                    new_max = max(peak - d, loads[w] + d)
                    if new_max < peak - eps and (best is None or new_max < best[0]):
                        best = (new_max, i, w, j)
        if best is None:
            break
        _, i, w, j = best
        owner[i] = w
        loads[top] -= costs[i]
        loads[w] += costs[i]
        if j is not None:
            owner[j] = top
            loads[w] -= costs[j]
            loads[top] += costs[j]
    return owner


def _sumsets(counts_costs: list[tuple[int, float]]) -> np.ndarray:
    """Sorted distinct sums  sum_j k_j c_j  over 0 <= k_j <= m_j."""
    sums = np.zeros(1)
    for m, c in counts_costs:
        sums = np.unique((sums[:, None] + np.arange(m + 1)[None, :] * c).ravel())
    return sums


def _reachable_sums(type_cost: list[float], type_count: list[int],
                    tail_limit: int = 2_000_000, head_limit: int = 100_000):
    """What one worker can still collect at level t (types t.. all unassigned):
    reach[t] = (head, tail) with every collectable sum equal to h + s for some h in
    head (types t..t0-1) and s in tail (types t0..), both sorted; None where the head
    would be too long to check quickly.  Split in two (meet in the middle) so that the
    check costs len(head) binary searches instead of listing len(head)*len(tail) sums."""
    n_types = len(type_cost)
    t0, size = n_types, 1
    while t0 > 0 and size * (type_count[t0 - 1] + 1) <= tail_limit:
        t0 -= 1
        size *= type_count[t0] + 1
    tail = _sumsets([(type_count[j], type_cost[j]) for j in range(t0, n_types)])
    reach: list = [None] * (n_types + 1)
    for t in range(n_types, -1, -1):
        if t >= t0:
            reach[t] = (np.zeros(1), tail if t == t0 else None)
        else:
            head = _sumsets([(type_count[j], type_cost[j]) for j in range(t, t0)])
            if len(head) > head_limit:
                break
            reach[t] = (head, tail)
    for t in range(t0 + 1, n_types + 1):  # tails of the levels below t0
        reach[t] = (np.zeros(1), _sumsets([(type_count[j], type_cost[j])
                                           for j in range(t, n_types)]))
    return reach, t0


def _can_reach(reach_t, lo: float, hi: float) -> bool:
    """Is some collectable sum inside [lo, hi]?"""
    head, tail = reach_t
    if len(head) == 1:  # the common case deep in the search: one scalar binary search
        h = float(head[0])
        i = int(tail.searchsorted(lo - h))
        return i < len(tail) and float(tail[i]) <= hi - h
    i = tail.searchsorted(lo - head)
    ok = i < len(tail)
    return bool(np.any(tail[np.minimum(i, len(tail) - 1)][ok] <= (hi - head)[ok]))


class _TimeUp(Exception):
    pass


def _type_search(type_cost: list[float], type_count: list[int], n_workers: int,
                 incumbent: float, lower_bound: float, eps: float, deadline: float):
    """Exact search for an assignment with makespan < incumbent.

    Branches type by type, largest first: how many tasks of this size each worker
    gets.  Workers are kept sorted by load so that equal loads are adjacent and get
    non-increasing counts (symmetry), failed states are memoised, and every worker
    must still be able to end in the narrow window [total - (N-1) cap, cap] with the
    tasks that remain (checked against the sorted list of collectable sums).
    Returns (best makespan, counts[type][worker] or None, finished)."""
    n_types = len(type_cost)
    suffix = [0.0] * (n_types + 1)
    for t in range(n_types - 1, -1, -1):
        suffix[t] = suffix[t + 1] + type_cost[t] * type_count[t]
    total = suffix[0]
    reach, _ = _reachable_sums(type_cost, type_count)
    # deep levels check one sorted list: bisect on an array.array beats numpy's
    # per-call overhead by ~5x in this hot loop
    flat = [array("d", r[1].tobytes()) if r is not None and len(r[0]) == 1 else None
            for r in reach]
    best = [incumbent, None]
    counts = [[0] * n_workers for _ in range(n_types)]  # counts[type][physical worker]
    dead: set = set()
    calls = [0]

    def tick():
        calls[0] += 1
        if calls[0] % 512 == 0 and time.perf_counter() > deadline:
            raise _TimeUp

    def record(final_loads):
        ms = max(final_loads)
        if ms < best[0] - eps:
            best[0], best[1] = ms, [list(row) for row in counts]

    def distribute(t, loads, w, left, cap, acc):
        # give worker w (and those after it) the remaining `left` tasks of type t
        c = type_cost[t]
        if w == n_workers:
            if left == 0:
                yield list(acc)
            return
        # workers with equal load are interchangeable: give non-increasing counts
        hi = left
        if w > 0 and loads[w] == loads[w - 1]:
            hi = min(hi, acc[w - 1])
        room = cap - loads[w]
        hi = min(hi, int(math.floor(room / c + 1e-12)) if c > 0 else left)
        # the workers after w must be able to absorb what w leaves
        rest_room = 0
        for v in range(w + 1, n_workers):
            rest_room += int(math.floor((cap - loads[v]) / c + 1e-12)) if c > 0 else left
        lo = max(0, left - rest_room)
        for k in range(hi, lo - 1, -1):
            acc.append(k)
            yield from distribute(t, loads, w + 1, left - k, cap, acc)
            acc.pop()

    def search(t, loads, ids):
        tick()
        cap = best[0] - eps  # only strictly better assignments are of interest
        # capacity bound: the remaining work must fit under the cap
        if sum(max(0.0, cap - x) for x in loads) < suffix[t] - eps:
            return False
        # window bound: every worker ends in [total - (N-1) cap, cap], so each must be
        # able to reach that window with some sub-multiset of the remaining tasks
        if reach[t] is not None:
            low = total - (n_workers - 1) * cap
            sums = flat[t]
            for x in loads:
                if sums is not None:
                    i = bisect_left(sums, low - x - eps)
                    if i == len(sums) or sums[i] > cap - x + eps:
                        return False
                elif not _can_reach(reach[t], low - x - eps, cap - x + eps):
                    return False
        if t == n_types:
            record(loads)
            return best[0] <= lower_bound + eps
        # a state that failed once fails forever: the cap only ever decreases
        key = (t, tuple(loads))
        if key in dead:
            return False
        for split in distribute(t, loads, 0, type_count[t], cap, []):
            for pos, k in enumerate(split):
                counts[t][ids[pos]] = k
            new = [x + k * type_cost[t] for x, k in zip(loads, split)]
            # keep workers sorted by load (descending) so that equal loads are adjacent
            order = sorted(range(n_workers), key=lambda v: -new[v])
            if search(t + 1, [new[v] for v in order], [ids[v] for v in order]):
                return True
        dead.add(key)
        return False

    finished = True
    try:
        search(0, [0.0] * n_workers, list(range(n_workers)))
    except _TimeUp:
        finished = False
    return best[0], best[1], finished


def optimal_makespan_assignment(costs: Sequence[float], n_workers: int,
                                time_limit: float = 1.0) -> MakespanResult:
    """Assign tasks (costs[i] >= 0) to ``n_workers`` identical workers so that the
    largest per-worker sum is minimal.  Exact when the search finishes within
    ``time_limit`` seconds (``optimal=True``); otherwise the best assignment
    found (LPT + local search at least, so within 4/3 of optimal) and a lower bound.
    """
    start = time.perf_counter()
    costs = check_costs(costs, n_workers, "optimal_makespan_assignment")
    if time_limit < 0 or not math.isfinite(time_limit):
        raise ValueError(f"time_limit must be finite and >= 0, got {time_limit!r}")
    n = len(costs)
    lb = makespan_lower_bound(costs, n_workers)
    if n == 0:
        return MakespanResult([], [0.0] * n_workers, 0.0, 0.0, True)
    eps = 1e-12 * max(1.0, math.fsum(costs))
    owner = _improve(costs, list(lpt_assignment(costs, n_workers).owner), n_workers, eps)
    loads = _loads(costs, owner, n_workers)
    makespan = max(loads)
    if makespan <= lb + eps:
        return MakespanResult(owner, loads, makespan, lb, True)

    # group equal costs into types, largest first
    by_cost: dict[float, list[int]] = {}
    for i, c in enumerate(costs):
        by_cost.setdefault(c, []).append(i)
    type_cost = sorted(by_cost, reverse=True)
    type_count = [len(by_cost[c]) for c in type_cost]
    deadline = start + time_limit
    best, levels, finished = _type_search(type_cost, type_count, n_workers,
                                          makespan, lb, eps, deadline)
    if levels is not None:
        counts = levels
        owner = [0] * n
        for t, c in enumerate(type_cost):
            tasks = iter(by_cost[c])
            for w in range(n_workers):
                for _ in range(counts[t][w]):
                    owner[next(tasks)] = w
        loads = _loads(costs, owner, n_workers)
        makespan = max(loads)
    if finished:
        lb = max(lb, makespan)  # the search proved nothing better exists
    return MakespanResult(owner, loads, makespan, lb, finished or makespan <= lb + eps)
