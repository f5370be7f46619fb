"""Random small placement graphs and brute-force optima (shared by the MILP/latency tests)."""

import itertools
import math
import random

from kfac_ext.placement.graph import Graph, Node
from kfac_ext.placement.objective import Placement, PlacementError


def node(
    i: int, accel: float, cpu: float, out_cost: float, size: float = 1.0, color=None, accel_ok: bool = True
) -> Node:
    """A forward node with id ``i`` for hand-built test graphs."""
    return Node(
        id=i,
        name=f"v{i}",
        accel_time=accel,
        cpu_time=cpu,
        size=size,
        accel_ok=accel_ok,
        is_backward=False,
        color=color,
        out_cost=out_cost,
    )


def random_graph(
    seed: int, n_nodes: int = 6, k: int = 2, l: int = 1, colours: bool = False, tight_memory: bool = False
) -> Graph:
    rng = random.Random(seed)
    edges = set()
    for v in range(2, n_nodes + 1):
        for u in rng.sample(range(1, v), k=min(v - 1, rng.randint(1, 2))):
            edges.add((u, v))
    has_out = {u for u, _ in edges}
    nodes = []
    for v in range(1, n_nodes + 1):
        colour = (v + 1) // 2 if colours and rng.random() < 0.5 else None
        nodes.append(
            Node(
                id=v,
                name=f"n{v}",
                accel_time=round(rng.uniform(0.5, 5.0), 3),
                cpu_time=round(rng.uniform(1.0, 12.0), 3),
                size=float(rng.randint(1, 9)),
                accel_ok=rng.random() > 0.1 or l == 0,
                is_backward=False,
                color=colour,
                out_cost=round(rng.uniform(0.0, 2.0), 3) if v in has_out else 0.0,
            )
        )
    total = sum(n.size for n in nodes)
    cap = max(max(n.size for n in nodes), math.ceil(total / 2)) if tight_memory else total
    g = Graph(nodes, sorted(edges), k, l, float(cap))
    g.validate()
    return g


def all_placements(graph: Graph):
    """Every placement of the colocation groups onto the devices."""
    groups = graph.colocation_groups()
    devices = [("accel", a) for a in range(graph.num_accelerators)] + [("cpu", c) for c in range(graph.num_cpus)]
    for choice in itertools.product(range(len(devices)), repeat=len(groups)):
        acc = [[] for _ in range(graph.num_accelerators)]
        cpus = [[] for _ in range(graph.num_cpus)]
        for g, d in zip(groups, choice):
            kind, j = devices[d]
            (acc if kind == "accel" else cpus)[j].extend(g)
        yield Placement(acc, cpus)


def brute_force(graph: Graph, score) -> float:
    best = math.inf
    for p in all_placements(graph):
        try:
            best = min(best, score(graph, p))
        except PlacementError:
            continue
    return best
