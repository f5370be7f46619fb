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

__all__ = ["ScheduledNode", "chain_split", "latency_of", "latency_schedule",
           "latency_lower_bound", "transfer_delay"]


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


def chain_split(graph: Graph, order: list[int] | None = None) -> Placement | None:
    """A good contiguous split for latency, by dynamic programming over the chain of
    colocation groups in topological order (what PipeDream does for throughput).

    Segments of that chain go to accelerators (within the memory cap) or to a CPU;
    the cost of a chain split is its total compute time plus, at every boundary,
    the transfer cost of the outputs crossing it once per accelerator side -- the
    exact latency when the graph is a chain, an estimate otherwise (the caller
    scores the result with :func:`latency_of`).  O(groups^2 * k) time.
    ``order``: the topological order to follow (default: the graph's).
    Returns None when no chain split fits the devices."""
    pos = {v: i for i, v in enumerate(order or graph.topological_order())}
    groups = sorted(graph.colocation_groups(), key=lambda m: min(pos[i] for i in m))
    G, k, cap = len(groups), graph.num_accelerators, graph.memory_cap
    gi = {i: g for g, m in enumerate(groups) for i in m}
    acc_t = [sum(graph.node(i).accel_time for i in m) for m in groups]
    cpu_t = [sum(graph.node(i).cpu_time for i in m) for m in groups]
    size = [sum(graph.node(i).size for i in m) for m in groups]
    ok = [all(graph.node(i).accel_ok for i in m) for m in groups]
    # cut[b]: transfer of the outputs crossing the boundary before group b
    diff = [0.0] * (G + 2)
    for n in graph.nodes:
        ends = [gi[n.id]] + [gi[w] for w in graph.successors(n.id)]
        lo, hi = min(ends), max(ends)
        if n.out_cost > 0 and lo < hi:
            diff[lo + 1] += n.out_cost
            diff[hi + 1] -= n.out_cost
    cut, run = [0.0] * (G + 1), 0.0
    for b in range(G + 1):
        run += diff[b]
        cut[b] = run
    pre_acc, pre_cpu = [0.0], [0.0]
    for g in range(G):
        pre_acc.append(pre_acc[-1] + acc_t[g])
        pre_cpu.append(pre_cpu[-1] + cpu_t[g])
    inf = float("inf")
    # f[e][a]: best cost of groups [0, e) with a accelerators used; how[e][a] = (b, kind)
    f = [[inf] * (k + 1) for _ in range(G + 1)]
    how: list[list] = [[None] * (k + 1) for _ in range(G + 1)]
    f[0][0] = 0.0
    for e in range(1, G + 1):
        boundary = cut[e] if e < G else 0.0
        for a in range(k + 1):
            if graph.num_cpus:  # a CPU segment [b, e): transfers are paid on the accelerator sides
                for b in range(e):
                    c = f[b][a] + pre_cpu[e] - pre_cpu[b]
                    if c < f[e][a]:
                        f[e][a], how[e][a] = c, (b, "cpu")
            if a == 0:
                continue
            mem = 0.0
            for b in range(e - 1, -1, -1):  # an accelerator segment [b, e), growing leftwards
                if not ok[b]:
                    break
                mem += size[b]
                if mem > cap:
                    break
                c = f[b][a - 1] + pre_acc[e] - pre_acc[b] + boundary + (cut[b] if b > 0 else 0.0)
                if c < f[e][a]:
                    f[e][a], how[e][a] = c, (b, "accel")
    a = min(range(k + 1), key=lambda a: f[G][a])
    if f[G][a] == inf:
        return None
    acc = [[] for _ in range(k)]
    cpus = [[] for _ in range(graph.num_cpus)]
    e = G
    while e > 0:
        b, kind = how[e][a]
        members = [i for g in range(b, e) for i in groups[g]]
        if kind == "accel":
            a -= 1
            acc[a].extend(members)
        else:
            cpus[0].extend(members)
        e = b
    return Placement(acc, cpus)
