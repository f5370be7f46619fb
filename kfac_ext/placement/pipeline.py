"""Run a placement of a traced model as a real pipeline (``torch.distributed.pipelining``).

The graph comes from :func:`kfac_ext.placement.fx_graph.from_module`, so its
node names are fx node names.  A contiguous placement orders its non-empty
devices into stages (every edge goes from a stage to the same or a later
one); :func:`split_module` rewrites the traced module with the stage's nodes
consecutive and a ``pipe_split()`` call at every stage boundary, and
``torch.distributed.pipelining.pipeline`` cuts it there.  One process per
stage then runs a GPipe or 1F1B schedule (:func:`run_stage`);
:func:`run_locally` spawns those processes on this machine over Gloo and
gathers the output, the loss and the parameter gradients, for checking
against the unsplit model. They are equal (up to rounding) for a model whose
output for a sample does not depend on the rest of its batch; BatchNorm in
training mode does (each micro-batch is normalised by its own statistics), so
there the pipelined step differs, while eval mode is exact
(docs/placement-pipeline.md). A model input read by a later stage is relayed
through the first stage (a copy), since pipelining feeds inputs to stage 0 only.

Backward nodes of a training graph are ignored here: autograd places each
backward op with its forward op, which is what the colour classes require.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.fx
from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, pipe_split, pipeline
from torch.utils._pytree import tree_map

from .fx_graph import trace
from .graph import Graph
from .objective import Placement, PlacementError

__all__ = [
    "stage_order",
    "pipeline_stages",
    "split_module",
    "build_pipe",
    "contiguous_boundaries",
    "run_stage",
    "run_locally",
]

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def stage_order(graph: Graph, placement: Placement) -> list[list[str]]:
    """fx node names per pipeline stage, stages in pipeline order.

    Every non-empty device (accelerators, then CPUs) is one stage.  Raises
    PlacementError when the devices cannot be ordered so that data only flows
    forward (the split is not contiguous) or the placement misses a node.
    """
    devices = [list(d) for d in placement.accelerators + placement.cpus if d]
    forward = {n.id for n in graph.nodes if not n.is_backward}
    where: dict[int, int] = {}
    for s, nodes in enumerate(devices):
        for i in nodes:
            if i in forward:
                where[i] = s
    missing = sorted(forward - set(where))
    if missing:
        raise PlacementError(f"the placement does not place {graph.node(missing[0]).describe()}")
    devices = [[i for i in d if i in forward] for d in devices]
    keep = [s for s, d in enumerate(devices) if d]
    renumber = {s: k for k, s in enumerate(keep)}
    where = {i: renumber[s] for i, s in where.items()}
    n = len(keep)
    after: list[set[int]] = [set() for _ in range(n)]
    for s, d in graph.edges:
        if s in forward and d in forward and where[s] != where[d]:
            after[where[s]].add(where[d])
    # topological order of the device quotient graph (Kahn); a cycle = not contiguous
    indeg = [0] * n
    for a in range(n):
        for b in after[a]:
            indeg[b] += 1
    ready = [a for a in range(n) if indeg[a] == 0]
    order = []
    while ready:
        a = min(ready)
        ready.remove(a)
        order.append(a)
        for b in after[a]:
            indeg[b] -= 1
            if indeg[b] == 0:
                ready.append(b)
    if len(order) < n:
        raise PlacementError(
            "the placement is not contiguous: data flows back and forth between "
            "devices, so it cannot run as a pipeline (use a contiguous split, e.g. "
            "the DP's)"
        )
    position = {n.id: k for k, n in enumerate(graph.nodes)}
    stages = []
    for a in order:
        ids = sorted((i for i in where if where[i] == a), key=position.__getitem__)
        stages.append([graph.node(i).name for i in ids])
    return stages


def pipeline_stages(model: torch.nn.Module, graph: Graph, placement: Placement) -> list[list[str]]:
    """:func:`stage_order` without the stages that hold only model inputs
    (placeholders): pipelining feeds the inputs to the first stage anyway, so such a
    device would have nothing to run."""
    gm = trace(model)
    inputs = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
    return [names for names in stage_order(graph, placement) if set(names) - inputs]


def split_module(model: torch.nn.Module, stages: Sequence[Sequence[str]]) -> torch.fx.GraphModule:
    """The traced model with each stage's nodes consecutive and ``pipe_split()``
    between stages (inputs stay first, the output last)."""
    gm = trace(model)
    by_name = {n.name: n for n in gm.graph.nodes}
    stage_of = {}
    for k, names in enumerate(stages):
        for name in names:
            if name not in by_name:
                raise PlacementError(
                    f"stage {k} names fx node {name!r}, which the traced {type(model).__name__} does not have"
                )
            stage_of[name] = k
    body = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    unplaced = [n.name for n in body if n.name not in stage_of]
    if unplaced:
        raise PlacementError(f"fx node {unplaced[0]!r} is in no stage")
    for n in body:
        for p in n.all_input_nodes:
            if p.op != "placeholder" and stage_of[p.name] > stage_of[n.name]:
                raise PlacementError(
                    f"fx node {n.name!r} (stage {stage_of[n.name]}) reads "
                    f"{p.name!r} from a later stage {stage_of[p.name]}"
                )
    new = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = new.node_copy(n, env.__getitem__)
    # Only the first stage receives the model's inputs: a later stage that reads one
    # (a residual over the whole model, say) gets a copy relayed from the first stage.
    relay: dict[torch.fx.Node, torch.fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder" and any(u.name in stage_of and stage_of[u.name] > 0 for u in n.users):
            relay[n] = new.call_function(torch.clone, (env[n],))
    for k in range(len(stages)):
        if k > 0:
            new.call_function(pipe_split, ())
        lookup = env.__getitem__ if k == 0 else (lambda a: relay.get(a) or env[a])
        for n in body:  # stable: original order inside a stage keeps it topological
            if stage_of[n.name] == k:
                env[n] = new.node_copy(n, lookup)
                # drop fx's nn_module_stack: export would use it to outline
                # submodules across our reordered stages and fail
                env[n].meta = {}
    for n in gm.graph.nodes:
        if n.op == "output":
            new.node_copy(n, env.__getitem__)
    new.lint()
    return torch.fx.GraphModule(gm, new)


def build_pipe(model: torch.nn.Module, graph: Graph, placement: Placement, microbatch_args: tuple):
    """``torch.distributed.pipelining.pipeline`` of the model cut at the placement's
    stage boundaries; ``microbatch_args`` is one example micro-batch."""
    stages = pipeline_stages(model, graph, placement)
    return contiguous_boundaries(pipeline(split_module(model, stages), mb_args=tuple(microbatch_args)))


def contiguous_boundaries(pipe):
    """Make every tensor that crosses a stage boundary contiguous, in place.

    Gloo and NCCL send and receive only contiguous tensors, but a stage can end
    in a strided view (ResNet's ``x[:, :, ::2, ::2]`` shortcut), and pipelining
    sizes its buffers from the traced strides. So each stage's strided outputs
    get a contiguous copy, and every stage input's traced value is declared
    contiguous (the stage's own ops accept any strides)."""
    for submod in pipe.split_gm.children():
        graph = getattr(submod, "graph", None)
        if graph is None:
            continue
        changed = False
        for node in graph.nodes:
            val = node.meta.get("val")
            if node.op == "placeholder" and _strided(val):
                node.meta["val"] = _contiguous_like(val)
            elif node.op == "output":
                outs = node.args[0]
                seq = list(outs) if isinstance(outs, (tuple, list)) else [outs]
                new = [_contiguous_copy(graph, node, arg) for arg in seq]
                if new != seq:
                    node.args = (type(outs)(new) if isinstance(outs, (tuple, list)) else new[0],)
                    changed = True
        if changed:
            submod.recompile()
    return pipe


def _contiguous_copy(graph, output, arg):
    """``arg`` itself, or (if its traced value is strided) a contiguous copy of it
    inserted before the graph's ``output`` node."""
    val = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
    if not _strided(val):
        return arg
    with graph.inserting_before(output):
        copy = graph.call_function(torch.ops.aten.clone.default, (arg,), {"memory_format": torch.contiguous_format})
    copy.meta = dict(arg.meta, val=_contiguous_like(val))
    return copy


def _strided(val) -> bool:
    return isinstance(val, torch.Tensor) and not val.is_contiguous()


def _contiguous_like(val):
    mode = getattr(val, "fake_mode", None)
    if mode is None:
        return val.contiguous()
    with mode:
        return val.clone(memory_format=torch.contiguous_format)


def run_stage(
    pipe,
    rank: int,
    inputs: tuple,
    target: torch.Tensor | None,
    loss_fn: Callable | None,
    n_microbatches: int,
    schedule: str = "gpipe",
    device: torch.device | str = "cpu",
):
    """One training (or, without loss_fn, forward) step of stage ``rank`` in the
    current process group.  Returns (stage module, output, losses): the output
    (micro-batch outputs merged) and the per-micro-batch losses on the last stage,
    None elsewhere.  Gradients are left in the stage module's parameters; they are
    averaged over micro-batches (``scale_grads``), i.e. equal to the gradient of
    the mean of the micro-batch losses."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if pipe.num_stages != dist.get_world_size():
        raise ValueError(
            f"the split has {pipe.num_stages} stages but the process group has "
            f"{dist.get_world_size()} ranks; run one rank per stage"
        )
    stage = pipe.build_stage(rank, torch.device(device))
    sched = SCHEDULES[schedule](stage, n_microbatches, loss_fn=loss_fn)
    last = rank == pipe.num_stages - 1
    losses: list | None = [] if last and loss_fn is not None else None
    kwargs = {"target": target, "losses": losses} if last and loss_fn is not None else {}
    output = sched.step(*inputs, **kwargs) if rank == 0 else sched.step(**kwargs)
    return stage.submod, (output if last else None), losses


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, model, graph, placement, inputs, target, loss_fn, n_microbatches, schedule, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)  # one core per stage process on a shared machine
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        micro = tuple(x.chunk(n_microbatches)[0] for x in inputs)
        pipe = build_pipe(model, graph, placement, micro)
        submod, output, losses = run_stage(pipe, rank, inputs, target, loss_fn, n_microbatches, schedule)
        grads = {name: p.grad.detach().clone() for name, p in submod.named_parameters() if p.grad is not None}
        output = tree_map(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, output)
        torch.save(
            {"grads": grads, "output": output, "losses": None if losses is None else [x.detach() for x in losses]},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def run_locally(
    model: torch.nn.Module,
    graph: Graph,
    placement: Placement,
    inputs: Sequence[torch.Tensor],
    target: torch.Tensor | None = None,
    loss_fn: Callable | None = None,
    *,
    n_microbatches: int = 2,
    schedule: str = "gpipe",
) -> dict[str, Any]:
    """Run one pipelined step on this machine: one spawned Gloo process per stage
    (127.0.0.1, a free port).  ``inputs`` is the whole batch, split into
    ``n_microbatches`` along dim 0.  Returns {"output", "losses", "grads"} with
    grads keyed by the original model's parameter names."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    inputs = tuple(inputs)
    for x in inputs:
        if x.shape[0] % n_microbatches:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by n_microbatches={n_microbatches}")
    world = len(pipeline_stages(model, graph, placement))
    with tempfile.TemporaryDirectory() as out_dir:
        torch.multiprocessing.start_processes(
            _worker,
            args=(
                world,
                _free_port(),
                model,
                graph,
                placement,
                inputs,
                target,
                loss_fn,
                n_microbatches,
                schedule,
                out_dir,
            ),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]
    grads: dict[str, torch.Tensor] = {}
    for r in results:
        grads.update(r["grads"])
    return {"output": results[-1]["output"], "losses": results[-1]["losses"], "grads": grads}
