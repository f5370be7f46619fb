r"""Exact throughput (max-load) placement over contiguous splits: ``ideal_dp``.

The model this solves exactly
-----------------------------
* Devices: ``k`` accelerators (memory cap each) and ``l`` CPUs (no cap).
* Load of an accelerator: accelerator time of its nodes + ``out_cost`` of
  every distinct node whose output crosses into or out of its node set.
  Load of a CPU: CPU time of its nodes (CPUs work in host memory; the
  transfer is paid by the accelerator on the other side, as in the paper's
  model and the authors' tools). Nodes with ``accel_ok`` false go on CPUs.
  Objective: minimise the largest load (the pipeline's time per sample).
* Colour classes are never split. The placement is built from *units*
  (:meth:`Graph.contiguity_units`): colour classes (an uncoloured node is
  its own class), ordered by the edges into forward nodes; a backward-only
  class takes the mirror image of its backward edges; units on a cycle of
  that order are fused. In an inference graph the order is the graph
  itself; in a training graph it is the forward pass, and every backward
  node rides with its forward colour mates.
* Contiguous split: a chain of ideals (down-sets of the unit order)
  ``{} = I_0 ⊂ I_1 ⊂ ... ⊂ I_m = all`` with device ``t`` holding
  ``I_t \\ I_(t-1)``; equivalently, a partition of the units into at most
  ``k + l`` device sets whose quotient order is acyclic. Both CPUs and
  accelerators are stages of that chain, in any order (the paper's DP over
  ``(ideal, accelerators used, CPUs used)``). Devices may stay empty.

The returned value is the true optimum of that model; the loads in the
returned ``Solution`` are recomputed from the graph by
:func:`objective.throughput_loads`, independently of the C++ solver.

How it scales (csrc/placement/ideal_dp.cpp): breadth-first enumeration of
the ideals as bitsets (after fusing zero-cost units that hang off a single
neighbour, which is exact and keeps GNMT's ideals at 17,914 instead of
over a million); then DP passes restricted to device sets of load at most
``T``. A pass finishes ideals in size order; a finished ideal ``I'`` whose
states are finite *and* whose remaining work can still fit the remaining
devices (a bound from sums alone) walks up the lattice over supersets ``I``
with compute(``I \\ I'``) <= ``T`` (and memory <= cap), pruning as soon as
the compute time -- which only grows -- exceeds ``T``, with the transfer
cost maintained incrementally along the walk. Most ideals cannot lie on a
chain of loads <= T and start no walk at all. ``T`` rises geometrically
from a lower bound and is capped by a known contiguous split (PipeDream's
chain optimum by default); the first pass that reaches the full ideal is
exact, because every device set of an optimal split has load <= OPT <= T.

Limits (DPLimitError names the one hit and suggests --method milp|greedy):
the lattice may not exceed ``max_ideals`` nor ``max_memory_bytes`` of solver
state (an estimate per ideal: bitset, sums, hash slot, the DP's
(k+1)(l+1) states); a graph whose unit order has a level of w side-by-side
units has at least 2**w ideals and is refused before enumerating; the whole
solve stops at ``time_limit`` seconds; devices beyond the number of units
cannot hold work and are dropped, and at most 4096 (k+1)(l+1) states are kept.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

from .graph import Graph
from .objective import Placement, PlacementError, Solution, throughput_loads


class InfeasibleError(PlacementError):
    """No split of the requested kind fits the devices."""


class DPLimitError(PlacementError):
    """The DP stopped at one of its limits (ideal count, memory, time) before
    the optimum; the message names the limit and what to do instead."""


#: Defaults of the DP's limits: every bundled throughput workload solves far
#: inside them (the largest needs well under 100 MiB and a few seconds).
MAX_IDEALS = 4_000_000
MAX_MEMORY_BYTES = float(1 << 30)
TIME_LIMIT = 600.0  # seconds; None lifts it (`kfac-ext place` passes its --time-limit)
ADVICE = (
    "the exact DP does not fit this graph: use --method milp (any split, HiGHS) or "
    "--method greedy, or raise the limit (--time-limit, --dp-memory-mb)"
)
MAX_STATES = 4096


@dataclass
class UnitProblem:
    """The graph reduced to units, in the form the C++ solver takes."""

    num_units: int
    unit_nodes: list[list[int]]  # node ids per unit, file order
    unit_edges: list[tuple[int, int]]
    accel_time: list[float]
    cpu_time: list[float]
    size: list[float]
    accel_ok: list[bool]
    comm_nodes: list[tuple[int, float, list[int]]]  # (unit, out_cost, distinct successor units)

    @classmethod
    def from_graph(cls, graph: Graph, chain: bool = False, merge: bool = True) -> UnitProblem:
        unit_of, unit_edges = graph.contiguity_units()
        if merge:
            unit_of, unit_edges = _merge_dominated_units(graph, unit_of, unit_edges)
        U = max(unit_of.values()) + 1
        unit_nodes: list[list[int]] = [[] for _ in range(U)]
        for n in graph.nodes:
            unit_nodes[unit_of[n.id]].append(n.id)
        nodes = [[graph.node(i) for i in members] for members in unit_nodes]
        comm = []
        for n in graph.nodes:
            if n.out_cost <= 0:
                continue
            succ = sorted({unit_of[v] for v in graph.successors(n.id)} - {unit_of[n.id]})
            if succ:  # an output read only inside its own unit never crosses a device
                comm.append((unit_of[n.id], n.out_cost, succ))
        problem = cls(
            U,
            unit_nodes,
            list(unit_edges),
            [sum(x.accel_time for x in ns) for ns in nodes],
            [sum(x.cpu_time for x in ns) for ns in nodes],
            [sum(x.size for x in ns) for ns in nodes],
            [all(x.accel_ok for x in ns) for ns in nodes],
            comm,
        )
        return problem.as_chain() if chain else problem

    def as_chain(self) -> UnitProblem:
        """PipeDream's restriction: only prefixes of one topological order of the units."""
        chain = {(u, u + 1) for u in range(self.num_units - 1)}
        return dataclasses.replace(self, unit_edges=sorted(set(self.unit_edges) | chain))

    def lower_bound(self, k: int, l: int, cap: float) -> float:
        """A max load no split can beat: the heaviest unit on its best
        device, and the fractional work split over all devices."""
        per_unit = 0.0
        for a, c, s, ok in zip(self.accel_time, self.cpu_time, self.size, self.accel_ok):
            best = min(a if (ok and k > 0 and s <= cap) else math.inf, c if l > 0 else math.inf)
            per_unit = max(per_unit, best)
        return max(per_unit, _fractional_bound(self, k, l))


def _merge_dominated_units(graph: Graph, unit_of: dict[int, int], unit_edges: list[tuple[int, int]]):
    """Fuse each free unit X into its only neighbour Y; exact.

    X qualifies when its nodes take no time on either device kind, can run
    on an accelerator, touch (by data and by order) no unit but Y, and its
    memory cannot matter (size 0, or the whole graph fits one accelerator).
    Then moving X onto Y's device never raises a load (X's outputs and
    inputs stop crossing; nothing else changes) and keeps the split
    contiguous, so some optimal split already has X with Y. Such units
    (zero-cost sinks and sources hanging off a layer, e.g. GNMT's) would
    otherwise multiply the number of ideals by 2 each.
    """
    U = max(unit_of.values()) + 1
    time = [0.0] * U
    size = [0.0] * U
    ok = [True] * U
    for n in graph.nodes:
        u = unit_of[n.id]
        time[u] += n.accel_time + n.cpu_time
        size[u] += n.size
        ok[u] = ok[u] and n.accel_ok
    memory_free = sum(size) <= graph.memory_cap
    neighbours: list[set[int]] = [set() for _ in range(U)]
    pairs = [(unit_of[s], unit_of[d]) for s, d in graph.edges] + list(unit_edges)
    for a, b in pairs:
        if a != b:
            neighbours[a].add(b)
            neighbours[b].add(a)
    parent = list(range(U))

    def find(u):
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    changed = True
    while changed:
        changed = False
        for x in range(U):
            if find(x) != x or len(neighbours[x]) != 1:
                continue
            if time[x] != 0.0 or not ok[x] or not (size[x] == 0.0 or memory_free):
                continue
            (y,) = neighbours[x]
            parent[x] = y
            neighbours[y].discard(x)
            neighbours[y] |= neighbours[x] - {y}
            size[y] += size[x]
            neighbours[x] = set()
            changed = True
    roots = sorted({find(u) for u in range(U)})  # old numbering is topological; keep its order
    renumber = {r: i for i, r in enumerate(roots)}
    new_unit_of = {i: renumber[find(u)] for i, u in unit_of.items()}
    new_edges = sorted({(renumber[find(a)], renumber[find(b)]) for a, b in unit_edges if find(a) != find(b)})
    return new_unit_of, new_edges


def _fractional_bound(p: UnitProblem, k: int, l: int) -> float:
    """min T with a fractional assignment: accel work <= kT, CPU work <= lT."""
    forced_cpu = sum(c for c, ok in zip(p.cpu_time, p.accel_ok) if not ok)
    movable = sorted(
        ((a, c) for a, c, ok in zip(p.accel_time, p.cpu_time, p.accel_ok) if ok),
        key=lambda ac: -(ac[0] / ac[1]) if ac[1] > 0 else -math.inf,
    )
    total_acc = sum(a for a, _ in movable)
    if l == 0:
        return total_acc / k if k else math.inf
    if k == 0:
        return (forced_cpu + sum(c for _, c in movable)) / l

    def feasible(T: float) -> bool:
        budget = l * T - forced_cpu
        if budget < 0:
            return False
        acc_left = total_acc
        for a, c in movable:  # best accel-time saved per CPU time first
            if c <= budget:
                budget -= c
                acc_left -= a
            else:
                acc_left -= a * budget / c
                break
        return acc_left <= k * T * (1 + 1e-12)

    lo, hi = 0.0, max(total_acc / k, forced_cpu / l) + 1e-300
    while not feasible(hi):
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return lo


def device_counts(graph: Graph, problem: UnitProblem) -> tuple[int, int]:
    """(k, l) as the DP sees them: never more devices of a kind than units,
    since a split puts each unit on one device (so the optimum is the same);
    raises DPLimitError when the DP's per-ideal states would still be too many."""
    k = min(graph.num_accelerators, problem.num_units)
    l = min(graph.num_cpus, problem.num_units)
    if (k + 1) * (l + 1) > MAX_STATES:
        raise DPLimitError(
            f"the DP keeps (accelerators+1)*(CPUs+1) = {(k + 1) * (l + 1)} states per ideal "
            f"(k={k}, l={l} after capping at {problem.num_units} units), over its limit of "
            f"{MAX_STATES}; use --method milp or --method greedy"
        )
    return k, l


def run_ideal_dp(
    graph: Graph,
    problem: UnitProblem,
    *,
    lower_bound: float | None = None,
    upper_bound: float | None = None,
    max_ideals: int = MAX_IDEALS,
    max_memory_bytes: float = MAX_MEMORY_BYTES,
    time_limit: float | None = None,
    started: float | None = None,
) -> dict:
    """Call the C++ solver on a unit problem; returns its raw dict. Raises
    DPLimitError when the lattice, the memory or the time would exceed the
    limits; ``time_limit`` counts from ``started`` (a ``time.perf_counter()``
    reading; default now)."""
    from . import _dp

    k, l = device_counts(graph, problem)
    lb = problem.lower_bound(k, l, graph.memory_cap)
    if lower_bound is not None:
        lb = max(lb, lower_bound)
    ub = 1e300 if upper_bound is None or not math.isfinite(upper_bound) else float(upper_bound)
    cap = graph.memory_cap if math.isfinite(graph.memory_cap) else 1e300
    limit = math.inf if time_limit is None else float(time_limit)
    if not limit > 0 or not max_memory_bytes > 0:
        raise ValueError(f"time_limit and max_memory_bytes must be positive, got {time_limit!r}, {max_memory_bytes!r}")
    used = 0.0 if started is None else time.perf_counter() - started
    try:
        raw = _dp.solve(
            problem.num_units,
            problem.unit_edges,
            problem.accel_time,
            problem.cpu_time,
            problem.size,
            problem.accel_ok,
            problem.comm_nodes,
            k,
            l,
            cap,
            lb,
            ub,
            int(max_ideals),
            max_memory_bytes=float(max_memory_bytes),
            time_limit=limit,
            time_used=used,
        )
    except _dp.LimitExceeded as e:
        raise DPLimitError(f"{e}; {ADVICE}") from None
    except (ValueError, OverflowError) as e:  # std::invalid_argument
        raise InfeasibleError(str(e)) from None
    raw["lower_bound_used"] = lb
    raw["upper_bound_used"] = None if ub >= 1e300 else ub
    return raw


def placement_from_devices(graph: Graph, problem: UnitProblem, devices: list[dict]) -> tuple[Placement, list]:
    """Placement (padded to k accelerators and l CPUs, at most one per unit) and
    the pipeline order."""
    accel, cpus, order = [], [], []
    for d in devices:
        nodes = [i for u in d["units"] for i in problem.unit_nodes[u]]
        if d["is_cpu"]:
            order.append(("cpu", len(cpus)))
            cpus.append(nodes)
        else:
            order.append(("accel", len(accel)))
            accel.append(nodes)
    k, l = (min(n, problem.num_units) for n in (graph.num_accelerators, graph.num_cpus))
    accel += [[] for _ in range(k - len(accel))]
    cpus += [[] for _ in range(l - len(cpus))]
    return Placement(accel, cpus), order


def solve_contiguous(
    graph: Graph,
    *,
    chain: bool = False,
    method: str | None = None,
    upper_bound: float | None = None,
    validate: bool = True,
    max_ideals: int = MAX_IDEALS,
    max_memory_bytes: float = MAX_MEMORY_BYTES,
    time_limit: float | None = TIME_LIMIT,
    started: float | None = None,
    problem: UnitProblem | None = None,
) -> Solution:
    """Optimal contiguous split (``chain=True``: over one topological order of
    the units only, i.e. PipeDream's chain DP). Raises InfeasibleError, or
    DPLimitError past the limits (``time_limit`` in seconds from ``started``,
    None: none). ``problem``: the graph's UnitProblem, if already built."""
    t0 = time.perf_counter()
    if validate:
        graph.validate()
    if problem is None:
        problem = UnitProblem.from_graph(graph)
    if chain:
        problem = problem.as_chain()
    raw = run_ideal_dp(
        graph,
        problem,
        upper_bound=upper_bound,
        max_ideals=max_ideals,
        max_memory_bytes=max_memory_bytes,
        time_limit=time_limit,
        started=t0 if started is None else started,
    )
    if not raw["feasible"]:
        raise InfeasibleError(raw["message"] or "no contiguous split fits the devices")
    placement, order = placement_from_devices(graph, problem, raw["devices"])
    value, acc, cpu = throughput_loads(graph, placement)
    if not math.isclose(value, raw["value"], rel_tol=1e-9, abs_tol=1e-9):
        raise RuntimeError(f"DP value {raw['value']} disagrees with the recomputed max load {value}")
    stats = {
        k: raw[k]
        for k in (
            "ideals",
            "ideal_links",
            "pairs_visited",
            "pairs_examined",
            "enumerate_seconds",
            "lower_bound_used",
            "upper_bound_used",
        )
    }
    stats.update(
        units=problem.num_units,
        passes=raw["passes"],
        solver_seconds=raw["seconds"],
        pipeline=[f"{kind}{i}" for kind, i in order],
    )
    return Solution(
        placement,
        "throughput",
        method or ("pipedream" if chain else "dp"),
        value,
        optimal=not chain,
        lower_bound=value if not chain else raw["lower_bound_used"],
        solve_seconds=time.perf_counter() - t0,
        stats=stats,
        accel_loads=acc,
        cpu_loads=cpu,
    )


def ideal_dp(
    graph: Graph,
    *,
    upper_bound: float | None = None,
    validate: bool = True,
    max_ideals: int = MAX_IDEALS,
    max_memory_bytes: float = MAX_MEMORY_BYTES,
    time_limit: float | None = TIME_LIMIT,
) -> Solution:
    """The exact contiguous optimum. Unless an ``upper_bound`` is given, the
    PipeDream chain optimum (a contiguous split, cheap to find) caps the
    threshold search. Bounded: raises DPLimitError (naming the limit) when the
    ideals exceed ``max_ideals`` or ``max_memory_bytes`` of solver state, or
    the whole solve exceeds ``time_limit`` seconds."""
    t0 = time.perf_counter()
    if validate:
        graph.validate()
    limits = {
        "max_ideals": max_ideals,
        "max_memory_bytes": max_memory_bytes,
        "time_limit": time_limit,
        "started": t0,
        "problem": UnitProblem.from_graph(graph),
        "validate": False,
    }
    if upper_bound is None:
        try:
            upper_bound = solve_contiguous(graph, chain=True, **limits).value
        except InfeasibleError:
            upper_bound = None  # the chain may not fit where a general split does
    sol = solve_contiguous(graph, upper_bound=upper_bound, **limits)
    sol.solve_seconds = time.perf_counter() - t0
    return sol


__all__ = ["DPLimitError", "InfeasibleError", "UnitProblem", "ideal_dp", "solve_contiguous"]
