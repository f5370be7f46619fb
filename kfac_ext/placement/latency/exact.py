"""Exact latency by branch and bound over the nodes in topological order (one call
per accelerator, the paper's default).

Each node in turn goes to the CPU pool, to an accelerator already opened, or to
the next unopened one (accelerators are interchangeable, so opening them in
order loses nothing).  A branch is cut when it breaks a rule of the model
(:mod:`.model`) that later nodes cannot repair: memory (a colour class's whole
size is charged when its first node is placed), a colour class already
placed elsewhere, contiguity (the node is reachable from an accelerator's set
through an outside node), calls waiting on each other in a cycle.

Bound: the latency of the placed prefix, scored by the model's rule on the
prefix alone (:func:`assignment_latency`).  The prefix is an ideal, so every path
between its nodes stays inside it, and placing more nodes only adds costs to a
call (compute, inputs to fetch, outputs to send) or waits, never removes one:
the prefix's latency never exceeds that of any completion.  Stopped by the time
limit, the bound returned is the least bound of the branches still open, which
is a lower bound on the optimum because the open branches cover every split
not yet ruled out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..graph import Graph
from .model import Split

__all__ = ["ExactResult", "Problem", "assignment_latency", "branch_and_bound"]


@dataclass
class ExactResult:
    """What the branch and bound found: the best split, its latency, a proven bound and whether it finished."""

    split: Split | None
    value: float  # latency of ``split`` (inf if none was found)
    bound: float  # proven lower bound on the optimum
    optimal: bool  # the search finished: ``value`` is the optimum
    branches: int


class Problem:
    """The graph by topological position, with what the search needs per node."""

    def __init__(self, graph: Graph):
        self.ids = graph.topological_order()
        pos = {v: i for i, v in enumerate(self.ids)}
        nodes = [graph.node(v) for v in self.ids]
        self.n = len(nodes)
        self.k = graph.num_accelerators
        self.cap = graph.memory_cap
        self.accel = [x.accel_time for x in nodes]
        self.cpu = [x.cpu_time for x in nodes]
        self.cost = [x.out_cost for x in nodes]
        self.preds = [[pos[u] for u in graph.predecessors(v)] for v in self.ids]
        self.succs = [[pos[w] for w in graph.successors(v)] for v in self.ids]
        groups = graph.colocation_groups()
        self.group = [0] * self.n
        self.group_size, self.group_accel_ok = [], []
        for g, members in enumerate(groups):
            for v in members:
                self.group[pos[v]] = g
            self.group_size.append(sum(graph.node(v).size for v in members))
            self.group_accel_ok.append(all(graph.node(v).accel_ok for v in members))


def assignment_latency(p: Problem, dev: list[int]) -> float:
    """Latency of the placed prefix ``dev`` (device per position: -1 CPU pool, a >= 0
    accelerator a's one call), by the model's rule (:mod:`.model`) on this array
    encoding, without checking memory or contiguity; inf on a cycle of calls.
    A full ``dev`` gives the split's latency."""
    m = len(dev)
    k = p.k
    # units: accelerator a -> a; CPU node at position i -> k + i
    unit = [k + i if d < 0 else d for i, d in enumerate(dev)]
    nunits = k + m
    extra = [0.0] * nunits  # time a unit adds once it is ready
    for i, d in enumerate(dev):
        extra[unit[i]] += p.cpu[i] if d < 0 else p.accel[i]
    preds: list[set[int]] = [set() for _ in range(nunits)]
    fed = [set() for _ in range(k)]
    left = [set() for _ in range(k)]
    for w in range(m):
        uw = unit[w]
        for v in p.preds[w]:
            uv = unit[v]
            if uv == uw:
                continue
            preds[uw].add(uv)
            if uw < k:
                fed[uw].add(v)
            if uv < k:
                left[uv].add(v)
    for a in range(k):
        extra[a] += sum(p.cost[v] for v in fed[a]) + sum(p.cost[v] for v in left[a])
    # longest path over the units (Kahn's order; a leftover unit means a cycle)
    indeg = [len(preds[u]) for u in range(nunits)]
    succ: list[list[int]] = [[] for _ in range(nunits)]
    for u in range(nunits):
        for q in preds[u]:
            succ[q].append(u)
    ready = [u for u in range(nunits) if indeg[u] == 0]
    start = [0.0] * nunits
    best, done = 0.0, 0
    while ready:
        u = ready.pop()
        done += 1
        f = start[u] + extra[u]
        best = max(best, f)
        for w in succ[u]:
            start[w] = max(start[w], f)
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    return best if done == nunits else math.inf


def branch_and_bound(
    graph: Graph, time_limit: float, upper: float = math.inf, start: Split | None = None
) -> ExactResult:
    """The least latency over every split with one call per accelerator.

    ``start`` (with its latency ``upper``) is the incumbent to beat; the answer
    is never worse.  Stops at ``time_limit`` seconds with the best split found
    and the least bound of the open branches."""
    t0 = time.perf_counter()
    p = Problem(graph)
    best_value, best_dev = upper, None
    # stack items: (bound, devices of the prefix, accelerators opened, memory used,
    #               per-accelerator taint bitmask, device per colour group)
    ngroups = len(p.group_size)
    stack = [(0.0, (), 0, (0.0,) * p.k, (0,) * p.k, (None,) * ngroups)]
    branches = 0
    while stack:
        if branches % 256 == 0 and time.perf_counter() - t0 > time_limit:
            bound = min([best_value] + [item[0] for item in stack])
            return _result(p, best_dev, start, best_value, bound, False, branches)
        lb, dev, used, mem, taint, gdev = stack.pop()
        branches += 1
        if lb >= best_value:
            continue
        i = len(dev)
        if i == p.n:
            best_value, best_dev = lb, dev
            continue
        g = p.group[i]
        options = (
            [gdev[g]]
            if gdev[g] is not None
            else ([-1] + (list(range(min(used + 1, p.k))) if p.group_accel_ok[g] else []))
        )
        children = []
        for d in options:
            if d >= 0 and any((taint[d] >> u) & 1 for u in p.preds[i]):
                continue  # a path from accelerator d's set left it and would come back
            new_mem = mem
            if d >= 0 and gdev[g] is None:
                if mem[d] + p.group_size[g] > p.cap * (1 + 1e-12):
                    continue
                new_mem = mem[:d] + (mem[d] + p.group_size[g],) + mem[d + 1 :]
            new_taint = tuple(
                t | ((1 << i) if a != d and any(dev[u] == a or (t >> u) & 1 for u in p.preds[i]) else 0)
                for a, t in enumerate(taint)
            )
            new_dev = dev + (d,)
            value = assignment_latency(p, list(new_dev))
            if value >= best_value:
                continue
            new_gdev = gdev if gdev[g] is not None else gdev[:g] + (d,) + gdev[g + 1 :]
            children.append((value, new_dev, max(used, d + 1), new_mem, new_taint, new_gdev))
        children.sort(key=lambda c: -c[0])  # the most promising child is explored first
        stack.extend(children)
    return _result(p, best_dev, start, best_value, best_value, True, branches)


def _result(
    p: Problem, dev, start: Split | None, value: float, bound: float, optimal: bool, branches: int
) -> ExactResult:
    if dev is None:
        return ExactResult(start, value, min(bound, value), optimal, branches)
    calls = [(a, tuple(p.ids[i] for i, d in enumerate(dev) if d == a)) for a in range(p.k)]
    split = Split.of(calls, tuple(p.ids[i] for i, d in enumerate(dev) if d < 0))
    return ExactResult(split, value, min(bound, value), optimal, branches)
