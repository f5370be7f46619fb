"""Operator graphs of real ``nn.Module``s, traced with ``torch.fx``.

``from_module(model, example_inputs)`` traces the model with
``torch.fx.symbolic_trace``, runs the traced graph once on the example inputs
node by node, and turns every fx node except the final ``output`` into a
placement :class:`~kfac_ext.placement.graph.Node`:

* ``name`` is the fx node's name, so a placement found on the graph can be
  mapped back onto the traced module (``kfac_ext.placement.pipeline`` does
  that); ids are 1, 2, ... in the fx graph's (topological) order.
* time (milliseconds, like the workloads): ``cost="flops"`` counts the node's
  FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` and divides by the
  device's FLOP rate (``accel_flops`` / ``cpu_flops``, FLOP/s);
  ``cost="profile"`` times the node on this machine (median of ``repeats``
  runs) and uses that time for the accelerator and ``cpu_slowdown`` times it
  for a CPU.  Ops without FLOPs (views, adds, activations) cost
  ``min_time_ms`` under ``"flops"``, so that a pipeline stage is never free.
* memory (``size``, bytes): the parameters and buffers the node reads (a
  module call's own state, or a ``get_attr`` tensor) plus its output
  activations.
* transfer cost (``out_cost``): output bytes / ``bandwidth`` (bytes/s), in
  milliseconds; 0 for a node nobody consumes.
* ``training=True`` adds a backward node per forward node (colour-coupled to
  it, edges reversed, time ``backward_factor`` times the forward time, the
  usual 2x for a matmul's two gradient GEMMs) so that the training-graph
  solvers place forward and backward together.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from .graph import Graph, Node

__all__ = ["from_module", "trace"]


def trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with an error that says what to do on failure."""
    if isinstance(model, torch.fx.GraphModule):
        return model
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, ...)
        raise ValueError(
            f"torch.fx.symbolic_trace could not trace {type(model).__name__}: {e}. "
            "Models with data-dependent control flow need concrete_args or a traceable "
            "rewrite; pass an already traced torch.fx.GraphModule to skip tracing."
        ) from e


def _tensor_bytes(value: Any) -> int:
    leaves, _ = tree_flatten(value)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


def _state_bytes(gm: torch.fx.GraphModule, node: torch.fx.Node) -> int:
    """Bytes of the parameters/buffers a node owns (module state or get_attr)."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return sum(t.numel() * t.element_size() for t in list(mod.parameters()) + list(mod.buffers()))
    if node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return _tensor_bytes(obj)
    return 0


class _Measure(torch.fx.Interpreter):
    """Runs the graph once, recording per node: FLOPs or time, and output bytes."""

    def __init__(self, gm, cost: str, repeats: int):
        super().__init__(gm)
        self.cost, self.repeats = cost, repeats
        self.flops: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.out_bytes: dict[str, int] = {}

    def run_node(self, n: torch.fx.Node):
        if n.op in ("placeholder", "output", "get_attr"):
            result = super().run_node(n)
            self.flops[n.name], self.seconds[n.name] = 0, 0.0
        elif self.cost == "flops":
            with FlopCounterMode(display=False) as counter:
                result = super().run_node(n)
            self.flops[n.name] = int(counter.get_total_flops())
            self.seconds[n.name] = 0.0
        else:
            result = super().run_node(n)  # warm-up run, also the value passed on
            times = []
            for _ in range(self.repeats):
                start = time.perf_counter()
                super().run_node(n)
                times.append(time.perf_counter() - start)
            self.seconds[n.name] = statistics.median(times)
            self.flops[n.name] = 0
        self.out_bytes[n.name] = _tensor_bytes(result)
        return result


def from_module(
    model: torch.nn.Module,
    example_inputs: Sequence[Any] | Any,
    *,
    bandwidth: float = 16e9,
    cost: str = "flops",
    accel_flops: float = 10e12,
    cpu_flops: float = 0.2e12,
    cpu_slowdown: float = 10.0,
    min_time_ms: float = 1e-4,
    repeats: int = 5,
    training: bool = False,
    backward_factor: float = 2.0,
    num_accelerators: int = 2,
    num_cpus: int = 0,
    memory_cap: float | None = None,
) -> Graph:
    """The placement graph of ``model`` on ``example_inputs`` (see the module docstring).

    ``memory_cap`` defaults to the whole model's memory (no constraint).  The graph is
    validated; its node names are the fx node names of ``trace(model)``.
    """
    if cost not in ("flops", "profile"):
        raise ValueError(f"cost must be 'flops' or 'profile', got {cost!r}")
    for name, value in (
        ("bandwidth", bandwidth),
        ("accel_flops", accel_flops),
        ("cpu_flops", cpu_flops),
        ("cpu_slowdown", cpu_slowdown),
    ):
        if not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)

    gm = trace(model)
    measure = _Measure(gm, cost, repeats)
    with torch.no_grad():
        measure.run(*example_inputs)

    fx_nodes = [n for n in gm.graph.nodes if n.op != "output"]
    ids = {n.name: i + 1 for i, n in enumerate(fx_nodes)}
    consumed = {n.name for n in fx_nodes if any(u.op != "output" for u in n.users)}
    ms = 1e3

    def times(n) -> tuple[float, float]:
        if n.op in ("placeholder", "get_attr"):
            return 0.0, 0.0
        if cost == "flops":
            f = measure.flops[n.name]
            return max(min_time_ms, ms * f / accel_flops), max(min_time_ms, ms * f / cpu_flops)
        t = ms * measure.seconds[n.name]
        return t, t * cpu_slowdown

    nodes: list[Node] = []
    edges: list[tuple[int, int]] = []
    for n in fx_nodes:
        accel, cpu = times(n)
        out_bytes = measure.out_bytes[n.name]
        nodes.append(
            Node(
                id=ids[n.name],
                name=n.name,
                accel_time=accel,
                cpu_time=cpu,
                size=float(_state_bytes(gm, n) + out_bytes),
                accel_ok=True,
                is_backward=False,
                color=ids[n.name] if training else None,
                out_cost=ms * out_bytes / bandwidth if n.name in consumed else 0.0,
            )
        )
        edges += [(ids[p.name], ids[n.name]) for p in n.all_input_nodes]

    if training:
        nodes, edges = _add_backward(nodes, edges, backward_factor)

    total = sum(n.size for n in nodes)
    graph = Graph(
        nodes,
        edges,
        num_accelerators,
        num_cpus,
        float(total if memory_cap is None else memory_cap),
        source=f"fx:{type(model).__name__}",
    )
    graph.validate()
    return graph


def _add_backward(nodes: list[Node], edges: list[tuple[int, int]], factor: float):
    """Training graph: backward node b(v) per forward node v (id + n, same colour,
    ``factor`` x its time).  Gradients flow against the forward edges, b(d) -> b(s)
    for every s -> d; b(v) also follows v itself (it needs v's saved activations).
    b(d) sends the gradients of d's inputs, as large as those inputs' outputs, so its
    transfer cost is their sum."""
    off = len(nodes)
    by_id = {v.id: v for v in nodes}
    grad_cost: dict[int, float] = {}
    back_edges = []
    for s, d in edges:
        back_edges.append((d + off, s + off))
        grad_cost[d] = grad_cost.get(d, 0.0) + by_id[s].out_cost
    back = [
        Node(
            id=v.id + off,
            name=v.name + "_backward",
            accel_time=factor * v.accel_time,
            cpu_time=factor * v.cpu_time,
            size=0.0,
            accel_ok=v.accel_ok,
            is_backward=True,
            color=v.color,
            out_cost=grad_cost.get(v.id, 0.0),
        )
        for v in nodes
    ]
    own = [(v.id, v.id + off) for v in nodes]
    return nodes + back, edges + back_edges + own
