"""The authors' latency IP (msr-fiddle/dnn-partitioning ``latency-ip/lip.py``), on HiGHS.

Machines: 0 is the CPU pool; accelerator ``a`` owns machines ``1 + a q .. (a + 1) q``,
one per call, run in that order.  Variables and rows (the model of :mod:`.model`):

* ``x[v, m]`` binary, ``sum_m x[v, m] = 1``; ``x[v, m] = 0`` on accelerators for
  CPU-only nodes; per accelerator ``sum size_v x[v, m] <= cap`` over its machines;
  a colour class: equal ``x[., 0]``, equal per-accelerator sums.
* contiguity: ``z[v, m] >= x[v, m]``, and for each edge ``u -> v``: ``z[v, m] <=
  z[u, m]`` and ``z[v, m] <= x[v, m] - x[u, m] + 1`` -- the set's ancestors carry
  ``z = 1`` and whatever follows a node leaving the set carries ``z = 0``, so no
  path leaves the set and comes back.
* ``cin[u, m] >= x[v, m] - x[u, m]``, ``cout[u, m] >= x[u, m] - x[v, m]`` per edge:
  u's output is fetched into / sent out of call m.
* ``start[m] >= lat[u] - U (1 - cin[u, m])``; ``finish[m] = start[m] + sum accel_v
  x[v, m] + sum out_cost_u (cin[u, m] + cout[u, m])``; ``lat[v] >= finish[m] - U (1 -
  x[v, m])``; on the CPU pool ``lat[v] >= lat[u] + cpu_v x[v, 0]`` per edge and
  ``lat[v] >= cpu_v x[v, 0]``; an accelerator's calls in order ``start[m] >=
  finish[m - 1]``; minimise ``T >= lat[v]``.
* with one call per accelerator (not in the authors' IP): the accelerators are
  interchangeable, so call ``m + 1`` may hold a node only if call ``m`` holds an
  earlier one in topological order; the warm start is relabelled to match.

``U`` is the big-M: an upper bound on every time in the splits of interest.  The
authors use the sum of all CPU times; here it is the warm start's latency, which
every split that improves on it respects (and ``T <= U`` is a row).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..graph import Graph
from ..highs import Program
from ..objective import PlacementError
from .model import Split, evaluate

__all__ = ["IpResult", "solve_ip"]


@dataclass
class IpResult:
    """What the authors' IP on HiGHS gave: the better split of HiGHS's and the warm start, with HiGHS's bound."""

    split: Split | None  # the better of HiGHS's answer and the warm start
    value: float
    bound: float  # HiGHS's dual bound (0 if it has none)
    optimal: bool
    status: str
    variables: int
    rows: int


class _LatencyIp:
    def __init__(self, graph: Graph, q: int, upper: float, lower: float):
        self.graph, self.q = graph, q
        k = graph.num_accelerators
        self.machines = 1 + k * q
        prog = self.prog = Program()
        ids = graph.ids
        M = range(self.machines)
        U = self.U = upper * (1 + 1e-9) + 1e-9
        self.x = {
            (v, m): prog.var(0.0, 1.0 if (m == 0 or graph.node(v).accel_ok) else 0.0, integer=True)
            for v in ids
            for m in M
        }
        for v in ids:
            prog.row({self.x[v, m]: 1.0 for m in M}, 1.0, 1.0)
        for a in range(k):
            terms = {self.x[v, m]: graph.node(v).size for v in ids for m in self._calls(a)}
            prog.row(terms, hi=graph.memory_cap * (1 + 1e-12))
        for members in graph.colour_classes().values():
            for u, v in zip(members, members[1:]):
                prog.row({self.x[u, 0]: 1.0, self.x[v, 0]: -1.0}, 0.0, 0.0)
                for a in range(k):
                    terms: dict[int, float] = {}
                    for m in self._calls(a):
                        terms[self.x[u, m]] = 1.0
                        terms[self.x[v, m]] = -1.0
                    prog.row(terms, 0.0, 0.0)
        senders = [v for v in ids if graph.successors(v)]
        self.z, self.cin, self.cout = {}, {}, {}
        for m in M[1:]:
            for v in ids:
                self.z[v, m] = prog.var(0.0, 1.0)
                prog.row({self.z[v, m]: 1.0, self.x[v, m]: -1.0}, lo=0.0)
            for u in senders:
                self.cin[u, m] = prog.var(0.0, 1.0)
                self.cout[u, m] = prog.var(0.0, 1.0)
            for u, v in graph.edges:
                prog.row({self.z[v, m]: 1.0, self.z[u, m]: -1.0}, hi=0.0)
                prog.row({self.z[v, m]: 1.0, self.x[v, m]: -1.0, self.x[u, m]: 1.0}, hi=1.0)
                prog.row({self.cin[u, m]: 1.0, self.x[v, m]: -1.0, self.x[u, m]: 1.0}, lo=0.0)
                prog.row({self.cout[u, m]: 1.0, self.x[u, m]: -1.0, self.x[v, m]: 1.0}, lo=0.0)
        self.lat = {v: prog.var(0.0, U) for v in ids}
        self.start = {m: prog.var(0.0, U) for m in M[1:]}
        self.finish = {m: prog.var(0.0, U) for m in M[1:]}
        for m in M[1:]:
            for u in senders:
                prog.row({self.start[m]: 1.0, self.lat[u]: -1.0, self.cin[u, m]: -U}, lo=-U)
            terms = {self.finish[m]: 1.0, self.start[m]: -1.0}
            for v in ids:
                terms[self.x[v, m]] = -graph.node(v).accel_time
            for u in senders:
                c = graph.node(u).out_cost
                terms[self.cin[u, m]] = -c
                terms[self.cout[u, m]] = -c
            prog.row(terms, 0.0, 0.0)
            for v in ids:
                prog.row({self.lat[v]: 1.0, self.finish[m]: -1.0, self.x[v, m]: -U}, lo=-U)
        for v in ids:
            prog.row({self.lat[v]: 1.0, self.x[v, 0]: -graph.node(v).cpu_time}, lo=0.0)
        for u, v in graph.edges:
            prog.row({self.lat[v]: 1.0, self.lat[u]: -1.0, self.x[v, 0]: -graph.node(v).cpu_time}, lo=0.0)
        for a in range(k):
            calls = self._calls(a)
            for m0, m1 in zip(calls, calls[1:]):
                prog.row({self.start[m1]: 1.0, self.finish[m0]: -1.0}, lo=0.0)
        self.order = graph.topological_order()
        self.prefix: dict[tuple[int, int], int] = {}
        if q == 1:  # accelerators are interchangeable: admit one labelling of each split
            self._order_accelerators()
        self.total = prog.var(max(lower, 0.0), U, cost=1.0)
        for v in ids:
            prog.row({self.total: 1.0, self.lat[v]: -1.0}, lo=0.0)

    def _order_accelerators(self) -> None:
        """Call m + 1 holds a node only if call m holds an earlier one (in topological
        order): prefix sums ``p[v, m] = sum of x[u, m] over u up to v``."""
        prog, order = self.prog, self.order
        for m in range(1, self.machines - 1):
            running = None
            for v in order:
                p = prog.var(0.0, float(len(order)))
                terms = {p: 1.0, self.x[v, m]: -1.0}
                if running is not None:
                    terms[running] = -1.0
                prog.row(terms, 0.0, 0.0)
                self.prefix[v, m] = running = p
        for m in range(2, self.machines):
            prog.row({self.x[order[0], m]: 1.0}, hi=0.0)
            for before, v in zip(order, order[1:]):
                prog.row({self.x[v, m]: 1.0, self.prefix[before, m - 1]: -1.0}, hi=0.0)

    def _calls(self, a: int) -> list[int]:
        return list(range(1 + a * self.q, 1 + (a + 1) * self.q))

    def values_of(self, split: Split) -> list[float]:
        """The program's variables for a feasible split (HiGHS's warm start)."""
        graph = self.graph
        timing = evaluate(graph, split, self.q)
        prev = dict(zip(self.order[1:], self.order))
        values = [0.0] * len(self.prog.lower)
        if self.q == 1:  # the labelling the ordering rows admit: calls by their first node
            rank = {v: i for i, v in enumerate(self.order)}
            calls = sorted(split.calls, key=lambda c: min(rank[v] for v in c[1]))
            split = Split.of([(a, nodes) for a, (_, nodes) in enumerate(calls)], split.cpu)
            timing = evaluate(graph, split, self.q)
        machine_of: dict[int, int] = {v: 0 for v in split.cpu}
        call_machine: dict[int, int] = {}
        taken: dict[int, int] = {}
        for c, (a, nodes) in enumerate(split.calls):
            m = 1 + a * self.q + taken.get(a, 0)
            taken[a] = taken.get(a, 0) + 1
            call_machine[m] = c
            for v in nodes:
                machine_of[v] = m
        for (v, m), j in self.x.items():
            values[j] = float(machine_of[v] == m)
        for m in range(1, self.machines):
            inside = {v for v, mm in machine_of.items() if mm == m}
            ancestors = _ancestors(graph, inside)
            for v in graph.ids:
                values[self.z[v, m]] = float(v in inside or v in ancestors)
            for u, v in graph.edges:
                if (v in inside) and (u not in inside):
                    values[self.cin[u, m]] = 1.0
                if (u in inside) and (v not in inside):
                    values[self.cout[u, m]] = 1.0
        for (v, m), j in self.prefix.items():  # filled in order: the previous one is set
            values[j] = values[self.x[v, m]] + (values[self.prefix[prev[v], m]] if v in prev else 0.0)
        for v in graph.ids:
            values[self.lat[v]] = timing.finish[v]
        for a in range(graph.num_accelerators):
            previous = 0.0
            for m in self._calls(a):
                if m in call_machine:
                    row = timing.calls[call_machine[m]]
                    values[self.start[m]], values[self.finish[m]] = row["start"], row["finish"]
                    previous = row["finish"]
                else:  # an unused call: empty, at the end of the one before it
                    values[self.start[m]] = values[self.finish[m]] = previous
        values[self.total] = timing.latency
        return values

    def split_of(self, values: list[float]) -> Split:
        graph = self.graph
        cpu = [v for v in graph.ids if values[self.x[v, 0]] > 0.5]
        calls = []
        for a in range(graph.num_accelerators):
            for m in self._calls(a):
                calls.append((a, tuple(v for v in graph.ids if values[self.x[v, m]] > 0.5)))
        return Split.of(calls, cpu)


def _ancestors(graph: Graph, nodes: set[int]) -> set[int]:
    seen: set[int] = set()
    stack = [u for v in nodes for u in graph.predecessors(v)]
    while stack:
        u = stack.pop()
        if u not in seen:
            seen.add(u)
            stack.extend(graph.predecessors(u))
    return seen


def solve_ip(
    graph: Graph,
    start: Split,
    time_limit: float,
    subgraphs: int = 1,
    lower: float = 0.0,
    rel_gap: float = 1e-6,
    verbose: bool = False,
    fixed: bool = False,
) -> IpResult:
    """The IP warm-started from ``start`` (a feasible split), within ``time_limit`` s.

    The answer is the better of HiGHS's split and ``start``, re-scored by the
    model's evaluator.  ``lower`` is a proven lower bound (a row ``T >= lower``).
    ``fixed=True`` fixes every ``x`` to ``start``: the program then only schedules
    it, and its value is ``start``'s latency by the IP's own rows (a check of the
    evaluator)."""
    t0 = time.perf_counter()
    upper = evaluate(graph, start, subgraphs).latency
    if fixed:  # a big-M that holds for any schedule: every unit's time, one after another
        big_m = (
            sum(n.cpu_time + n.accel_time + 2 * n.out_cost * graph.num_accelerators * subgraphs for n in graph.nodes)
            + upper
            + 1.0
        )
    ip = _LatencyIp(graph, subgraphs, big_m if fixed else upper, lower)
    values = ip.values_of(start)
    if fixed:
        for j in ip.x.values():
            ip.prog.lower[j] = ip.prog.upper[j] = values[j]
    left = time_limit - (time.perf_counter() - t0)
    status_text, status, result, info = ip.prog.solve(values, left, rel_gap, verbose)
    best, best_value = start, upper
    if result is not None:
        found = ip.split_of(result)
        try:
            value = evaluate(graph, found, subgraphs).latency
        except PlacementError:  # rounding trouble: keep the start
            value = math.inf
        if fixed:
            best_value = float(info.objective_function_value)
        elif value < best_value:
            best, best_value = found, value
    bound = float(info.mip_dual_bound) if math.isfinite(info.mip_dual_bound) else 0.0
    bound = min(max(bound, lower), best_value)
    optimal = status_text == "Optimal" and best_value - bound <= rel_gap * max(best_value, 1e-12) + 1e-9
    return IpResult(best, best_value, bound, optimal, status_text, len(ip.prog.lower), len(ip.prog.row_lower))
