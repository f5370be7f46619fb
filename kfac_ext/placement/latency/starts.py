"""Feasible splits found fast: intervals of a topological order (one call per accelerator).

An interval of a topological order is contiguous (a path that leaves it and comes
back would pass through a node ordered inside it), and calls ordered like their
intervals never wait on each other in a cycle.  So cutting an order into
accelerator intervals and CPU stretches always gives a split of the model
(:mod:`.model`), and its latency is at most the sum of its units' times taken one
after another: each unit's inputs come from units before it.
:func:`interval_split` minimises that sum exactly, over the order given, by a DP
over (prefix, accelerators used); :func:`orders` gives the orders tried.
The split it returns is scored by the evaluator, which is never above the DP's sum.
"""

from __future__ import annotations

import math
import random
import time

from ..graph import Graph
from .model import Split

__all__ = ["interval_split", "orders", "all_on_cpu"]

_CPU_STRETCH = 48  # longest CPU stretch the DP considers (cost: n * this * in-degree)


def all_on_cpu(graph: Graph) -> Split:
    """Every node on the CPU pool: always a split of the model."""
    return Split.of([], graph.ids)


def interval_split(graph: Graph, order: list[int], deadline: float = math.inf) -> Split | None:
    """The least chained sum over cuts of ``order`` into accelerator intervals (memory,
    colour classes and CPU-only nodes respected) and CPU stretches; None past ``deadline``."""
    n, k, cap = len(order), graph.num_accelerators, graph.memory_cap
    pos = {v: i for i, v in enumerate(order)}
    node = [graph.node(v) for v in order]
    preds = [[pos[u] for u in graph.predecessors(v)] for v in order]
    last_use = [max((pos[w] for w in graph.successors(v)), default=-1) for v in order]
    dropping: list[list[int]] = [[] for _ in range(n)]  # positions whose last consumer is at j
    for u, j in enumerate(last_use):
        if j >= 0:
            dropping[j].append(u)
    span_lo, span_hi = list(range(n)), list(range(n))  # first/last position of each node's colour class
    for members in graph.colour_classes().values():
        ps = [pos[v] for v in members]
        for p in ps:
            span_lo[p], span_hi[p] = min(ps), max(ps)
    inf = math.inf
    # best[j][m]: least sum for the prefix of length j with m accelerators used; back-pointers
    best = [[inf] * (k + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int] | None]] = [[None] * (k + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for i in range(n):
        if time.perf_counter() > deadline:
            return None
        row = best[i]
        # CPU stretches [i, j): the pool runs them in parallel, so a stretch takes its
        # longest path of CPU times (its inputs from before i are ready at its start);
        # colour classes need no check here, as an accelerator interval holds a class whole
        finish: dict[int, float] = {}
        longest = 0.0
        for j in range(i, min(n, i + _CPU_STRETCH)):
            finish[j] = node[j].cpu_time + max((finish[u] for u in preds[j] if u >= i), default=0.0)
            longest = max(longest, finish[j])
            target = best[j + 1]
            for m in range(k + 1):
                if row[m] + longest < target[m]:
                    target[m], back[j + 1][m] = row[m] + longest, (i, -1)
        if k == 0 or min(row[:k]) == inf:
            continue
        # accelerator intervals [i, j)
        fetched: set[int] = set()
        t_in = compute = t_out = mem = 0.0
        hi = -1
        for j in range(i, n):
            v = node[j]
            if not v.accel_ok or span_lo[j] < i:
                break
            mem += v.size
            if mem > cap * (1 + 1e-12):
                break
            compute += v.accel_time
            for u in preds[j]:
                if u < i and u not in fetched:
                    fetched.add(u)
                    t_in += node[u].out_cost
            for u in dropping[j]:  # u's last consumer is j: u no longer sends out of [i, j]
                if u >= i:
                    t_out -= node[u].out_cost
            if last_use[j] > j:
                t_out += v.out_cost
            hi = max(hi, span_hi[j])
            if hi > j:
                continue  # a colour mate lies further on
            w = t_in + compute + max(t_out, 0.0)
            target = best[j + 1]
            for m in range(k):
                if row[m] + w < target[m + 1]:
                    target[m + 1], back[j + 1][m + 1] = row[m] + w, (i, m)
    m = min(range(k + 1), key=lambda m: best[n][m])
    if best[n][m] == inf:
        return None
    calls, cpu, j = [], [], n
    while j > 0:
        i, how = back[j][m]
        if how < 0:
            cpu.extend(order[i:j])
        else:
            m -= 1
            calls.append((m, tuple(order[i:j])))
        j = i
    return Split.of(reversed(calls), cpu)  # built back to front: calls in run order


def orders(graph: Graph, count: int, seed: int = 0):
    """Topological orders to cut, ``count`` of them.  Each keeps a colour class together
    (its units are graph.contiguity_units(): colour classes, fused where they must be),
    so that an interval can hold a class whole: the units' own order, depth-first
    orders that finish a branch before the next (its transfers stay inside an
    interval), then random ones."""
    unit_of, unit_edges = graph.contiguity_units()
    topo = {v: i for i, v in enumerate(graph.topological_order())}
    members: dict[int, list[int]] = {}
    for v in sorted(unit_of, key=topo.__getitem__):
        members.setdefault(unit_of[v], []).append(v)
    succ: dict[int, list[int]] = {u: [] for u in members}
    for a, b in unit_edges:
        succ[a].append(b)

    def expand(units):
        return [v for u in units for v in members[u]]

    made = 0
    for units in (sorted(members), _depth_first(succ, reverse=False), _depth_first(succ, reverse=True)):
        if made == count:
            return
        made += 1
        yield expand(units)
    rng = random.Random(seed)
    while made < count:
        made += 1
        yield expand(_random_order(succ, rng))


def _indegrees(succ: dict[int, list[int]]) -> dict[int, int]:
    indeg = dict.fromkeys(succ, 0)
    for outs in succ.values():
        for w in outs:
            indeg[w] += 1
    return indeg


def _depth_first(succ: dict[int, list[int]], reverse: bool) -> list[int]:
    """A topological order that, once a unit is ready, keeps to its newest ready successors."""
    indeg = _indegrees(succ)
    stack = [u for u in sorted(succ, reverse=True) if indeg[u] == 0]
    out = []
    while stack:
        u = stack.pop()
        out.append(u)
        nxt = sorted(succ[u], reverse=not reverse)
        for w in nxt:
            indeg[w] -= 1
            if indeg[w] == 0:
                stack.append(w)
    return out


def _random_order(succ: dict[int, list[int]], rng: random.Random) -> list[int]:
    indeg = _indegrees(succ)
    ready = [u for u in sorted(succ) if indeg[u] == 0]
    out = []
    while ready:
        u = ready.pop(rng.randrange(len(ready)))
        out.append(u)
        for w in succ[u]:
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    return out
