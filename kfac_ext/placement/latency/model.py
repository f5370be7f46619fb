"""The latency model of Tarnawski et al. (2020), as the authors' code defines it.

Read from msr-fiddle/dnn-partitioning: the IP ``latency-ip/lip.py`` and the
evaluator ``computeLatency`` in ``latency-greedy/greedy.cpp``.

* Every node is on one device: the CPU pool or one *call* of an accelerator.
  CPU-only nodes (``accel_ok`` false) are on the CPU pool; a colour class is on
  one device (all on the CPU pool, or all on one accelerator); the sizes on an
  accelerator (all its calls together) fit its memory cap.
* An accelerator runs at most ``q`` calls (``q = 1`` by default, as the
  authors' ``MAX_SUBGRAPHS_PER_FPGA``), one after another in the order given.
  Each call's node set is *contiguous*: no path leaves it and comes back.
* A call starts when every outside node feeding it has finished (and the
  accelerator's previous call has ended); it then pays, one after another,
  the transfer cost of each distinct outside node feeding it, the summed
  accelerator time of its nodes, and the transfer cost of each of its nodes
  with an edge leaving the call.  All its nodes finish at the call's end.
* The CPU pool has no core limit (the authors ignore ``maxCPUs``): a CPU node
  finishes at its CPU time after its latest input; the CPU side pays no
  transfer (the accelerator's call already did).
* Latency = the latest finish.  Calls that wait on each other in a cycle
  (possible even when each is contiguous) have no schedule: such a split is
  infeasible, as it is in the authors' IP.

:class:`Split` is the one device encoding of the latency package: a list of
calls, each ``(accelerator, node ids)``, in run order per accelerator, and the
CPU pool's nodes.  :func:`evaluate` is the one evaluator; every solver's answer
is scored by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Graph
from ..objective import Placement, PlacementError

__all__ = [
    "Split",
    "Timing",
    "evaluate",
    "latency_of",
    "check_split",
    "split_from_placement",
    "contiguous_pieces",
    "is_contiguous",
]


@dataclass(frozen=True)
class Split:
    """``calls[c] = (accelerator, node ids)``; an accelerator's calls run in list order."""

    calls: tuple[tuple[int, tuple[int, ...]], ...]
    cpu: tuple[int, ...] = ()

    @classmethod
    def of(cls, calls, cpu=()) -> Split:
        return cls(tuple((int(a), tuple(nodes)) for a, nodes in calls if nodes), tuple(cpu))

    def device_of(self) -> dict[int, int]:
        """node id -> call index, or -1 for the CPU pool; raises on a node placed twice."""
        where: dict[int, int] = {}
        for c, (_, nodes) in enumerate(self.calls):
            for v in nodes:
                if v in where:
                    raise PlacementError(f"node {v} is placed twice")
                where[v] = c
        for v in self.cpu:
            if v in where:
                raise PlacementError(f"node {v} is placed twice")
            where[v] = -1
        return where

    def to_placement(self, num_accelerators: int) -> Placement:
        """The experts' format: node ids per accelerator (calls concatenated), one CPU list."""
        accel: list[list[int]] = [[] for _ in range(num_accelerators)]
        for a, nodes in self.calls:
            accel[a].extend(nodes)
        return Placement(accel, [list(self.cpu)])


@dataclass
class Timing:
    """The schedule of one sample: finish time per node, and per call its parts."""

    latency: float
    finish: dict[int, float]
    calls: list[dict] = field(default_factory=list)  # start, transfer_in, compute, transfer_out, finish


def is_contiguous(graph: Graph, nodes) -> bool:
    """True when no path leaves ``nodes`` and comes back into them."""
    inside = set(nodes)
    stack = [w for v in inside for w in graph.successors(v) if w not in inside]
    seen = set(stack)
    while stack:  # everything reachable after leaving the set
        u = stack.pop()
        for w in graph.successors(u):
            if w in inside:
                return False
            if w not in seen:
                seen.add(w)
                stack.append(w)
    return True


def check_split(graph: Graph, split: Split, subgraphs: int = 1, check_memory: bool = True) -> None:
    """Raise PlacementError naming the first rule of the model the split breaks."""
    if subgraphs < 1:
        raise ValueError(f"subgraphs must be >= 1, got {subgraphs}")
    where = split.device_of()
    for v in where:
        if v not in graph:
            raise PlacementError(f"the split places node {v}, which is not in the graph")
    for n in graph.nodes:
        if n.id not in where:
            raise PlacementError(f"{n.describe()} is not placed")
    per_accel: dict[int, list[int]] = {}
    for c, (a, nodes) in enumerate(split.calls):
        if not 0 <= a < graph.num_accelerators:
            raise PlacementError(
                f"call {c} is on accelerator {a}, but the graph has {graph.num_accelerators} accelerators"
            )
        per_accel.setdefault(a, []).append(c)
        for v in nodes:
            if not graph.node(v).accel_ok:
                raise PlacementError(f"{graph.node(v).describe()} runs only on CPUs but is on accelerator {a}")
        if not is_contiguous(graph, nodes):
            raise PlacementError(
                f"call {c} (accelerator {a}) is not contiguous: a path leaves its nodes and comes back"
            )
    for a, calls in per_accel.items():
        if len(calls) > subgraphs:
            raise PlacementError(f"accelerator {a} runs {len(calls)} calls, more than subgraphs={subgraphs}")
        mem = sum(graph.node(v).size for c in calls for v in split.calls[c][1])
        if check_memory and mem > graph.memory_cap * (1 + 1e-12):
            raise PlacementError(f"accelerator {a} holds {mem:.6g} bytes, over the cap of {graph.memory_cap:.6g}")
    for colour, members in graph.colour_classes().items():
        devices = {-1 if where[v] < 0 else split.calls[where[v]][0] for v in members}
        if len(devices) > 1:
            raise PlacementError(
                f"colour class {colour} is split over devices "
                f"{sorted('cpu' if d < 0 else f'accelerator {d}' for d in devices)}"
            )


def evaluate(graph: Graph, split: Split, subgraphs: int = 1, check_memory: bool = True) -> Timing:
    """The schedule of ``split`` in the model above; raises PlacementError if infeasible."""
    check_split(graph, split, subgraphs, check_memory)
    where = split.device_of()
    ncalls = len(split.calls)
    # units: calls 0..ncalls-1, then one unit per CPU node
    cpu_unit = {v: ncalls + i for i, v in enumerate(split.cpu)}
    unit = {v: (c if c >= 0 else cpu_unit[v]) for v, c in where.items()}
    nunits = ncalls + len(split.cpu)
    preds: list[set[int]] = [set() for _ in range(nunits)]
    last_on: dict[int, int] = {}
    for c, (a, _) in enumerate(split.calls):  # an accelerator's calls run in order
        if a in last_on:
            preds[c].add(last_on[a])
        last_on[a] = c
    feeders: list[set[int]] = [set() for _ in range(ncalls)]  # outside nodes feeding a call
    leavers: list[set[int]] = [set() for _ in range(ncalls)]  # inside nodes with an edge out
    for s, d in graph.edges:
        us, ud = unit[s], unit[d]
        if us == ud:
            continue
        preds[ud].add(us)
        if ud < ncalls:
            feeders[ud].add(s)
        if us < ncalls:
            leavers[us].add(s)
    order = _unit_order(preds, nunits)
    if order is None:
        raise PlacementError("the split's calls wait on each other in a cycle: no schedule exists")
    finish = [0.0] * nunits
    call_rows: list[dict] = [{} for _ in range(ncalls)]
    cpu_nodes = split.cpu
    for u in order:
        ready = max((finish[p] for p in preds[u]), default=0.0)
        if u >= ncalls:
            finish[u] = ready + graph.node(cpu_nodes[u - ncalls]).cpu_time
            continue
        t_in = sum(graph.node(v).out_cost for v in feeders[u])
        compute = sum(graph.node(v).accel_time for v in split.calls[u][1])
        t_out = sum(graph.node(v).out_cost for v in leavers[u])
        finish[u] = ready + t_in + compute + t_out
        call_rows[u] = {
            "accelerator": split.calls[u][0],
            "start": ready,
            "transfer_in": t_in,
            "compute": compute,
            "transfer_out": t_out,
            "finish": finish[u],
        }
    node_finish = {v: finish[unit[v]] for v in where}
    return Timing(max(finish, default=0.0), node_finish, call_rows)


def latency_of(graph: Graph, split: Split, subgraphs: int = 1, check_memory: bool = True) -> float:
    """Single-sample latency of ``split`` in the paper's model."""
    return evaluate(graph, split, subgraphs, check_memory).latency


def _unit_order(preds: list[set[int]], n: int) -> list[int] | None:
    """A topological order of the units, or None when they form a cycle."""
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for u in range(n):
        for p in preds[u]:
            succ[p].append(u)
            indeg[u] += 1
    ready = [u for u in range(n) if indeg[u] == 0]
    order = []
    while ready:
        u = ready.pop()
        order.append(u)
        for w in succ[u]:
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    return order if len(order) == n else None


def contiguous_pieces(graph: Graph, nodes) -> list[list[int]]:
    """``nodes`` cut into contiguous pieces, in an order that runs them one after
    another: a node's piece is one more than its inside ancestors' reached
    through an outside node (the authors' ``reworkSplitIntoContiguous``).
    One piece when the set is already contiguous."""
    inside = set(nodes)
    level: dict[int, int] = {}
    for v in graph.topological_order():
        best = 1 if v in inside else 0
        for u in graph.predecessors(v):
            best = max(best, level[u] + (1 if (v in inside and u not in inside) else 0))
        level[v] = best
    pieces: dict[int, list[int]] = {}
    for v in nodes:
        pieces.setdefault(level[v], []).append(v)
    return [pieces[p] for p in sorted(pieces)]


def split_from_placement(graph: Graph, placement: Placement) -> tuple[Split, int]:
    """A Placement (experts' format) as a Split, and the subgraphs it needs: each
    accelerator's nodes cut into contiguous pieces run in order (one piece when
    contiguous); every CPU's nodes go to the CPU pool."""
    calls, most = [], 1
    for a, nodes in enumerate(placement.accelerators):
        if not nodes:
            continue
        pieces = contiguous_pieces(graph, nodes)
        most = max(most, len(pieces))
        calls.extend((a, tuple(p)) for p in pieces)
    cpu = tuple(v for nodes in placement.cpus for v in nodes)
    return Split.of(calls, cpu), most
