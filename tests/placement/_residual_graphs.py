"""Small ResNet-like placement graphs: a chain with short skip connections."""

import math
import random

from kfac_ext.placement.graph import Graph, Node


def residual_chain(seed: int, n: int, k: int, l: int) -> Graph:
    """A chain with short skip connections (ResNet-like blocks), CPUs 1.5-10x slower,
    and a cap of a half or a third of the bytes: moves, CPU runs and full devices."""
    rng = random.Random(seed)
    edges = {(v - 1, v) for v in range(2, n + 1)}
    edges |= {(rng.randint(max(1, v - 4), v - 2), v) for v in range(3, n + 1) if rng.random() < 0.35}
    has_out = {u for u, _ in edges}
    nodes = []
    for v in range(1, n + 1):
        accel = round(rng.uniform(0.2, 3.0), 3)
        nodes.append(
            Node(
                id=v,
                name=f"n{v}",
                accel_time=accel,
                cpu_time=round(accel * rng.choice([1.5, 3, 10]), 3),
                size=float(rng.randint(1, 9)),
                accel_ok=rng.random() > 0.05 or l == 0,
                is_backward=False,
                color=None if rng.random() < 0.85 else (v + 1) // 2,
                out_cost=round(rng.uniform(0.0, 4.0), 3) if v in has_out else 0.0,
            )
        )
    total = sum(x.size for x in nodes)
    cap = max(max(x.size for x in nodes), math.ceil(total / rng.choice([2, 3])))
    g = Graph(nodes, sorted(edges), k, l, float(cap))
    g.validate()
    return g
