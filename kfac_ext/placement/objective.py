"""The throughput (max-load) objective, placements and solutions.

Cost model (Tarnawski et al. 2020, as in the authors' tools):

* An accelerator's load is the accelerator time of its nodes plus the
  transfer cost ``out_cost`` of every *distinct* node whose output crosses
  into or out of its node set (a node in the set with a consumer outside it,
  or a node outside it with a consumer inside it). Each crossing output is
  counted once per device, however many edges carry it.
* A CPU's load is the CPU time of its nodes only: CPUs work in host memory,
  which is where accelerators send and fetch data, so the transfer is paid
  on the accelerator side.
* Memory: the sizes of an accelerator's nodes add up to at most the cap;
  CPUs have no cap. Nodes with ``accel_ok`` false run only on CPUs. A colour
  class is never split.

The pipeline's throughput is 1 / (max load), so we minimise the max load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .graph import Graph, GraphError


class PlacementError(ValueError):
    """A placement that is not valid for its graph (the message says why)."""


@dataclass
class Placement:
    """The experts' split format: node ids per accelerator and per CPU."""

    accelerators: list[list[int]]
    cpus: list[list[int]] = field(default_factory=list)

    @classmethod
    def from_json(cls, path_or_dict) -> Placement:
        data = path_or_dict
        if isinstance(path_or_dict, (str, os.PathLike)):
            try:
                with open(path_or_dict) as f:
                    data = json.load(f)
            except OSError as e:
                raise PlacementError(f"cannot read split file {os.fspath(path_or_dict)}: {e.strerror}") from None
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                raise PlacementError(f"{os.fspath(path_or_dict)} is not valid JSON: {e}") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("fpgas"), list)
            or not isinstance(data.get("cpus", []), list)
        ):
            raise PlacementError("a split needs an 'fpgas' list of {\"nodes\": [...]} (and optionally 'cpus')")

        def lists(key):
            out = []
            for j, dev in enumerate(data.get(key, [])):
                nodes = dev.get("nodes") if isinstance(dev, dict) else None
                if not isinstance(nodes, list) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in nodes
                ):
                    raise PlacementError(f"{key}[{j}] needs a 'nodes' list of integer ids")
                out.append(list(nodes))
            return out

        return cls(lists("fpgas"), lists("cpus"))

    def to_json(self, loads: tuple[list[float], list[float]] | None = None) -> dict:
        acc_loads, cpu_loads = (
            loads if loads is not None else ([None] * len(self.accelerators), [None] * len(self.cpus))
        )
        return {
            "fpgas": [{"nodes": list(n), "load": x} for n, x in zip(self.accelerators, acc_loads)],
            "cpus": [{"nodes": list(n), "load": x} for n, x in zip(self.cpus, cpu_loads)],
        }

    def device_of(self) -> dict[int, tuple[str, int]]:
        """node id -> ("accel" | "cpu", index); raises on a node placed twice."""
        where: dict[int, tuple[str, int]] = {}
        for kind, devices in (("accel", self.accelerators), ("cpu", self.cpus)):
            for d, nodes in enumerate(devices):
                for i in nodes:
                    if i in where:
                        raise PlacementError(f"node {i} is placed twice ({_dev(*where[i])} and {_dev(kind, d)})")
                    where[i] = (kind, d)
        return where

    def complete_by_colour(self, graph: Graph) -> Placement:
        """Place every node the split leaves out with its colour mates.

        An inference split applied to the training graph: each backward node
        goes where its forward node (same colour class) is.
        """
        where = self.device_of()
        accel = [list(n) for n in self.accelerators]
        cpus = [list(n) for n in self.cpus]
        for colour, members in graph.colour_classes().items():
            devices = {where[i] for i in members if i in where}
            if len(devices) > 1:
                raise PlacementError(
                    f"colour class {colour} is split over {', '.join(_dev(*d) for d in sorted(devices))}"
                )
            if not devices:
                continue
            kind, d = devices.pop()
            for i in members:
                if i not in where:
                    (accel if kind == "accel" else cpus)[d].append(i)
                    where[i] = (kind, d)
        missing = [i for i in graph.ids if i not in where]
        if missing:
            raise PlacementError(
                f"the split does not place node {missing[0]} nor any of its colour class"
                + (f" ({len(missing)} nodes unplaced)" if len(missing) > 1 else "")
            )
        return Placement(accel, cpus)


def _dev(kind: str, d: int) -> str:
    return f"accelerator {d}" if kind == "accel" else f"CPU {d}"


def crossing_outputs(graph: Graph, node_ids) -> set[int]:
    """Ids of the distinct nodes whose output crosses into or out of the set."""
    inside = set(node_ids)
    crossing: set[int] = set()
    for s, d in graph.edges:
        if (s in inside) != (d in inside):
            crossing.add(s)
    return crossing


def device_load(graph: Graph, node_ids, on_cpu: bool = False) -> float:
    """Load of one device holding ``node_ids`` (see the module docstring).

    On an accelerator: accelerator time + out_cost of every distinct node
    whose output crosses into or out of the set. On a CPU: CPU time only.
    """
    nodes = [graph.node(i) for i in node_ids]
    if on_cpu:
        return float(sum(n.cpu_time for n in nodes))
    compute = sum(n.accel_time for n in nodes)
    return float(compute + sum(graph.node(i).out_cost for i in crossing_outputs(graph, node_ids)))


def device_breakdown(graph: Graph, node_ids, on_cpu: bool = False) -> dict:
    """compute, transfer, load and memory of one device (for tables and plots)."""
    nodes = [graph.node(i) for i in node_ids]
    if on_cpu:
        compute, transfer = sum(n.cpu_time for n in nodes), 0.0
    else:
        compute = sum(n.accel_time for n in nodes)
        transfer = sum(graph.node(i).out_cost for i in crossing_outputs(graph, node_ids))
    return {
        "nodes": len(nodes),
        "compute": float(compute),
        "transfer": float(transfer),
        "load": float(compute + transfer),
        "memory": float(sum(n.size for n in nodes)),
    }


def check_placement(graph: Graph, placement: Placement, check_memory: bool = True) -> None:
    """Raise PlacementError unless the placement is valid for ``graph``:
    every node exactly once, at most k accelerators / l CPUs in use, memory
    caps (unless ``check_memory`` is false), colour classes on one device,
    CPU-only nodes on CPUs."""
    where = placement.device_of()
    for i in where:
        if i not in graph:
            raise PlacementError(f"the split places node {i}, which is not in the graph")
    for n in graph.nodes:
        if n.id not in where:
            raise PlacementError(f"{n.describe()} is not placed")
    used_acc = sum(1 for nodes in placement.accelerators if nodes)
    used_cpu = sum(1 for nodes in placement.cpus if nodes)
    if used_acc > graph.num_accelerators:
        raise PlacementError(f"the split uses {used_acc} accelerators but only {graph.num_accelerators} exist")
    if used_cpu > graph.num_cpus:
        raise PlacementError(f"the split uses {used_cpu} CPUs but only {graph.num_cpus} exist")
    for d, nodes in enumerate(placement.accelerators):
        for i in nodes:
            if not graph.node(i).accel_ok:
                raise PlacementError(
                    f"{graph.node(i).describe()} is not supported on an accelerator but is placed on accelerator {d}"
                )
        mem = sum(graph.node(i).size for i in nodes)
        if check_memory and mem > graph.memory_cap * (1 + 1e-12):
            raise PlacementError(f"accelerator {d} holds {mem:.6g} bytes, over the cap of {graph.memory_cap:.6g}")
    for colour, members in graph.colour_classes().items():
        devices = {where[i] for i in members}
        if len(devices) > 1:
            raise PlacementError(f"colour class {colour} is split over {', '.join(_dev(*d) for d in sorted(devices))}")


def memory_violations(graph: Graph, placement: Placement) -> list[str]:
    """One line per accelerator over the memory cap (empty if none)."""
    out = []
    for d, nodes in enumerate(placement.accelerators):
        mem = sum(graph.node(i).size for i in nodes)
        if mem > graph.memory_cap * (1 + 1e-12):
            out.append(f"accelerator {d} holds {mem:.6g} bytes, over the cap of {graph.memory_cap:.6g}")
    return out


def throughput_loads(
    graph: Graph, placement: Placement, check_memory: bool = True
) -> tuple[float, list[float], list[float]]:
    """(max load, per-accelerator loads, per-CPU loads), after checking the
    placement (see :func:`check_placement`; ``check_memory=False`` scores a
    split that breaks the memory cap, as baselines like "one device" may)."""
    check_placement(graph, placement, check_memory)
    where = placement.device_of()
    acc = [sum(graph.node(i).accel_time for i in nodes) for nodes in placement.accelerators]
    cpu = [sum(graph.node(i).cpu_time for i in nodes) for nodes in placement.cpus]
    # Each distinct crossing output is paid once by its producer's accelerator
    # and once by every other accelerator that consumes it.
    consumers: dict[int, set[tuple[str, int]]] = {}
    for s, d in graph.edges:
        if where[s] != where[d]:
            consumers.setdefault(s, set()).add(where[d])
    for s, devices in consumers.items():
        cost = graph.node(s).out_cost
        for kind, d in devices | {where[s]}:
            if kind == "accel":
                acc[d] += cost
    acc = [float(x) for x in acc]
    cpu = [float(x) for x in cpu]
    return max(acc + cpu, default=0.0), acc, cpu


@dataclass
class Solution:
    """A placement with its objective value and how it was found."""

    placement: Placement
    objective: str  # "throughput" | "latency"
    method: str
    value: float
    optimal: bool
    lower_bound: float
    solve_seconds: float
    stats: dict = field(default_factory=dict)  # e.g. ideals, pairs_examined, gap
    accel_loads: list[float] | None = None
    cpu_loads: list[float] | None = None

    @classmethod
    def evaluated(
        cls,
        graph: Graph,
        placement: Placement,
        method: str,
        *,
        optimal: bool = False,
        lower_bound: float = 0.0,
        solve_seconds: float = 0.0,
        stats: dict | None = None,
        check_memory: bool = True,
    ) -> Solution:
        """A throughput solution whose value and loads are recomputed from the
        graph. With ``check_memory=False`` a split over the memory cap is
        scored anyway and ``stats["memory_ok"]`` says so."""
        value, acc, cpu = throughput_loads(graph, placement, check_memory)
        stats = dict(stats or {})
        violations = memory_violations(graph, placement)
        stats["memory_ok"] = not violations
        if violations:
            stats["memory_violation"] = violations[0]
        return cls(
            placement, "throughput", method, value, optimal, min(lower_bound, value), solve_seconds, stats, acc, cpu
        )

    def to_json(self) -> dict:
        acc = self.accel_loads if self.accel_loads is not None else [None] * len(self.placement.accelerators)
        cpu = self.cpu_loads if self.cpu_loads is not None else [None] * len(self.placement.cpus)
        out = {
            "objective": self.objective,
            "method": self.method,
            "optimal": bool(self.optimal),
            "value": self.value,
            "lower_bound": self.lower_bound,
            "solve_seconds": self.solve_seconds,
        }
        if self.objective == "throughput":
            out["maxLoad"] = self.value  # the key the authors' tools and the expert files use
        out.update(self.placement.to_json((acc, cpu)))
        out["stats"] = dict(self.stats)
        return out


__all__ = [
    "Placement",
    "PlacementError",
    "Solution",
    "GraphError",
    "check_placement",
    "crossing_outputs",
    "device_breakdown",
    "device_load",
    "memory_violations",
    "throughput_loads",
]
