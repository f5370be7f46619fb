"""Which worker computes which eigendecomposition: the K-FAC work assignment.

The problem is makespan scheduling on identical machines (P||C_max): tasks
with costs (predicted seconds) go to ``n_workers`` workers so that the slowest
worker finishes first. Everything about it lives in this module:

- the cost model: ``eigen_cost``, the time of one n x n symmetric
  eigendecomposition (~ 9 n^3 flops) plus the broadcast of its result (Q is
  n x n, d is n) to the workers that need it;
- the result, one type for every solver: ``Assignment``;
- ``lpt_assignment``: longest processing time first (sort by decreasing cost,
  give each task to the least loaded worker), at most 4/3 of the optimum;
- ``optimal_makespan_assignment``: the exact search, public for callers that
  want the solver itself (the scaling model does);
- ``assign_work``: the one entry the preconditioner calls (``method="auto"``
  is the exact search, ``"lpt"`` the greedy rule).

P||C_max is strongly NP-hard, but the instances K-FAC produces are small and
repetitive (ResNet-50 has 108 factors of 13 distinct sizes), so the exact
search finishes quickly:

1. lower bound ``max(largest task, sum / N)`` (``ceil`` when all costs are
   integers);
2. LPT plus a move/swap local search, which meets the bound on most instances
   and is then provably optimal;
3. otherwise a depth-first branch and bound that hands out whole *types*
   (equal costs) at a time -- how many tasks of this size each worker gets --
   with symmetry breaking between workers of equal load, a capacity bound and
   memoised dead states, under a time limit. Stopped by the limit, it returns
   the best assignment found (``method="best-found"``) with a ``lower_bound``
   that says how far from optimal it can be at most.

The module imports nothing else of kfac_ext; ``kfac_ext.placement`` (device
placement of operator graphs) is a separate engine and does not take part.
"""

from __future__ import annotations

import heapq
import math
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Assignment",
    "assign_work",
    "check_costs",
    "eigen_cost",
    "lpt_assignment",
    "makespan_lower_bound",
    "optimal_makespan_assignment",
]

# A symmetric eigendecomposition with eigenvectors costs about 9 n^3 flops
# (tridiagonal reduction 4/3 n^3, divide and conquer, back-transformation).
EIGH_FLOPS_PER_N3 = 9.0


@dataclass(frozen=True)
class Assignment:
    """``owner[i]`` is the worker that runs task i; ``loads[w]`` the summed cost on worker w.

    ``method`` says how it was found: "lpt" (the greedy rule), "optimal" (the
    makespan is proven minimal, up to float round-off) or "best-found" (the
    exact search ran out of time). ``lower_bound``: no assignment of these
    tasks has a smaller makespan.
    """

    owner: tuple[int, ...]
    loads: tuple[float, ...]
    lower_bound: float
    method: str

    @property
    def makespan(self) -> float:
        return max(self.loads) if self.loads else 0.0

    @property
    def optimal(self) -> bool:
        return self.method == "optimal"

    @property
    def gap(self) -> float:
        """Relative distance to the lower bound (0 when optimal or tight)."""
        if self.makespan <= 0:
            return 0.0
        return max(0.0, (self.makespan - self.lower_bound) / self.makespan)

    def tasks_of(self, worker: int) -> list[int]:
        return [i for i, w in enumerate(self.owner) if w == worker]


def eigen_cost(
    n: int, *, flops_per_s: float = 1e10, bytes_per_s: float = 12.5e9, element_bytes: int = 4, receivers: int = 1
) -> float:
    """Predicted seconds to eigendecompose an n x n factor and broadcast (Q, d).

    Defaults: 10 GFLOP/s for LAPACK's eigh on a few cores, 100 Gb/s links.
    ``receivers == 0`` drops the broadcast term (the owner is the only user).
    """
    compute = EIGH_FLOPS_PER_N3 * float(n) ** 3 / flops_per_s
    comm = (n * n + n) * element_bytes / bytes_per_s if receivers > 0 else 0.0
    return compute + comm


def check_costs(costs: Sequence[float], n_workers: int, caller: str = "assign_work") -> list[float]:
    """The costs as floats; ValueError naming ``caller`` and the bad argument."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"{caller}: n_workers must be a positive int, got {n_workers!r}")
    out = []
    for i, c in enumerate(costs):
        try:
            c = float(c)
        except (TypeError, ValueError):
            raise ValueError(f"{caller}: costs[{i}] must be a number, got {c!r}") from None
        if not math.isfinite(c) or c < 0:
            raise ValueError(f"{caller}: costs[{i}] must be finite and >= 0, got {c!r}")
        out.append(c)
    return out


def makespan_lower_bound(costs: Sequence[float], n_workers: int) -> float:
    """No assignment can beat the largest task or a perfectly even split
    (rounded up when every cost is an integer: loads are integers then)."""
    costs = [float(c) for c in costs]
    if not costs:
        return 0.0
    if all(c.is_integer() for c in costs):  # exact ceiling in Python ints
        share = float(-(-sum(int(c) for c in costs) // n_workers))
    else:
        share = math.fsum(costs) / n_workers
    return max(max(costs), share)


def _loads(costs: Sequence[float], owner: Sequence[int], n_workers: int) -> list[float]:
    loads = [0.0] * n_workers
    for c, w in zip(costs, owner):
        loads[w] += c
    return loads


def _result(costs: list[float], owner: Sequence[int], n_workers: int, lower_bound: float, method: str) -> Assignment:
    return Assignment(tuple(owner), tuple(_loads(costs, owner, n_workers)), lower_bound, method)


def lpt_assignment(costs: Sequence[float], n_workers: int) -> Assignment:
    """Longest processing time first; ties go to the lowest worker id (deterministic)."""
    costs = check_costs(costs, n_workers, "lpt_assignment")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    heap = [(0.0, w) for w in range(n_workers)]  # (load, worker): least loaded pops first
    owner = [0] * len(costs)
    for i in order:
        load, w = heapq.heappop(heap)
        owner[i] = w
        heapq.heappush(heap, (load + costs[i], w))
    return _result(costs, owner, n_workers, makespan_lower_bound(costs, n_workers), "lpt")


# ---- the exact search (optimal_makespan_assignment's steps 2 and 3) ----


def _improve(costs: list[float], owner: list[int], n_workers: int, eps: float) -> list[int]:
    """Local search: move one task off the most loaded worker, or swap two tasks,
    while that lowers the larger of the two loads involved."""
    owner = list(owner)
    loads = _loads(costs, owner, n_workers)
    for _ in range(10 * len(costs) + 10):
        top = max(range(n_workers), key=loads.__getitem__)
        peak = loads[top]
        mine = [i for i, w in enumerate(owner) if w == top]
        best: tuple[float, int, int, int | None] | None = None  # (new pair max, task, other worker, swapped task)
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
        _, i, w, swapped = best
        owner[i] = w
        loads[top] -= costs[i]
        loads[w] += costs[i]
        if swapped is not None:
            owner[swapped] = top
            loads[w] -= costs[swapped]
            loads[top] += costs[swapped]
    return owner


def _sumsets(counts_costs: list[tuple[int, float]]) -> np.ndarray:
    """Sorted distinct sums  sum_j k_j c_j  over 0 <= k_j <= m_j."""
    sums = np.zeros(1)
    for m, c in counts_costs:
        sums = np.unique((sums[:, None] + np.arange(m + 1)[None, :] * c).ravel())
    return sums


# reach[t]: (head, tail) sorted sums, or None where the head is too long to check
_Reach = list[tuple[np.ndarray, np.ndarray] | None]


def _reachable_sums(
    type_cost: list[float], type_count: list[int], tail_limit: int = 2_000_000, head_limit: int = 100_000
) -> tuple[_Reach, int]:
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
        reach[t] = (np.zeros(1), _sumsets([(type_count[j], type_cost[j]) for j in range(t, n_types)]))
    return reach, t0


def _can_reach(reach_t: tuple[np.ndarray, np.ndarray], lo: float, hi: float) -> bool:
    """Is some collectable sum inside [lo, hi]?"""
    head, tail = reach_t
    if len(head) == 1:  # the common case deep in the search: one scalar binary search
        h = float(head[0])
        i = int(tail.searchsorted(lo - h))
        return i < len(tail) and float(tail[i]) <= hi - h
    at = tail.searchsorted(lo - head)
    ok = at < len(tail)
    return bool(np.any(tail[np.minimum(at, len(tail) - 1)][ok] <= (hi - head)[ok]))


class _TimeUpError(Exception):
    pass


def _type_search(
    type_cost: list[float],
    type_count: list[int],
    n_workers: int,
    incumbent: float,
    lower_bound: float,
    eps: float,
    deadline: float,
) -> tuple[float, list[list[int]] | None, bool]:
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
    flat = [array("d", r[1].tobytes()) if r is not None and len(r[0]) == 1 else None for r in reach]
    best_makespan = [incumbent]
    best_counts: list[list[list[int]] | None] = [None]
    counts = [[0] * n_workers for _ in range(n_types)]  # counts[type][physical worker]
    dead: set[tuple[int, tuple[float, ...]]] = set()
    calls = [0]

    def tick() -> None:
        calls[0] += 1
        if calls[0] % 512 == 0 and time.perf_counter() > deadline:
            raise _TimeUpError

    def record(final_loads: list[float]) -> None:
        ms = max(final_loads)
        if ms < best_makespan[0] - eps:
            best_makespan[0], best_counts[0] = ms, [list(row) for row in counts]

    def distribute(t: int, loads: list[float], w: int, left: int, cap: float, acc: list[int]) -> Iterator[list[int]]:
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

    def search(t: int, loads: list[float], ids: list[int]) -> bool:
        tick()
        cap = best_makespan[0] - eps  # only strictly better assignments are of interest
        # capacity bound: the remaining work must fit under the cap
        if sum(max(0.0, cap - x) for x in loads) < suffix[t] - eps:
            return False
        # window bound: every worker ends in [total - (N-1) cap, cap], so each must be
        # able to reach that window with some sub-multiset of the remaining tasks
        reach_t = reach[t]
        if reach_t is not None:
            low = total - (n_workers - 1) * cap
            sums = flat[t]
            for x in loads:
                if sums is not None:
                    i = bisect_left(sums, low - x - eps)
                    if i == len(sums) or sums[i] > cap - x + eps:
                        return False
                elif not _can_reach(reach_t, low - x - eps, cap - x + eps):
                    return False
        if t == n_types:
            record(loads)
            return best_makespan[0] <= lower_bound + eps
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
    except _TimeUpError:
        finished = False
    return best_makespan[0], best_counts[0], finished


def optimal_makespan_assignment(costs: Sequence[float], n_workers: int, time_limit: float = 1.0) -> Assignment:
    """Assign tasks (costs[i] >= 0) to ``n_workers`` identical workers so that the
    largest per-worker sum is minimal.

    Exact when the search finishes within ``time_limit`` seconds
    (``method="optimal"``); otherwise the best assignment found
    (``"best-found"``: LPT plus local search at least, so within 4/3 of the
    optimum) and a lower bound.
    """
    start = time.perf_counter()
    costs = check_costs(costs, n_workers, "optimal_makespan_assignment")
    _check_time_limit(time_limit, "optimal_makespan_assignment")
    n = len(costs)
    lb = makespan_lower_bound(costs, n_workers)
    if n == 0:
        return _result(costs, [], n_workers, 0.0, "optimal")
    eps = 1e-12 * max(1.0, math.fsum(costs))
    owner = _improve(costs, list(lpt_assignment(costs, n_workers).owner), n_workers, eps)
    makespan = max(_loads(costs, owner, n_workers))
    if makespan <= lb + eps:
        return _result(costs, owner, n_workers, lb, "optimal")

    # group equal costs into types, largest first
    by_cost: dict[float, list[int]] = {}
    for i, c in enumerate(costs):
        by_cost.setdefault(c, []).append(i)
    type_cost = sorted(by_cost, reverse=True)
    type_count = [len(by_cost[c]) for c in type_cost]
    deadline = start + time_limit
    _, counts, finished = _type_search(type_cost, type_count, n_workers, makespan, lb, eps, deadline)
    if counts is not None:
        owner = [0] * n
        for t, c in enumerate(type_cost):
            tasks = iter(by_cost[c])
            for w in range(n_workers):
                for _ in range(counts[t][w]):
                    owner[next(tasks)] = w
        makespan = max(_loads(costs, owner, n_workers))
    if finished:
        lb = max(lb, makespan)  # the search proved nothing better exists
    proven = finished or makespan <= lb + eps
    return _result(costs, owner, n_workers, lb, "optimal" if proven else "best-found")


def _check_time_limit(time_limit: float, caller: str) -> None:
    if (
        isinstance(time_limit, bool)
        or not isinstance(time_limit, (int, float))
        or time_limit < 0
        or not math.isfinite(time_limit)
    ):
        raise ValueError(f"{caller}: time_limit must be a finite number >= 0, got {time_limit!r}")


def assign_work(costs: Sequence[float], n_workers: int, *, method: str = "auto", time_limit: float = 1.0) -> Assignment:
    """Assign tasks of the given costs to ``n_workers`` workers, minimising the makespan.

    method: "auto" (the exact search of ``optimal_makespan_assignment``, never
    worse than LPT: it starts from LPT's answer) or "lpt".
    The result is deterministic for given inputs when the search finishes within
    ``time_limit`` seconds, so every rank that calls this with the same costs
    gets the same assignment without communicating.
    """
    if method not in ("auto", "lpt"):
        raise ValueError(f"assign_work: method must be 'auto' or 'lpt', got {method!r}")
    costs = check_costs(costs, n_workers)
    _check_time_limit(time_limit, "assign_work")
    if method == "lpt" or n_workers == 1 or len(costs) <= 1:
        return lpt_assignment(costs, n_workers)
    return optimal_makespan_assignment(costs, n_workers, time_limit=time_limit)
