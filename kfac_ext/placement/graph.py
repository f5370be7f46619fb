"""The operator graph of the placement engine, in the workloads' JSON schema.

A graph is a DAG of operators (``Node``) with per-node accelerator time, CPU
time, accelerator memory, colour class and output transfer cost, plus the
machine it is placed on: ``num_accelerators`` accelerators ("FPGAs" in the
schema) with ``memory_cap`` bytes each and ``num_cpus`` CPUs.

JSON schema (see workloads/README.md in the repository)::

    {"maxSizePerFPGA": cap, "maxFPGAs": k, "maxCPUs": l,
     "nodes": [{"id", "name", "supportedOnFpga", "cpuLatency", "fpgaLatency",
                "isBackwardNode", "colorClass" (optional), "size"}],
     "edges": [{"sourceId", "destId", "cost"}]}

The edge ``cost`` is the time to move the *source node's* output between an
accelerator and host memory, so it is stored once per node (``out_cost``);
edges out of one node must agree on it.

Construction is lenient (so that :meth:`Graph.validate` can name every
problem); :meth:`Graph.from_json` validates unless told not to.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


class GraphError(ValueError):
    """An invalid graph; the message names the offending node or edge."""


@dataclass(frozen=True)
class Node:
    """One operator of the graph, with its costs as the workloads' JSON gives them."""

    id: int
    name: str
    accel_time: float  # JSON fpgaLatency
    cpu_time: float  # JSON cpuLatency
    size: float  # bytes on an accelerator (JSON size)
    accel_ok: bool  # JSON supportedOnFpga
    is_backward: bool  # JSON isBackwardNode
    color: int | None  # JSON colorClass: same colour => same device
    out_cost: float  # transfer cost of this node's output (0 if no out-edges)

    def describe(self) -> str:
        return f"node {self.id} ({self.name!r})" if self.name else f"node {self.id}"


def _number(value, what: str) -> float:
    # JSON numbers only: a bool is an int to Python and a string would parse
    # ("1e3"), but both are typos in a graph file, not numbers.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GraphError(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        raise GraphError(f"{what} is too large, got {value!r}") from None


def _integer(value, what: str) -> int:
    """A JSON integer (2 or 2.0); never a bool, a fraction or a non-finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GraphError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise GraphError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _flag(value, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise GraphError(f"{what} must be 0/1 or a boolean, got {value!r}")


class Graph:
    """Nodes in a stable order (the file's), edges (src, dst), and the machine."""

    def __init__(
        self,
        nodes: Iterable[Node],
        edges: Iterable[tuple[int, int]],
        num_accelerators: int,
        num_cpus: int,
        memory_cap: float,
        source: str | None = None,
    ):
        self.nodes: list[Node] = list(nodes)
        # Duplicate edges carry no extra meaning (the cost is per source node).
        self.edges: list[tuple[int, int]] = list(dict.fromkeys((int(s), int(d)) for s, d in edges))
        self.num_accelerators = int(num_accelerators)
        self.num_cpus = int(num_cpus)
        self.memory_cap = float(memory_cap)
        self.source = source
        self._by_id: dict[int, Node] = {}
        for n in self.nodes:
            self._by_id.setdefault(n.id, n)
        self._succ: dict[int, list[int]] = defaultdict(list)
        self._pred: dict[int, list[int]] = defaultdict(list)
        for s, d in self.edges:
            self._succ[s].append(d)
            self._pred[d].append(s)

    # ---- access -------------------------------------------------------------
    def node(self, id: int) -> Node:
        try:
            return self._by_id[id]
        except KeyError:
            raise GraphError(f"no node with id {id}") from None

    def __contains__(self, id) -> bool:
        return id in self._by_id

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def ids(self) -> list[int]:
        return [n.id for n in self.nodes]

    def successors(self, id: int) -> list[int]:
        return list(self._succ.get(id, ()))

    def predecessors(self, id: int) -> list[int]:
        return list(self._pred.get(id, ()))

    def colour_classes(self) -> dict[int, list[int]]:
        """colour -> node ids (only coloured nodes)."""
        classes: dict[int, list[int]] = defaultdict(list)
        for n in self.nodes:
            if n.color is not None:
                classes[n.color].append(n.id)
        return dict(classes)

    def colocation_groups(self) -> list[list[int]]:
        """Sets of node ids that must share a device: colour classes, and each
        uncoloured node alone. In a stable order (first member's position)."""
        groups: dict[object, list[int]] = {}
        for n in self.nodes:
            key = ("colour", n.color) if n.color is not None else ("node", n.id)
            groups.setdefault(key, []).append(n.id)
        return list(groups.values())

    def topological_order(self) -> list[int]:
        """Node ids, every edge going forward; ties broken by file order.
        Raises GraphError naming a node on a cycle."""
        position = {n.id: i for i, n in enumerate(self.nodes)}
        indeg = {n.id: 0 for n in self.nodes}
        for s, d in self.edges:
            if d in indeg and s in indeg:
                indeg[d] += 1
        import heapq

        ready = [position[i] for i, deg in indeg.items() if deg == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            u = self.nodes[heapq.heappop(ready)].id
            order.append(u)
            for v in self._succ.get(u, ()):
                if v in indeg:
                    indeg[v] -= 1
                    if indeg[v] == 0:
                        heapq.heappush(ready, position[v])
        if len(order) < len(indeg):
            raise GraphError(self._cycle_message({i for i, d in indeg.items() if d > 0}))
        return order

    def _cycle_message(self, stuck: set[int]) -> str:
        # Every stuck node has a stuck predecessor: walk backwards until a repeat.
        start = min(stuck, key=lambda i: [n.id for n in self.nodes].index(i))
        seen: dict[int, int] = {}
        path: list[int] = []
        u = start
        while u not in seen:
            seen[u] = len(path)
            path.append(u)
            u = next(p for p in self._pred[u] if p in stuck)
        cycle = list(reversed(path[seen[u] :]))
        shown = " -> ".join(str(i) for i in cycle + [cycle[0]])
        return f"graph has a cycle through {self.node(u).describe()}: {shown}"

    # ---- machine ------------------------------------------------------------
    def with_resources(
        self, num_accelerators: int | None = None, num_cpus: int | None = None, memory_cap: float | None = None
    ) -> Graph:
        return Graph(
            self.nodes,
            self.edges,
            self.num_accelerators if num_accelerators is None else num_accelerators,
            self.num_cpus if num_cpus is None else num_cpus,
            self.memory_cap if memory_cap is None else memory_cap,
            source=self.source,
        )

    # ---- validation ---------------------------------------------------------
    def validate(self) -> None:
        """Raise GraphError naming the first offending node/edge, else return."""
        if self.num_accelerators < 0:
            raise GraphError(f"number of accelerators must be >= 0, got {self.num_accelerators}")
        if self.num_cpus < 0:
            raise GraphError(f"number of CPUs must be >= 0, got {self.num_cpus}")
        if self.num_accelerators + self.num_cpus == 0:
            raise GraphError("need at least one device (accelerators + CPUs is 0)")
        if math.isnan(self.memory_cap) or self.memory_cap < 0:
            raise GraphError(f"memory cap must be a non-negative number of bytes, got {self.memory_cap}")
        if not self.nodes:
            raise GraphError("graph has no nodes")
        seen: set[int] = set()
        for n in self.nodes:
            if n.id in seen:
                raise GraphError(f"duplicate node id {n.id}")
            seen.add(n.id)
        for n in self.nodes:
            for field, value in (
                ("accel_time (fpgaLatency)", n.accel_time),
                ("cpu_time (cpuLatency)", n.cpu_time),
                ("size", n.size),
                ("out_cost (edge cost)", n.out_cost),
            ):
                if not math.isfinite(value) or value < 0:
                    raise GraphError(f"{n.describe()}: {field} must be finite and >= 0, got {value}")
        for s, d in self.edges:
            for end, which in ((s, "source"), (d, "destination")):
                if end not in self._by_id:
                    raise GraphError(f"edge {s} -> {d}: {which} {end} is not a node id")
            if s == d:
                raise GraphError(f"graph has a cycle: {self.node(s).describe()} has an edge to itself")
        self.topological_order()  # raises on a cycle
        self._validate_devices()

    def _validate_devices(self) -> None:
        cpus, cap = self.num_cpus, self.memory_cap
        if cpus > 0:
            return  # a CPU runs anything and has no memory cap
        for n in self.nodes:
            if not n.accel_ok:
                raise GraphError(f"{n.describe()} is not supported on an accelerator and there are no CPUs")
            if n.size > cap:
                raise GraphError(
                    f"{n.describe()} needs {n.size:.6g} bytes but an accelerator holds "
                    f"{cap:.6g} and there are no CPUs to run it"
                )
        for group in self.colocation_groups():
            total = sum(self._by_id[i].size for i in group)
            if total > cap:
                colour = self._by_id[group[0]].color
                biggest = max(group, key=lambda i: self._by_id[i].size)
                raise GraphError(
                    f"colour class {colour} ({len(group)} nodes, e.g. {self._by_id[biggest].describe()}) "
                    f"needs {total:.6g} bytes on one device but an accelerator holds {cap:.6g} "
                    f"and there are no CPUs"
                )

    # ---- contiguity ---------------------------------------------------------
    def contiguity_units(self) -> tuple[dict[int, int], list[tuple[int, int]]]:
        """The units a contiguous split is made of, and their order.

        Returns (unit_of: node id -> unit index, unit_edges: DAG edges between
        units, sorted); units are numbered in a topological order.

        A unit starts as a colocation group (a colour class, or an uncoloured
        node). Order edges between units: every edge into a *forward* node
        (inference graphs: every edge); for a unit with no forward node (a
        backward-only colour class) the mirror image v -> u of every
        backward edge u -> v touching it, so it sits where a forward node
        would. Backward nodes follow their forward colour mates, so in a
        training graph a device holds a forward stretch plus its backward
        mirror. Strongly connected sets of units (created when colour classes
        hold several forward nodes) are fused: they cannot be split
        contiguously.
        """
        groups = self.colocation_groups()
        group_of = {i: g for g, members in enumerate(groups) for i in members}
        has_forward = [any(not self._by_id[i].is_backward for i in m) for m in groups]
        arcs: set[tuple[int, int]] = set()
        for s, d in self.edges:
            gs, gd = group_of[s], group_of[d]
            if gs == gd:
                continue
            if not self._by_id[d].is_backward:
                arcs.add((gs, gd))
            elif self._by_id[s].is_backward and (not has_forward[gs] or not has_forward[gd]):
                arcs.add((gd, gs))
        comp = _strongly_connected(len(groups), arcs)
        # Condensation, numbered topologically (Kahn, ties by first member's file order).
        ncomp = max(comp) + 1
        carcs = {(comp[a], comp[b]) for a, b in arcs if comp[a] != comp[b]}
        first = [len(groups)] * ncomp
        for g in range(len(groups)):
            first[comp[g]] = min(first[comp[g]], g)
        indeg = [0] * ncomp
        out: list[list[int]] = [[] for _ in range(ncomp)]
        for a, b in carcs:
            indeg[b] += 1
            out[a].append(b)
        import heapq

        ready = [(first[c], c) for c in range(ncomp) if indeg[c] == 0]
        heapq.heapify(ready)
        number = [0] * ncomp
        count = 0
        while ready:
            _, c = heapq.heappop(ready)
            number[c] = count
            count += 1
            for b in out[c]:
                indeg[b] -= 1
                if indeg[b] == 0:
                    heapq.heappush(ready, (first[b], b))
        unit_of = {i: number[comp[group_of[i]]] for i in group_of}
        unit_edges = sorted({(number[a], number[b]) for a, b in carcs})
        return unit_of, unit_edges

    # ---- JSON ---------------------------------------------------------------
    @classmethod
    def from_json(cls, path_or_dict, validate: bool = True) -> Graph:
        source = None
        if isinstance(path_or_dict, (str, os.PathLike)):
            source = os.fspath(path_or_dict)
            try:
                with open(source) as f:
                    data = json.load(f)
            except OSError as e:
                raise GraphError(f"cannot read graph file {source}: {e.strerror}") from None
            except json.JSONDecodeError as e:
                raise GraphError(f"{source} is not valid JSON: {e}") from None
            except UnicodeDecodeError:
                raise GraphError(f"{source} is not valid JSON: not UTF-8 text") from None
            except RecursionError:
                raise GraphError(f"{source} is nested too deeply to be a graph file") from None
        else:
            data = path_or_dict
        if not isinstance(data, dict):
            raise GraphError("graph JSON must be an object with 'nodes' and 'edges'")
        for key in ("nodes", "edges"):
            if not isinstance(data.get(key), list):
                raise GraphError(f"graph JSON needs a list {key!r}")
        out_cost: dict[int, float] = {}
        edges = []
        for j, e in enumerate(data["edges"]):
            if not isinstance(e, dict) or "sourceId" not in e or "destId" not in e:
                raise GraphError(f"edges[{j}] needs 'sourceId' and 'destId'")
            s, d = e["sourceId"], e["destId"]
            if not _is_id(s) or not _is_id(d):
                raise GraphError(f"edges[{j}]: node ids must be integers, got {s!r} -> {d!r}")
            cost = _number(e.get("cost", 0.0), f"edge {s} -> {d}: cost")
            if s in out_cost and not _close(out_cost[s], cost):
                raise GraphError(
                    f"edge {s} -> {d}: cost {cost} differs from {out_cost[s]} on another "
                    f"edge out of node {s} (the cost belongs to the source's output)"
                )
            out_cost[s] = max(out_cost.get(s, cost), cost)
            edges.append((s, d))
        nodes = []
        for j, n in enumerate(data["nodes"]):
            if not isinstance(n, dict) or not _is_id(n.get("id")):
                got = f", got {n.get('id')!r}" if isinstance(n, dict) and "id" in n else ""
                raise GraphError(f"nodes[{j}] needs an integer 'id'{got}")
            i = n["id"]
            where = f"node {i}"
            for key in ("fpgaLatency", "cpuLatency"):
                if key not in n:
                    raise GraphError(f"{where}: missing {key!r}")
            color = n.get("colorClass")
            if color is not None and not _is_id(color):
                raise GraphError(f"{where}: colorClass must be an integer, got {color!r}")
            nodes.append(
                Node(
                    id=i,
                    name=str(n.get("name", "")),
                    accel_time=_number(n["fpgaLatency"], f"{where}: fpgaLatency"),
                    cpu_time=_number(n["cpuLatency"], f"{where}: cpuLatency"),
                    size=_number(n.get("size", 0.0), f"{where}: size"),
                    accel_ok=_flag(n.get("supportedOnFpga", 1), f"{where}: supportedOnFpga"),
                    is_backward=_flag(n.get("isBackwardNode", 0), f"{where}: isBackwardNode"),
                    color=color,
                    out_cost=out_cost.get(i, 0.0),
                )
            )
        k = _integer(data.get("maxFPGAs", 1), "maxFPGAs")
        l = _integer(data.get("maxCPUs", 0), "maxCPUs")
        cap = _number(data.get("maxSizePerFPGA", math.inf), "maxSizePerFPGA")
        graph = cls(nodes, edges, k, l, cap, source=source)
        if validate:
            graph.validate()
        return graph

    def to_json(self) -> dict:
        nodes = []
        for n in self.nodes:
            d = {
                "name": n.name,
                "id": n.id,
                "supportedOnFpga": int(n.accel_ok),
                "cpuLatency": n.cpu_time,
                "fpgaLatency": n.accel_time,
                "isBackwardNode": int(n.is_backward),
                "size": n.size,
            }
            if n.color is not None:
                d["colorClass"] = n.color
            nodes.append(d)
        edges = [
            {"sourceId": s, "destId": d, "cost": self._by_id[s].out_cost if s in self._by_id else 0.0}
            for s, d in self.edges
        ]
        return {
            "maxSizePerFPGA": self.memory_cap,
            "maxFPGAs": self.num_accelerators,
            "maxCPUs": self.num_cpus,
            "nodes": nodes,
            "edges": edges,
        }

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    def __repr__(self) -> str:
        return (
            f"Graph({len(self.nodes)} nodes, {len(self.edges)} edges, k={self.num_accelerators}, "
            f"cpus={self.num_cpus}, memory_cap={self.memory_cap:.6g})"
        )


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def _strongly_connected(n: int, arcs: set[tuple[int, int]]) -> list[int]:
    """Component index per vertex (iterative Tarjan; graphs can be deep)."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in arcs:
        adj[a].append(b)
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    comp = [-1] * n
    counter = ncomp = 0
    for root in range(n):
        if index[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            if i < len(adj[v]):
                work.append((v, i + 1))
                w = adj[v][i]
                if index[w] == -1:
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp[w] = ncomp
                    if w == v:
                        break
                ncomp += 1
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return comp
