"""The latency objective: how long one sample takes through a placed graph.

Throughput (objective.py) is the steady state of a pipeline fed a stream of
samples; latency is the time from a single sample's arrival to its last
result (Tarnawski et al. 2020 optimise both).  The model, made precise:

* Node ``v`` placed on device ``d`` runs for ``accel_time`` on an
  accelerator, ``cpu_time`` on a CPU.
* A device runs its nodes **one at a time**, in the graph's topological order
  (``Graph.topological_order()``: ties by file order) -- the order a runtime
  executing the sequential program on that device would use.  A node starts
  when its device has finished the node before it there and all its inputs
  have arrived.
* An edge ``u -> v`` between different devices delays ``v`` by the transfer
  of ``u``'s output: ``out_cost(u)`` for every accelerator end of the edge
  (accelerator <-> host memory copies; two for accelerator -> accelerator
  through the host, none between CPUs, which share host memory).  Transfers
  are done by copy engines and do not occupy the devices; an edge inside one
  device is free.
* Latency = the finish time of the last node.  Given a placement the schedule
  is determined, so :func:`latency_of` is exact;
  ``milp.solve_milp(graph, objective="latency")`` searches placements under
  the same model.

Memory caps, colour classes and CPU-only nodes constrain placements as for
throughput (``objective.check_placement``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .graph import Graph
from .objective import Placement, check_placement

__all__ = ["ScheduledNode", "latency_of", "latency_schedule", "latency_lower_bound",
           "transfer_delay"]


@dataclass(frozen=True)
class ScheduledNode:
    device: tuple[str, int]  # ("accel" | "cpu", index)
    start: float
    finish: float


def transfer_delay(out_cost: float, src: tuple[str, int], dst: tuple[str, int]) -> float:
    """Delay of an output of transfer cost ``out_cost`` from device src to dst."""
    if src == dst:
        return 0.0
    return out_cost * ((src[0] == "accel") + (dst[0] == "accel"))


def latency_schedule(graph: Graph, placement: Placement,
                     check_memory: bool = True) -> dict[int, ScheduledNode]:
    """Start and finish time of every node of one sample (see the module docstring).
    Checks the placement first (``check_memory=False`` scores one over the cap)."""
    check_placement(graph, placement, check_memory)
    where = placement.device_of()
    free_at: dict[tuple[str, int], float] = {}
    out: dict[int, ScheduledNode] = {}
    for v in graph.topological_order():
        dev = where[v]
        node = graph.node(v)
        ready = free_at.get(dev, 0.0)
        for u in graph.predecessors(v):
            arrival = out[u].finish + transfer_delay(graph.node(u).out_cost, out[u].device, dev)
            ready = max(ready, arrival)
        finish = ready + (node.accel_time if dev[0] == "accel" else node.cpu_time)
        out[v] = ScheduledNode(dev, ready, finish)
        free_at[dev] = finish
    return out


def latency_of(graph: Graph, placement: Placement, check_memory: bool = True) -> float:
    """Single-sample latency of ``placement`` (the last node's finish time)."""
    schedule = latency_schedule(graph, placement, check_memory)
    return max((s.finish for s in schedule.values()), default=0.0)


def latency_lower_bound(graph: Graph) -> float:
    """No placement is faster than the longest path with every node at its fastest
    allowed time and free transfers."""
    has_accel = graph.num_accelerators > 0
    has_cpu = graph.num_cpus > 0
    finish: dict[int, float] = {}
    for v in graph.topological_order():
        n = graph.node(v)
        options = []
        if has_accel and n.accel_ok:
            options.append(n.accel_time)
        if has_cpu:
            options.append(n.cpu_time)
        t = min(options) if options else 0.0
        finish[v] = max((finish[u] for u in graph.predecessors(v)), default=0.0) + t
    return max(finish.values(), default=0.0)
