"""Non-contiguous placement as mixed-integer programs, solved with HiGHS (``highspy``).

``solve_milp(graph, time_limit=...)`` minimises the max load (throughput).

The placement part: one binary ``x[g, d]`` per
colocation group ``g`` (a colour class, or an uncoloured node) and device
``d`` (accelerators, then CPUs), ``sum_d x[g, d] = 1``; accelerators only for
groups whose nodes all run there; ``sum_g size_g x[g, a] <= cap`` per
accelerator.  Devices of one kind are interchangeable, so the program only
admits labellings where device ``a`` holds a group only if device ``a - 1``
holds an earlier one (prefix sums ``p[g, a]``; a warm start is relabelled the
same way).  No contiguity is required: any split the model allows is searched.

Throughput (same model as objective.throughput_loads): ``c[v, a] >= x[g(v), a]
- x[g(w), a]`` and ``c[v, a] >= x[g(w), a] - x[g(v), a]`` for every consumer
``w`` of ``v`` in another group -- ``c[v, a]`` = "v's output crosses into or
out of accelerator a", one variable per distinct node and accelerator, so the
transfer is paid once however many edges carry it.  Accelerator load
``sum t_g x[g, a] + sum out_cost_v c[v, a] <= M``, CPU load ``sum cpu_g x[g, c]
<= M``; minimise ``M``.

Warm start: the contiguous DP optimum (kfac_ext.placement.dp), or a
placement the caller passes; HiGHS gets it through ``setSolution`` and the
answer, re-scored from the graph alone (throughput_loads), is never worse.
Latency is not here: it is the paper's IP and exact search in
``kfac_ext.placement.latency``.
"""

from __future__ import annotations

import math
import time

import highspy

from .graph import Graph
from .highs import Program
from .objective import Placement, PlacementError, Solution, check_placement, throughput_loads

__all__ = ["solve_milp", "MilpError"]


class MilpError(PlacementError):
    """The program could not be built or solved (the message says why)."""


def _device_list(graph: Graph) -> list[tuple[str, int]]:
    return [("accel", a) for a in range(graph.num_accelerators)] + [("cpu", c) for c in range(graph.num_cpus)]


def _canonical(placement: Placement, groups: list[list[int]], graph: Graph) -> Placement:
    """Relabel devices of each kind by their first group, empty devices last
    (the labelling the symmetry-breaking rows admit); pad to k accelerators / l CPUs."""
    group_index = {i: g for g, members in enumerate(groups) for i in members}

    def order(devices, count):
        used = sorted((d for d in devices if d), key=lambda d: min(group_index[i] for i in d))
        return [list(d) for d in used] + [[] for _ in range(count - len(used))]

    return Placement(order(placement.accelerators, graph.num_accelerators), order(placement.cpus, graph.num_cpus))


class _PlacementVars:
    """The placement part of both programs: x[g, d], memory, symmetry."""

    def __init__(self, prog: Program, graph: Graph):
        self.graph = graph
        self.groups = graph.colocation_groups()
        self.group_of = {i: g for g, members in enumerate(self.groups) for i in members}
        self.devices = _device_list(graph)
        if not self.devices:
            raise MilpError("no devices: need at least one accelerator or CPU")
        G, k = len(self.groups), graph.num_accelerators
        self.x = [[0] * len(self.devices) for _ in range(G)]
        for g, members in enumerate(self.groups):
            nodes = [graph.node(i) for i in members]
            size = sum(n.size for n in nodes)
            accel_ok = all(n.accel_ok for n in nodes) and size <= graph.memory_cap * (1 + 1e-12)
            for d, (kind, _) in enumerate(self.devices):
                hi = 1.0 if (kind == "cpu" or accel_ok) else 0.0
                self.x[g][d] = prog.var(0.0, hi, integer=True)
            prog.row({self.x[g][d]: 1.0 for d in range(len(self.devices))}, 1.0, 1.0)
            if not any(kind == "cpu" or accel_ok for kind, _ in self.devices):
                raise MilpError(f"{nodes[0].describe()} fits on no device (CPU-only or too big, and there are no CPUs)")
        cap = graph.memory_cap
        if cap > 0:
            for a in range(k):
                sizes = {self.x[g][a]: sum(graph.node(i).size for i in m) / cap for g, m in enumerate(self.groups)}
                prog.row(sizes, hi=1.0 + 1e-9)
        # symmetry: device d (d > first of its kind) holds group g only if device d-1
        # holds one of the groups before g.  p[g][d] = sum_{g' <= g} x[g'][d].
        self.p = [[None] * len(self.devices) for _ in range(G)]
        first_of_kind = {0, k}
        for d in range(len(self.devices)):
            if d + 1 < len(self.devices) and (d + 1) not in first_of_kind:  # needed for d+1
                for g in range(G):
                    self.p[g][d] = prog.var(0.0, float(G))
                    terms = {self.p[g][d]: 1.0, self.x[g][d]: -1.0}
                    if g > 0:
                        terms[self.p[g - 1][d]] = -1.0
                    prog.row(terms, 0.0, 0.0)
            if d not in first_of_kind:
                for g in range(G):
                    terms = {self.x[g][d]: 1.0}
                    if g > 0:
                        terms[self.p[g - 1][d - 1]] = -1.0
                    prog.row(terms, hi=0.0)

    def start_values(self, placement: Placement, start: list[float]) -> None:
        where = placement.device_of()
        index = {dev: d for d, dev in enumerate(self.devices)}
        G = len(self.groups)
        for g, members in enumerate(self.groups):
            d0 = index[where[members[0]]]
            for d in range(len(self.devices)):
                start[self.x[g][d]] = 1.0 if d == d0 else 0.0
        for d in range(len(self.devices)):
            total = 0.0
            for g in range(G):
                total += start[self.x[g][d]]
                if self.p[g][d] is not None:
                    start[self.p[g][d]] = total

    def placement(self, values: list[float]) -> Placement:
        acc = [[] for _ in range(self.graph.num_accelerators)]
        cpus = [[] for _ in range(self.graph.num_cpus)]
        for g, members in enumerate(self.groups):
            d = max(range(len(self.devices)), key=lambda d: values[self.x[g][d]])
            kind, j = self.devices[d]
            (acc if kind == "accel" else cpus)[j].extend(members)
        return Placement(acc, cpus)


def _throughput_program(graph: Graph):
    prog = Program()
    place = _PlacementVars(prog, graph)
    k = graph.num_accelerators
    m = prog.var(0.0, math.inf, cost=1.0)
    crossing = {}  # (node, accel) -> var
    for v in graph.nodes:
        gv = place.group_of[v.id]
        other = sorted({place.group_of[w] for w in graph.successors(v.id)} - {gv})
        if v.out_cost <= 0 or not other:
            continue
        for a in range(k):
            c = crossing[v.id, a] = prog.var(0.0, 1.0)
            for gw in other:
                prog.row({c: 1.0, place.x[gv][a]: -1.0, place.x[gw][a]: 1.0}, lo=0.0)
                prog.row({c: 1.0, place.x[gv][a]: 1.0, place.x[gw][a]: -1.0}, lo=0.0)
    for d, (kind, j) in enumerate(place.devices):
        terms: dict[int, float] = {m: -1.0}
        for g, members in enumerate(place.groups):
            t = sum(graph.node(i).accel_time if kind == "accel" else graph.node(i).cpu_time for i in members)
            terms[place.x[g][d]] = t
        if kind == "accel":
            for (v, a), c in crossing.items():
                if a == j:
                    terms[c] = graph.node(v).out_cost
        prog.row(terms, hi=0.0)

    def start(placement: Placement) -> list[float]:
        values = [0.0] * len(prog.lower)
        place.start_values(placement, values)
        where = placement.device_of()
        for (v, a), c in crossing.items():
            inside = where[v] == ("accel", a)
            values[c] = float(any((where[w] == ("accel", a)) != inside for w in graph.successors(v)))
        values[m] = throughput_loads(graph, placement, check_memory=False)[0]
        return values

    return prog, place, start


def _default_warm_start(graph: Graph) -> Placement | None:
    from .dp import ideal_dp  # lazy: the DP module loads the C++ extension

    try:
        return ideal_dp(graph).placement
    except (PlacementError, ValueError, MemoryError):
        return None


def solve_milp(
    graph: Graph,
    *,
    time_limit: float = 60.0,
    warm_start: Solution | Placement | None = None,
    mip_rel_gap: float = 1e-6,
    verbose: bool = False,
) -> Solution:
    """Least max load (throughput) found by HiGHS within ``time_limit`` seconds, any split allowed.

    ``warm_start`` (a Solution or Placement; default: the contiguous DP optimum)
    is given to HiGHS and returned if HiGHS finds nothing better, so the answer
    is never worse than it.  ``optimal`` is true when HiGHS proves the relative
    gap <= ``mip_rel_gap``; ``lower_bound`` is HiGHS's dual bound; ``stats`` has
    the gap, node count, program size and the warm start's value.
    """
    if not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    t0 = time.perf_counter()
    graph.validate()
    if isinstance(warm_start, Solution):
        warm_start = warm_start.placement
    if warm_start is None:
        warm_start = _default_warm_start(graph)
    warm_value = math.inf
    if warm_start is not None:
        check_placement(graph, warm_start)
        warm_value = throughput_loads(graph, warm_start)[0]
    groups = graph.colocation_groups()
    stats: dict = {"warm_start_value": None if warm_start is None else warm_value}
    prog, place, start_of = _throughput_program(graph)
    start = None
    if warm_start is not None:
        warm_start = _canonical(warm_start, groups, graph)
        start = start_of(warm_start)
    stats.update(variables=len(prog.lower), rows=len(prog.row_lower), integers=sum(prog.integer))
    remaining = time_limit - (time.perf_counter() - t0)
    status_text, status, values, info = prog.solve(start, remaining, mip_rel_gap, verbose)
    stats.update(status=status_text, nodes=int(info.mip_node_count))
    best, best_value = warm_start, warm_value
    if values is not None:
        found = place.placement(values)
        try:
            value = throughput_loads(graph, found)[0]
        except PlacementError:  # rounding trouble: keep the warm start
            value = math.inf
        if value < best_value - 1e-12 * max(1.0, abs(best_value)):
            best, best_value = found, value
    if best is None:
        raise MilpError(f"HiGHS found no feasible placement within {time_limit:g} s (status: {stats['status']})")
    bound = float(info.mip_dual_bound) if math.isfinite(info.mip_dual_bound) else 0.0
    stats["improved_on_warm_start"] = best_value < warm_value
    bound = min(bound, best_value)
    gap = 0.0 if best_value <= 0 else max(0.0, (best_value - bound) / best_value)
    stats["gap"] = gap
    optimal = status == highspy.HighsModelStatus.kOptimal and gap <= mip_rel_gap + 1e-12
    seconds = time.perf_counter() - t0
    return Solution.evaluated(
        graph, best, "milp", optimal=optimal, lower_bound=bound, solve_seconds=seconds, stats=stats
    )
