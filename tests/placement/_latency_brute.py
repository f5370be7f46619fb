"""Brute-force latency optimum in the paper's model: every assignment of nodes to the
CPU pool and to calls, scored by the one evaluator (infeasible splits skipped)."""

import itertools
import math

from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency.model import Split, evaluate
from kfac_ext.placement.objective import PlacementError


def brute_force_latency(graph: Graph, subgraphs: int = 1) -> float:
    return min((t.latency for _, t in all_timings(graph, subgraphs)), default=math.inf)


def all_timings(graph: Graph, subgraphs: int = 1):
    """Every feasible split with its schedule (the evaluator's Timing)."""
    ids = graph.ids
    slots = [(a, j) for a in range(graph.num_accelerators) for j in range(subgraphs)]
    for choice in itertools.product(range(-1, len(slots)), repeat=len(ids)):
        split = Split.of(
            [(slots[s][0], [v for v, d in zip(ids, choice) if d == s]) for s in range(len(slots))],
            [v for v, d in zip(ids, choice) if d < 0],
        )
        try:
            yield split, evaluate(graph, split, subgraphs)
        except PlacementError:
            continue


def window(graph: Graph, start: int, size: int, k: int, cap_share: float) -> Graph:
    """``size`` consecutive nodes of the graph's topological order from ``start``, on ``k``
    accelerators whose cap is ``cap_share`` of the window's total size."""
    order = graph.topological_order()[start : start + size]
    keep = set(order)
    nodes = [graph.node(v) for v in order]
    edges = [(s, d) for s, d in graph.edges if s in keep and d in keep]
    fixed = []
    senders = {s for s, _ in edges}
    for n in nodes:  # a node whose consumers fell outside the window sends nothing
        fixed.append(n if n.id in senders else type(n)(**{**n.__dict__, "out_cost": 0.0}))
    cap = cap_share * sum(n.size for n in nodes)
    g = Graph(fixed, edges, k, 1, max(cap, max(n.size for n in nodes)))
    g.validate()
    return g
