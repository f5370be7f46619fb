"""A lower bound on the least latency, by a DP along the graph (no solver).

It restates the model's timing rule (:mod:`.model`) for one path at a time,
relaxed: memory caps, colour classes, the number of accelerators and the other
nodes of a call are ignored.  Per node ``v``, two values:

* ``cpu[v]``: a lower bound on v's finish if v is on the CPU pool:
  ``cpu_time(v) + max over inputs u of min(cpu[u], acc[u] + out_cost(u))`` -- an
  input on an accelerator arrives no sooner than its call ends, and the call
  sends u (it has an edge leaving the call) after running u.
* ``acc[v]``: a lower bound on the moment v's call has run v, counted from the
  call's start (its transfers in, then its nodes; v after its inputs inside the
  call): ``accel_time(v) + max over inputs u of min(cpu[u] + out_cost(u), acc[u])`` --
  an outside input is waited for and then fetched; an input in the same call was
  run before v; an input in another call is no better than that.

The call holding v ends no sooner than ``acc[v]``, so every split's latency is at
least ``max_v min(cpu[v], acc[v])``.  Exact on a chain with enough memory;
tested against brute force on small graphs.
"""
from __future__ import annotations

from ..graph import Graph

__all__ = ["path_bound"]


def path_bound(graph: Graph) -> float:
    cpu: dict[int, float] = {}
    acc: dict[int, float] = {}
    best = 0.0
    for v in graph.topological_order():
        node = graph.node(v)
        wait_cpu = wait_acc = 0.0
        for u in graph.predecessors(v):
            c = graph.node(u).out_cost
            wait_cpu = max(wait_cpu, min(cpu[u], acc[u] + c))
            wait_acc = max(wait_acc, min(cpu[u] + c, acc[u]))
        cpu[v] = node.cpu_time + wait_cpu
        acc[v] = node.accel_time + wait_acc if node.accel_ok else float("inf")
        best = max(best, min(cpu[v], acc[v]))
    return best
