"""The path bound: a lower bound on the least latency by one DP along the graph (no
solver).  Its per-node tables also seed the chain bound (:mod:`.chain_bound`: a DP over
the runs of one path on one unit); each is valid alone, :mod:`.solve` takes the better.

The path bound restates the model's timing rule (:mod:`.model`) path by path, relaxed: the
number of accelerators, colour classes (but for a class that no accelerator can
hold, which forces its nodes onto the CPU pool) and the nodes of a call off the
path are ignored.  Per node ``v``:

* ``cpu[v]``: a lower bound on v's finish if v is on the CPU pool:
  ``cpu_time(v) + max over inputs u of min(cpu[u], acc[u][cap] + out_cost(u))`` --
  an input on an accelerator arrives no sooner than its call ends, and the call
  sends u (it has an edge leaving the call) after running u.
* ``acc[v][b]``: a lower bound on the moment v's call has run v, counted from
  the call's start (its transfers in, then its nodes, v after its inputs inside
  the call), when v and its ancestors in the same call hold at most ``b`` bytes:
  ``accel_time(v) + max over inputs u of min(cpu[u] + out_cost(u), acc[u][b -
  size(v)], acc[u][cap] + 2 out_cost(u))`` -- an outside input is waited for and
  fetched; an input in the same call was run before v within the bytes left; an
  input in another call is sent by it and fetched by v's.  So along every path
  the stretches in one call fit the memory cap, and a path longer than the cap
  pays for its cuts.  A colour class's bytes are charged to one member
  (:func:`_charged_sizes`), so an operator's weights count on its path.

``b`` runs over a grid of ``cap / grid`` steps; a query between grid points is
rounded up, which can only lower the value (less memory never helps), so the
grid keeps it a bound.  The call holding v ends no sooner than ``acc[v][cap]``:
every split's latency is at least ``max_v min(cpu[v], acc[v][cap])``.
Tested against brute force on small graphs.
"""

from __future__ import annotations

import math

import numpy as np

from ..graph import Graph

__all__ = ["path_bound", "path_tables", "cpu_only"]


def path_bound(graph: Graph, grid: int = 256, subgraphs: int = 1) -> float:
    """The bound above; ``subgraphs`` > 1 (a colour class may then span calls) drops the
    charging of a class's bytes to one member."""
    return path_tables(graph, grid, subgraphs)[0]


def path_tables(graph: Graph, grid: int = 256, subgraphs: int = 1):
    """(the path bound, ``cpu[v]``, ``acc[v][cap]``) of the DP above."""
    cap = graph.memory_cap
    size = _charged_sizes(graph) if subgraphs == 1 else {n.id: n.size for n in graph.nodes}
    step = cap / grid if math.isfinite(cap) and cap > 0 else math.inf
    budgets = np.arange(grid + 1) * step if math.isfinite(step) else np.array([math.inf])
    top = len(budgets) - 1
    oncpu_only = cpu_only(graph)
    inf = math.inf
    cpu: dict[int, float] = {}
    acc: dict[int, np.ndarray] = {}
    best = 0.0
    for v in graph.topological_order():
        node = graph.node(v)
        wait_cpu = 0.0
        wait_acc = np.zeros(len(budgets))
        shift = int(size[v] // step) if math.isfinite(step) else 0
        for u in graph.predecessors(v):
            c = graph.node(u).out_cost
            wait_cpu = max(wait_cpu, min(cpu[u], acc[u][top] + c))
            same = np.full(len(budgets), inf)  # u in v's call, within the bytes left
            if shift <= top:
                same[shift:] = acc[u][: len(budgets) - shift]
            wait_acc = np.maximum(wait_acc, np.minimum(same, min(cpu[u] + c, acc[u][top] + 2 * c)))
        cpu[v] = node.cpu_time + wait_cpu
        if v in oncpu_only:
            acc[v] = np.full(len(budgets), inf)
        else:
            acc[v] = node.accel_time + wait_acc
            acc[v][budgets < size[v]] = inf  # v (and what it carries) alone does not fit
        best = max(best, min(cpu[v], float(acc[v][top])))
    return best, cpu, {v: float(a[top]) for v, a in acc.items()}


def _charged_sizes(graph: Graph) -> dict[int, float]:
    """Bytes charged per node: a colour class's whole size on one member, 0 on the others.

    With one call per accelerator a class sits whole in one call, so along any path
    the charged bytes of the nodes in a call never exceed the call's bytes (each class
    is charged at most once, and only if it is in the call).  The member charged is the
    one on the longest path of accelerator times, where the bytes bind most often:
    an operator graph's weights are sources coloured with the operator that reads
    them, and the operator is the one on the long paths."""
    through = _longest_through(graph)
    size = {n.id: n.size for n in graph.nodes}
    for members in graph.colour_classes().values():
        if len(members) > 1:
            keep = max(members, key=lambda v: (through[v], -members.index(v)))
            total = sum(size[v] for v in members)
            for v in members:
                size[v] = total if v == keep else 0.0
    return size


def _longest_through(graph: Graph) -> dict[int, float]:
    order = graph.topological_order()
    down: dict[int, float] = {}
    for v in order:
        down[v] = graph.node(v).accel_time + max((down[u] for u in graph.predecessors(v)), default=0.0)
    up: dict[int, float] = {}
    for v in reversed(order):
        up[v] = max((up[w] for w in graph.successors(v)), default=0.0) + graph.node(v).accel_time
    return {v: down[v] + up[v] - graph.node(v).accel_time for v in order}


def cpu_only(graph: Graph) -> set[int]:
    """Nodes whose colour class no accelerator can hold (a CPU-only member, or too big)."""
    out: set[int] = set()
    for members in graph.colocation_groups():
        nodes = [graph.node(v) for v in members]
        if not all(n.accel_ok for n in nodes) or sum(n.size for n in nodes) > graph.memory_cap * (1 + 1e-12):
            out.update(members)
    return out
