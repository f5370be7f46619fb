"""Non-contiguous placement as mixed-integer programs, solved with HiGHS (``highspy``).

``solve_milp(graph, objective="throughput" | "latency", time_limit=...)``.

Both programs share the placement part: one binary ``x[g, d]`` per
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

Latency (the model of latency.py): start times ``s_v``, finish ``f_v = s_v +
sum_d time(v, d) x[g(v), d]``.  Edge ``u -> v``: ``s_v >= f_u + out_cost_u (e1 +
e2)`` where ``e1``/``e2`` = "the edge crosses devices and its source/destination
is an accelerator" (``y >= x[g(u), d] - x[g(v), d]``, ``e1 >= y + sum_a x[g(u),
a] - 1``).  One device runs its nodes in topological order: for each pair
``u`` before ``v`` that no path orders already, ``s_v >= f_u - U (1 - o)`` with
``o >= x[g(u), d] + x[g(v), d] - 1``, ``U`` = the warm start's latency (also an
upper bound on every finish time).  Minimise ``L >= f_v``.

Warm start: the contiguous DP optimum (kfac_ext.placement.dp) for throughput;
for latency the best of latency.chain_split (a chain DP over the topological
order, and over latency_search.chain_order, which keeps weights by their
layer), latency_segments.segment_split (segments timed exactly),
latency_bound_plan.plan_start (the placement the bound's DP describes),
latency_blocks.block_split (a DP over the blocks, moving mid-block), a first-fit
fill of the accelerators and everything on one CPU (or a start the caller
passes), improved by latency_search.improve (local search on the exact latency,
``_SEARCH_SHARE`` of the time).  HiGHS gets it through
``setSolution``; the answer is re-scored from the graph alone
(throughput_loads / latency_of) and is never worse than the warm start.

Latency bound: latency_bound.latency_bound (memory-aware, combinatorial) is
the variable ``L``'s lower bound in the program and the reported bound when
HiGHS's is weaker.  When it already certifies the search's answer within
``mip_rel_gap``, or the program is too big for the time left, HiGHS is not run.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time

import highspy
import numpy as np

from .graph import Graph
from .latency import chain_split, latency_of, latency_schedule
from .latency_bound import bound_paths, latency_bound
from .latency_blocks import block_split, widest_block
from .latency_bound_plan import plan_start
from .latency_search import chain_order, improve, iterated_search, path_split
from .latency_segments import segment_split
from .objective import Placement, PlacementError, Solution, check_placement, throughput_loads

__all__ = ["solve_milp", "MilpError"]


class MilpError(PlacementError):
    """The program could not be built or solved (the message says why)."""


@contextlib.contextmanager
def _solver_output(verbose: bool):
    """Keep HiGHS off our stdout (``--json`` prints one object there): its banner,
    printed when a solver is created whatever the options, and its log go to
    stderr when ``verbose``, else nowhere.  HiGHS writes to file descriptor 1
    from C++, so the descriptor itself is redirected for the duration."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable descriptor 1 (embedded interpreter): nothing to protect
        yield
        return
    target = os.dup(2) if verbose else os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(target, 1)
        yield
    finally:
        _flush_c_stdout()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)


def _flush_c_stdout() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


class _Program:
    """A sparse mixed-integer program assembled row by row, then handed to HiGHS."""

    def __init__(self):
        self.lower, self.upper, self.cost, self.integer = [], [], [], []
        self.row_lower, self.row_upper = [], []
        self.starts, self.index, self.value = [0], [], []

    def var(self, lo=0.0, hi=1.0, cost=0.0, integer=False) -> int:
        self.lower.append(lo)
        self.upper.append(hi)
        self.cost.append(cost)
        self.integer.append(integer)
        return len(self.lower) - 1

    def row(self, terms: dict[int, float], lo=-math.inf, hi=math.inf) -> None:
        for j, a in terms.items():
            if a != 0.0:
                self.index.append(j)
                self.value.append(a)
        self.starts.append(len(self.index))
        self.row_lower.append(lo)
        self.row_upper.append(hi)

    def solve(self, start: list[float] | None, time_limit: float, rel_gap: float,
              verbose: bool):
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_ = len(self.lower)
        lp.num_row_ = len(self.row_lower)
        lp.col_cost_ = np.array(self.cost, dtype=np.float64)
        lp.col_lower_ = np.array(self.lower, dtype=np.float64)
        lp.col_upper_ = np.array([min(u, inf) for u in self.upper], dtype=np.float64)
        lp.row_lower_ = np.array([max(x, -inf) for x in self.row_lower], dtype=np.float64)
        lp.row_upper_ = np.array([min(x, inf) for x in self.row_upper], dtype=np.float64)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_ = lp.num_col_
        lp.a_matrix_.num_row_ = lp.num_row_
        lp.a_matrix_.start_ = np.array(self.starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.array(self.index, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(self.value, dtype=np.float64)
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in self.integer]
        with _solver_output(verbose):
            return self._run(lp, start, time_limit, rel_gap, verbose)

    @staticmethod
    def _run(lp, start, time_limit: float, rel_gap: float, verbose: bool):
        h = highspy.Highs()
        h.setOptionValue("output_flag", bool(verbose))
        h.setOptionValue("time_limit", float(max(time_limit, 0.01)))
        h.setOptionValue("mip_rel_gap", float(rel_gap))
        h.setOptionValue("random_seed", 0)
        h.setOptionValue("threads", 1)
        h.passModel(lp)
        if start is not None:
            sol = highspy.HighsSolution()
            sol.col_value = list(start)
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        info = h.getInfo()
        status = h.getModelStatus()
        has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
        values = list(h.getSolution().col_value) if has_solution else None
        return h.modelStatusToString(status), status, values, info


def _device_list(graph: Graph) -> list[tuple[str, int]]:
    return ([("accel", a) for a in range(graph.num_accelerators)]
            + [("cpu", c) for c in range(graph.num_cpus)])


def _canonical(placement: Placement, groups: list[list[int]], graph: Graph) -> Placement:
    """Relabel devices of each kind by their first group, empty devices last
    (the labelling the symmetry-breaking rows admit); pad to k accelerators / l CPUs."""
    group_index = {i: g for g, members in enumerate(groups) for i in members}

    def order(devices, count):
        used = sorted((d for d in devices if d), key=lambda d: min(group_index[i] for i in d))
        return [list(d) for d in used] + [[] for _ in range(count - len(used))]

    return Placement(order(placement.accelerators, graph.num_accelerators),
                     order(placement.cpus, graph.num_cpus))


class _PlacementVars:
    """The placement part of both programs: x[g, d], memory, symmetry."""

    def __init__(self, prog: _Program, graph: Graph):
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
                raise MilpError(f"{nodes[0].describe()} fits on no device (CPU-only or too big, "
                                "and there are no CPUs)")
        cap = graph.memory_cap
        if cap > 0:
            for a in range(k):
                sizes = {self.x[g][a]: sum(graph.node(i).size for i in m) / cap
                         for g, m in enumerate(self.groups)}
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
    prog = _Program()
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
            t = sum(graph.node(i).accel_time if kind == "accel" else graph.node(i).cpu_time
                    for i in members)
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
            values[c] = float(any((where[w] == ("accel", a)) != inside
                                  for w in graph.successors(v)))
        values[m] = throughput_loads(graph, placement, check_memory=False)[0]
        return values

    return prog, place, start


def _ancestor_sets(graph: Graph, order: list[int]) -> dict[int, int]:
    """node -> bitset (Python int) of its ancestors, by position in ``order``."""
    pos = {v: i for i, v in enumerate(order)}
    anc: dict[int, int] = {}
    for v in order:
        bits = 0
        for u in graph.predecessors(v):
            bits |= anc[u] | (1 << pos[u])
        anc[v] = bits
    return anc


def _sequencing_pairs(graph: Graph) -> list[tuple[int, int]]:
    """(u, v), u before v in topological order, for every pair no path orders."""
    order = graph.topological_order()
    anc = _ancestor_sets(graph, order)
    pairs = []
    for j, v in enumerate(order):
        for i in range(j):
            if not (anc[v] >> i) & 1:
                pairs.append((order[i], v))
    return pairs


def _latency_program(graph: Graph, upper: float, pairs: list[tuple[int, int]], lower: float = 0.0):
    prog = _Program()
    place = _PlacementVars(prog, graph)
    devices = place.devices
    accel = [d for d, (kind, _) in enumerate(devices) if kind == "accel"]
    order = graph.topological_order()
    upper = max(upper, 1e-12)
    lat = prog.var(min(lower, upper), upper, cost=1.0)  # a proven bound helps HiGHS prune
    s = {v: prog.var(0.0, upper) for v in order}

    def finish_terms(v: int, sign: float) -> dict[int, float]:
        n, g = graph.node(v), place.group_of[v]
        terms = {s[v]: sign}
        for d, (kind, _) in enumerate(devices):
            terms[place.x[g][d]] = sign * (n.accel_time if kind == "accel" else n.cpu_time)
        return terms

    def add(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
        out = dict(a)
        for j, v in b.items():
            out[j] = out.get(j, 0.0) + v
        return out

    for v in order:  # L >= f_v
        prog.row(add({lat: 1.0}, finish_terms(v, -1.0)), lo=0.0)
    edge_vars = []  # (u, v, y, e1, e2) for the start values
    for u, v in graph.edges:
        gu, gv = place.group_of[u], place.group_of[v]
        cost = graph.node(u).out_cost
        row = add({s[v]: 1.0}, finish_terms(u, -1.0))
        if gu != gv and cost > 0 and accel:
            y, e1, e2 = prog.var(), prog.var(), prog.var()
            for d in range(len(devices)):
                prog.row({y: 1.0, place.x[gu][d]: -1.0, place.x[gv][d]: 1.0}, lo=0.0)
            prog.row(add({e1: 1.0, y: -1.0}, {place.x[gu][a]: -1.0 for a in accel}), lo=-1.0)
            prog.row(add({e2: 1.0, y: -1.0}, {place.x[gv][a]: -1.0 for a in accel}), lo=-1.0)
            row = add(row, {e1: -cost, e2: -cost})
            edge_vars.append((u, v, y, e1, e2))
        prog.row(row, lo=0.0)
    # one node at a time per device, in topological order: pairs no path orders
    pair_vars = []
    for u, v in pairs:
        gu, gv = place.group_of[u], place.group_of[v]
        row = add({s[v]: 1.0}, finish_terms(u, -1.0))
        if gu == gv:  # always on one device
            prog.row(row, lo=0.0)
            continue
        o = prog.var()
        for d in range(len(devices)):
            prog.row({o: 1.0, place.x[gu][d]: -1.0, place.x[gv][d]: -1.0}, lo=-1.0)
        prog.row(add(row, {o: -upper}), lo=-upper)
        pair_vars.append((u, v, o))

    def start(placement: Placement) -> list[float]:
        values = [0.0] * len(prog.lower)
        place.start_values(placement, values)
        where = placement.device_of()
        sched = latency_schedule(graph, placement, check_memory=False)
        for v in order:
            values[s[v]] = sched[v].start
        values[lat] = max(x.finish for x in sched.values())
        for u, v, y, e1, e2 in edge_vars:
            cross = where[u] != where[v]
            values[y] = float(cross)
            values[e1] = float(cross and where[u][0] == "accel")
            values[e2] = float(cross and where[v][0] == "accel")
        for u, v, o in pair_vars:
            values[o] = float(where[u] == where[v])
        return values

    stats = {"sequencing_pairs": len(pairs)}
    return prog, place, start, stats


def _first_fit(graph: Graph) -> Placement | None:
    """Groups in topological order fill accelerator 0 up to the memory cap, then
    accelerator 1, ...; CPU-only groups and the overflow go to CPU 0.  A contiguous,
    transfer-light start for latency, found in linear time."""
    pos = {v: i for i, v in enumerate(graph.topological_order())}
    groups = sorted(graph.colocation_groups(), key=lambda m: min(pos[i] for i in m))
    acc = [[] for _ in range(graph.num_accelerators)]
    cpus = [[] for _ in range(graph.num_cpus)]
    a, used = 0, 0.0
    for members in groups:
        nodes = [graph.node(i) for i in members]
        size = sum(n.size for n in nodes)
        if all(n.accel_ok for n in nodes):
            while a < len(acc) and used + size > graph.memory_cap:
                a, used = a + 1, 0.0
            if a < len(acc):
                acc[a].extend(members)
                used += size
                continue
        if not cpus:
            return None
        cpus[0].extend(members)
    return Placement(acc, cpus)


def _default_warm_start(graph: Graph, objective: str, time_limit: float) -> Placement | None:
    candidates = []
    if objective == "throughput":
        from .dp import ideal_dp  # lazy: the DP module loads the C++ extension

        try:
            candidates.append(ideal_dp(graph).placement)
        except (PlacementError, ValueError, MemoryError):
            pass
    else:  # one sample: few transfers matter most; the DP (a throughput optimum) is
        # not needed and can be slow on many devices, so cheap candidates only
        ids = graph.ids
        candidates.append(_first_fit(graph))
        candidates.append(chain_split(graph))
        candidates.append(chain_split(graph, chain_order(graph)))
        # moves inside a block, each branch crossing on its own (Inception's modules);
        # None at once on colour classes, and not tried where a block is too wide to enumerate;
        # before the bound's plan, whose time varies, so that it keeps its share
        if widest_block(graph) <= _BLOCK_DP_MAX_INNER:
            candidates.append(block_split(graph, _BLOCK_DP_SHARE * time_limit))
        # timed exactly as it grows (skip connections, parallel transfers); O(n^2)
        candidates.append(segment_split(graph, chain_order(graph), time_limit=_SEGMENT_DP_SHARE * time_limit))
        # the placement the memory-aware bound's DP describes, after a short local search
        candidates.append(plan_start(graph, _PLAN_SHARE * time_limit))
        for path in bound_paths(graph):  # the memory-aware bound's own route plans
            candidates.append(path_split(graph, path))
        if graph.num_cpus:
            candidates.append(Placement([[] for _ in range(graph.num_accelerators)],
                                        [ids] + [[] for _ in range(graph.num_cpus - 1)]))
    best, best_value = None, math.inf
    for p in candidates:
        if p is None:
            continue
        try:
            value = _score(graph, p, objective)
        except PlacementError:
            continue
        if value < best_value:
            best, best_value = p, value
    return best


def _score(graph: Graph, placement: Placement, objective: str) -> float:
    if objective == "throughput":
        return throughput_loads(graph, placement)[0]
    return latency_of(graph, placement)


def solve_milp(graph: Graph, *, objective: str = "throughput", time_limit: float = 60.0,
               warm_start: Solution | Placement | None = None, mip_rel_gap: float = 1e-6,
               max_pairs: int = 200_000, verbose: bool = False) -> Solution:
    """Best placement found by HiGHS within ``time_limit`` seconds, any split allowed.

    ``warm_start`` (a Solution or Placement; default: the contiguous DP optimum
    for throughput, the best cheap contiguous split for latency) is given to HiGHS and
    returned if HiGHS finds nothing better, so the answer is never worse than it.
    ``optimal`` is true when HiGHS proves the relative gap <= ``mip_rel_gap``;
    ``lower_bound`` is HiGHS's dual bound; ``stats`` has the gap, node count,
    program size and the warm start's value.  Latency: the start is first improved
    by local search, ``lower_bound`` is the better of HiGHS's and
    latency_bound.latency_bound's, ``optimal`` means gap <= ``mip_rel_gap`` against
    it, and ``stats["status"]`` says whether and why HiGHS was not run.
    """
    if objective not in ("throughput", "latency"):
        raise ValueError(f"objective must be 'throughput' or 'latency', got {objective!r}")
    if not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    t0 = time.perf_counter()
    graph.validate()
    if isinstance(warm_start, Solution):
        warm_start = warm_start.placement
    if warm_start is None:
        warm_start = _default_warm_start(graph, objective, time_limit)
    warm_value = math.inf
    if warm_start is not None:
        check_placement(graph, warm_start)
        warm_value = _score(graph, warm_start, objective)

    groups = graph.colocation_groups()
    stats: dict = {"warm_start_value": None if warm_start is None else warm_value}
    proven = 0.0  # a lower bound known before HiGHS runs
    if objective == "throughput":
        prog, place, start_of = _throughput_program(graph)
    else:
        if warm_start is None:
            raise MilpError("the latency program needs a warm start (its big-M is the warm "
                            "start's latency) and no placement fits the devices")
        proven = latency_bound(graph)
        warm_start, warm_value, search = improve(graph, warm_start, _SEARCH_SHARE * time_limit)
        stats.update(bound_before_milp=proven, search_value=warm_value, search_moves=search["moves"],
                     search_seconds=search["seconds"])
        if verbose:
            print(f"latency: local search {warm_value:.6g} ({search['moves']} moves, "
                  f"{search['seconds']:.2f} s), lower bound {proven:.6g}", file=sys.stderr)
        if warm_value - proven <= mip_rel_gap * warm_value:  # certified: HiGHS has nothing to add
            return _latency_solution(graph, warm_start, warm_value, proven, t0, stats, mip_rel_gap,
                                     status="bound meets the local search")
        pairs = _sequencing_pairs(graph)
        if len(pairs) > max_pairs:
            raise MilpError(f"the latency program needs {len(pairs)} sequencing pairs (more than "
                            f"max_pairs={max_pairs}); the graph is too wide for it")
        rows = len(pairs) * (len(_device_list(graph)) + 1)
        left = time_limit - (time.perf_counter() - t0)
        if rows > _ROWS_PER_SECOND * left:  # HiGHS would not finish its first LP in time:
            # the time goes to the search instead (a margin is kept for the final scoring)
            warm_start, warm_value, more = iterated_search(graph, warm_start, warm_value,
                                                           max(0.0, 0.95 * left - 0.5))
            stats.update(sequencing_pairs=len(pairs), search_value=warm_value,
                         restarts=more["tries"], restarts_kept=more["kept"])
            return _latency_solution(graph, warm_start, warm_value, proven, t0, stats, mip_rel_gap,
                                     status=f"HiGHS skipped ({rows} sequencing rows are too many "
                                            f"for {left:.0f} s): iterated local search")
        prog, place, start_of, extra = _latency_program(graph, warm_value, pairs, lower=proven)
        stats.update(extra)
    start = None
    if warm_start is not None:
        warm_start = _canonical(warm_start, groups, graph)
        start = start_of(warm_start)
    stats.update(variables=len(prog.lower), rows=len(prog.row_lower),
                 integers=sum(prog.integer))
    remaining = time_limit - (time.perf_counter() - t0)
    if objective == "latency":  # half for HiGHS; if it does not close the gap, the search
        remaining *= _HIGHS_SHARE
    status_text, status, values, info = prog.solve(start, remaining, mip_rel_gap, verbose)
    stats.update(status=status_text, nodes=int(info.mip_node_count))

    best, best_value = warm_start, warm_value
    if values is not None:
        found = place.placement(values)
        try:
            value = _score(graph, found, objective)
        except PlacementError:  # rounding trouble: keep the warm start
            value = math.inf
        if value < best_value - 1e-12 * max(1.0, abs(best_value)):
            best, best_value = found, value
    if best is None:
        raise MilpError(f"HiGHS found no feasible placement within {time_limit:g} s "
                        f"(status: {stats['status']})")
    bound = float(info.mip_dual_bound) if math.isfinite(info.mip_dual_bound) else 0.0
    stats["improved_on_warm_start"] = best_value < warm_value
    if objective == "latency":  # both bounds are valid; ours often beats HiGHS's on a timeout
        bound = max(bound, proven)
        left = time_limit - (time.perf_counter() - t0)
        if best_value - bound > mip_rel_gap * best_value and left > 1.0:
            best, best_value, more = iterated_search(graph, best, best_value, 0.95 * left - 0.5)
            stats.update(search_value=best_value, restarts=more["tries"],
                         restarts_kept=more["kept"])
            stats["status"] += "; then iterated local search"
        return _latency_solution(graph, best, best_value, bound, t0, stats, mip_rel_gap)
    bound = min(bound, best_value)
    gap = 0.0 if best_value <= 0 else max(0.0, (best_value - bound) / best_value)
    stats["gap"] = gap
    optimal = status == highspy.HighsModelStatus.kOptimal and gap <= mip_rel_gap + 1e-12
    seconds = time.perf_counter() - t0
    return Solution.evaluated(graph, best, "milp", optimal=optimal, lower_bound=bound,
                              solve_seconds=seconds, stats=stats)


# share of the time limit the latency local search may use before HiGHS starts, and
# the share of what is left that HiGHS gets (the iterated search takes the rest when
# HiGHS has not closed the gap; on the bundled workloads it never did)
_SEARCH_SHARE = 0.3
# share of the time limit the segment DP may use (it takes about 1 s on the 783-node
# BERT-12 operator graph; past its share it gives up and the other starts stand)
_SEGMENT_DP_SHARE = 0.2
# share of the time limit the bound's plan may spend in local search before the
# candidates are compared (it stops earlier at a local optimum: 0.1-2 s on the workloads)
_PLAN_SHARE = 0.1
# share of the time limit the block DP may use (Inception-v3: 21-26 s on the 2-core
# machine at load 0.8-1.8, ResNet-50 layers 0.3 s; past its share it returns None), and
# the widest block it is tried on (GNMT's 92-node block takes it 5 s for nothing)
_BLOCK_DP_SHARE = 0.55
_BLOCK_DP_MAX_INNER = 40
_HIGHS_SHARE = 0.5
# sequencing rows per second of time left below which HiGHS is worth starting: on the
# bundled latency workloads (20k to 1.7M rows) it ended every 20 s run at the root, having
# built the program for up to 40 s; beyond this the search's answer and the bound stand
_ROWS_PER_SECOND = 1000


def _latency_solution(graph: Graph, best: Placement, best_value: float, bound: float, t0: float,
                      stats: dict, mip_rel_gap: float, status: str | None = None) -> Solution:
    """The latency answer: value recomputed from the graph, gap against a proven bound."""
    best_value = latency_of(graph, best)
    bound = min(bound, best_value)
    gap = 0.0 if best_value <= 0 else max(0.0, (best_value - bound) / best_value)
    stats["gap"] = gap
    if status is not None:
        stats["status"] = status
    optimal = gap <= mip_rel_gap + 1e-12
    seconds = time.perf_counter() - t0
    sched = latency_schedule(graph, best)
    busy = {}
    for v, sn in sched.items():
        busy[sn.device] = busy.get(sn.device, 0.0) + sn.finish - sn.start
    acc = [busy.get(("accel", a), 0.0) for a in range(len(best.accelerators))]
    cpu = [busy.get(("cpu", c), 0.0) for c in range(len(best.cpus))]
    stats["device_busy"] = "per-device compute time of the sample (loads)"
    return Solution(best, "latency", "milp", best_value, optimal, bound, seconds, stats, acc, cpu)
