"""Baselines scored with the same objective as the optimum (objective.py).

* ``one_device``: everything on one accelerator (on CPU 0 if there is no
  accelerator or some node runs only on CPUs). Scored even when it breaks
  the memory cap (``stats["memory_ok"]`` says so), as a reference point.
* ``greedy``: walk the units in topological order and fill accelerator
  after accelerator up to an equal share of the accelerator time (and the
  memory cap); a CPU-only unit opens a CPU stage. Always a contiguous chain.
* ``pipedream``: PipeDream's chain DP — the exact optimum over splits of
  one topological order of the units into consecutive stages (the same C++
  solver restricted to the prefixes of that order).
* ``expert``: a hand-made split file; an inference split applied to a
  training graph places each backward node with its forward colour mates.
"""

from __future__ import annotations

import time

from .dp import InfeasibleError, UnitProblem, solve_contiguous
from .graph import Graph
from .objective import Placement, Solution


def one_device(graph: Graph) -> Solution:
    """Everything on accelerator 0; on CPU 0 if a node cannot run on an
    accelerator or there is none (a single device either way)."""
    t0 = time.perf_counter()
    k, l = (min(n, len(graph)) for n in (graph.num_accelerators, graph.num_cpus))  # pad, but boundedly
    on_cpu = k == 0 or (l > 0 and not all(n.accel_ok for n in graph.nodes))
    ids = graph.ids
    if on_cpu:
        placement = Placement([[] for _ in range(k)], [ids] + [[] for _ in range(l - 1)])
    else:
        placement = Placement([ids] + [[] for _ in range(k - 1)], [[] for _ in range(l)])
    return Solution.evaluated(graph, placement, "one", solve_seconds=time.perf_counter() - t0, check_memory=False)


def greedy(graph: Graph) -> Solution:
    """Equal-share fill over a topological order of the units."""
    t0 = time.perf_counter()
    problem = UnitProblem.from_graph(graph, merge=False)
    k, l, cap = graph.num_accelerators, graph.num_cpus, graph.memory_cap
    target = sum(a for a, ok in zip(problem.accel_time, problem.accel_ok) if ok) / max(k, 1)
    stages: list[tuple[str, list[int]]] = []  # (kind, units) in pipeline order
    used = {"accel": 0, "cpu": 0}
    load = mem = 0.0

    def open_stage(kind: str) -> bool:
        nonlocal load, mem
        limit = k if kind == "accel" else l
        if used[kind] >= limit:
            return False
        used[kind] += 1
        stages.append((kind, []))
        load = mem = 0.0
        return True

    for u in range(problem.num_units):
        a, s, ok = problem.accel_time[u], problem.size[u], problem.accel_ok[u]
        want_accel = ok and k > 0 and s <= cap
        current = stages[-1][0] if stages else None
        if want_accel and current == "accel" and mem + s <= cap and (load + a <= target or not stages[-1][1]):
            pass  # still room on this accelerator
        elif want_accel and open_stage("accel"):
            pass
        elif want_accel and current == "accel" and mem + s <= cap:
            pass  # out of accelerators: the last one takes the rest
        elif current == "cpu":
            pass
        elif not open_stage("cpu"):
            raise InfeasibleError(f"greedy ran out of devices at unit {u} (nodes {problem.unit_nodes[u][:3]}...)")
        stages[-1][1].append(u)
        load += a if stages[-1][0] == "accel" else problem.cpu_time[u]
        mem += s
    accel = [[i for u in units for i in problem.unit_nodes[u]] for kind, units in stages if kind == "accel"]
    cpus = [[i for u in units for i in problem.unit_nodes[u]] for kind, units in stages if kind == "cpu"]
    placement = Placement(accel + [[] for _ in range(k - len(accel))], cpus + [[] for _ in range(l - len(cpus))])
    return Solution.evaluated(graph, placement, "greedy", solve_seconds=time.perf_counter() - t0, check_memory=False)


def pipedream(graph: Graph) -> Solution:
    """PipeDream's split: the contiguous DP over one topological order (a chain)."""
    return solve_contiguous(graph, chain=True, method="pipedream")


def expert(graph: Graph, split) -> Solution:
    """Score a split file (or Placement); completes it by colour classes."""
    t0 = time.perf_counter()
    placement = split if isinstance(split, Placement) else Placement.from_json(split)
    placement = placement.complete_by_colour(graph)
    return Solution.evaluated(graph, placement, "expert", solve_seconds=time.perf_counter() - t0, check_memory=False)


BASELINES = {"one": one_device, "greedy": greedy, "pipedream": pipedream}

__all__ = ["BASELINES", "expert", "greedy", "one_device", "pipedream"]
