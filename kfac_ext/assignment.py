"""Which worker computes which eigendecomposition.

The problem is makespan scheduling on identical machines: tasks with costs
(predicted seconds) go to ``n_workers`` workers so that the slowest worker
finishes first. ``assign_work`` is the one entry point. This module holds the
pieces every solver shares (``check_costs``, ``makespan_lower_bound``,
``lpt_assignment``); the exact search lives in ``kfac_ext.placement.makespan``,
which builds on them. ``assign_work`` asks that search for an optimal
assignment when the module is present and otherwise, or when the solver gives up or returns
something worse, uses LPT (longest processing time first): sort the tasks by
decreasing cost and give each to the currently least loaded worker. LPT's
makespan is at most 4/3 of the optimum and, more usefully for tests, at most
the lower bound ``max(largest task, total / n_workers)`` plus the largest task.

The cost model (``eigen_cost``) is the time of one n x n symmetric
eigendecomposition (~ c * n^3 flops) plus the time to broadcast its result
(Q is n x n, d is n) to the workers that need it.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Callable, Sequence

__all__ = ["Assignment", "assign_work", "check_costs", "eigen_cost", "lpt_assignment",
           "makespan_lower_bound"]

# A symmetric eigendecomposition with eigenvectors costs about 9 n^3 flops
# (tridiagonal reduction 4/3 n^3, divide and conquer, back-transformation).
EIGH_FLOPS_PER_N3 = 9.0


@dataclasses.dataclass(frozen=True)
class Assignment:
    """``owner[i]`` is the worker that runs task i; ``loads[w]`` the summed cost on worker w."""

    owner: tuple[int, ...]
    loads: tuple[float, ...]
    method: str  # "lpt", "optimal" (proven by the solver) or "best-found" (solver timed out)

    @property
    def makespan(self) -> float:
        return max(self.loads) if self.loads else 0.0

    def tasks_of(self, worker: int) -> list[int]:
        return [i for i, w in enumerate(self.owner) if w == worker]


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


def eigen_cost(n: int, *, flops_per_s: float = 1e10, bytes_per_s: float = 12.5e9,
               element_bytes: int = 4, receivers: int = 1) -> float:
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


def _loads(costs: Sequence[float], owner: Sequence[int], n_workers: int) -> tuple[float, ...]:
    loads = [0.0] * n_workers
    for c, w in zip(costs, owner):
        loads[w] += c
    return tuple(loads)


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
    return Assignment(tuple(owner), _loads(costs, owner, n_workers), "lpt")


def _optimal_solver() -> Callable | None:
    try:
        from kfac_ext.placement import makespan  # written by the placement work
    except ImportError:
        return None
    return getattr(makespan, "optimal_makespan_assignment", None)


def _owner_from_solver_result(result, n_tasks: int) -> list[int]:
    """Accept a list of owners, or an object/dict carrying one (``owner``/``assignment``)."""
    for key in ("owner", "owners", "assignment"):
        if isinstance(result, dict) and key in result:
            result = result[key]
            break
        if hasattr(result, key):
            result = getattr(result, key)
            break
    if isinstance(result, tuple) and len(result) == 2 and not isinstance(result[0], int):
        result = result[0]  # (owners, makespan)
    owner = [int(w) for w in result]
    if len(owner) != n_tasks:
        raise ValueError("solver returned an assignment of the wrong length")
    return owner


def assign_work(costs: Sequence[float], n_workers: int, *, method: str = "auto",
                time_limit: float = 1.0) -> Assignment:
    """Assign tasks of the given costs to ``n_workers`` workers, minimising the makespan.

    method: "auto" (optimal solver when available, never worse than LPT),
    "optimal" (same, but an error if the solver is missing), or "lpt".
    The result is deterministic for given inputs, so every rank that calls this
    with the same costs gets the same assignment without communicating.
    """
    if method not in ("auto", "optimal", "lpt"):
        raise ValueError(f"assign_work: method must be 'auto', 'optimal' or 'lpt', got {method!r}")
    costs = check_costs(costs, n_workers)
    greedy = lpt_assignment(costs, n_workers)
    if method == "lpt" or n_workers == 1 or len(costs) <= 1:
        return greedy
    solver = _optimal_solver()
    if solver is None:
        if method == "optimal":
            raise RuntimeError("assign_work: method='optimal' needs kfac_ext.placement.makespan")
        return greedy
    try:
        result = solver(costs, n_workers, time_limit=time_limit)
        owner = _owner_from_solver_result(result, len(costs))
    except Exception:
        if method == "optimal":
            raise
        return greedy  # the greedy answer is always valid; a solver failure must not stop training
    if any(not 0 <= w < n_workers for w in owner):
        return greedy
    loads = _loads(costs, owner, n_workers)
    if max(loads) > greedy.makespan:
        return greedy
    # a solver stopped by its time limit returns its best assignment, not a proven optimum
    proven = getattr(result, "optimal", True)
    return Assignment(tuple(owner), loads, "optimal" if proven else "best-found")
