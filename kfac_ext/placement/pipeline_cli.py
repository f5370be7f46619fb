"""Train a model with the split the placement engine finds, as a real pipeline.

  kfac-ext pipeline --module PKG.MOD:FACTORY --input-shape N,C,H,W --devices K --steps S
                    [--lr 0.05] [--microbatches 2] [--schedule gpipe|1f1b]
                    [--loss ce|mse] [--seed 0] [--json]

The model (FACTORY() seeded with --seed) is traced with torch.fx, the exact
contiguous DP splits it over K accelerators, and each non-empty device becomes a
stage of torch.distributed.pipelining (one process per stage; Gloo on CPU, NCCL
when every stage has a GPU). S steps of SGD (--lr) then run on seeded random
batches of --input-shape (targets: random classes for --loss ce, random values of
the output's shape for --loss mse), each split into --microbatches. Printed: the
loss per step (mean of the micro-batch losses) and, per stage, the load the
placement model predicted next to the stage's measured forward+backward time per
micro-batch (timed alone after training, so pipeline bubbles do not count).

Under torchrun (RANK/WORLD_SIZE set) it runs as one of the stages: start it with
as many processes as the split has stages (`kfac-ext place --module ...` shows
them). Otherwise it spawns those processes itself on 127.0.0.1.

Micro-batching and batch statistics: the loss and gradients equal the unsplit
model's whenever a sample's output does not depend on the other samples of its
batch. BatchNorm in training mode breaks that: it normalises each micro-batch by
that micro-batch's own mean and variance, and updates its running statistics
once per micro-batch, so the pipelined run differs from the unsplit one (eval
mode is exact). See docs/placement-pipeline.md.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

LOSSES = ("ce", "mse")
MAX_STAGES = 64  # one process each: more would only thrash the machine


def add_arguments(parser) -> None:
    parser.add_argument(
        "--module", required=True, metavar="PKG.MOD:FACTORY", help="FACTORY() returns the nn.Module to train"
    )
    parser.add_argument(
        "--input-shape", required=True, metavar="N,C,H,W", help="the shape of one training batch (N = batch size)"
    )
    parser.add_argument("--devices", type=int, default=2, help="accelerators to split over (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    parser.add_argument("--microbatches", type=int, default=2, help="micro-batches per batch (default 2)")
    parser.add_argument("--schedule", choices=("gpipe", "1f1b"), default="gpipe")
    parser.add_argument(
        "--loss",
        choices=LOSSES,
        default="ce",
        help="ce: cross entropy on (batch, classes) outputs; mse: mean squared error",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the model's init and the data")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


# ---- the plan: everything checked and decided before any process starts --------------------


def make_plan(args) -> dict:
    """Check the arguments, trace and split the model; returns what every stage
    process needs (plain data, so it pickles). Raises ValueError with a one-line
    message naming the bad option."""
    from .dp import ideal_dp
    from .module_source import build_model, example_input, parse_shape, trace_graph
    from .objective import device_breakdown
    from .pipeline import pipeline_stages

    for flag, value, low in (
        ("--devices", args.devices, 1),
        ("--steps", args.steps, 1),
        ("--microbatches", args.microbatches, 1),
    ):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.devices > MAX_STAGES:
        raise ValueError(f"--devices {args.devices}: a pipeline runs one process per stage, at most {MAX_STAGES} here")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    shape = parse_shape(args.input_shape)
    if shape[0] % args.microbatches:
        raise ValueError(
            f"the batch size {shape[0]} (first entry of --input-shape) is not divisible by "
            f"--microbatches {args.microbatches}"
        )
    model = seeded_model(args.module, args.seed, build_model)
    micro_shape = (shape[0] // args.microbatches,) + shape[1:]
    graph = trace_graph(model, example_input(micro_shape, args.seed), num_accelerators=args.devices)
    solution = ideal_dp(graph)
    stages = pipeline_stages(model, graph, solution.placement)
    ids = {n.name: n.id for n in graph.nodes}
    predicted = [device_breakdown(graph, [ids[name] for name in names], on_cpu=False)["load"] for names in stages]
    out_shape = tuple(_forward_shape(model, micro_shape))
    if args.loss == "ce" and len(out_shape) != 2:
        raise ValueError(f"--loss ce needs (batch, classes) outputs, the model gives shape {out_shape}; use --loss mse")
    return {
        "module": args.module,
        "seed": args.seed,
        "shape": shape,
        "out_shape": (shape[0],) + out_shape[1:],
        "microbatches": args.microbatches,
        "schedule": args.schedule,
        "loss": args.loss,
        "lr": args.lr,
        "steps": args.steps,
        "stages": stages,
        "predicted": predicted,
        "optimum": solution.value,
        "devices": args.devices,
    }


def seeded_model(spec: str, seed: int, build_model=None):
    """FACTORY() with torch seeded first: every stage process builds the same weights."""
    import torch

    if build_model is None:
        from .module_source import build_model
    torch.manual_seed(seed)
    return build_model(spec)


def _forward_shape(model, shape):
    import torch

    with torch.no_grad():
        out = model(torch.zeros(shape))
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model returns a {type(out).__name__}; pipeline training needs one tensor")
    return out.shape


def batch(plan: dict, step: int):
    """The seeded (input, target) of one step, the same in every process."""
    import torch

    g = torch.Generator().manual_seed(plan["seed"] * 1_000_003 + step + 1)
    x = torch.randn(plan["shape"], generator=g)
    out_shape = plan["out_shape"]
    if plan["loss"] == "ce":
        y = torch.randint(0, out_shape[1], (out_shape[0],), generator=g)
    else:
        y = torch.randn(out_shape, generator=g)
    return x, y


def loss_function(name: str):
    import torch.nn as nn

    return nn.CrossEntropyLoss() if name == "ce" else nn.MSELoss()


# ---- one stage process ------------------------------------------------------------------------


def train_stage(plan: dict, rank: int, world: int, device) -> dict:
    """Run the plan's steps as stage ``rank`` of the current process group.
    Returns this stage's report; the last stage's carries the losses."""
    import torch
    from torch.distributed.pipelining import pipeline

    from .pipeline import SCHEDULES, contiguous_boundaries, split_module

    model = seeded_model(plan["module"], plan["seed"])
    micro = batch(plan, 0)[0].chunk(plan["microbatches"])[0]
    pipe = contiguous_boundaries(pipeline(split_module(model, plan["stages"]), mb_args=(micro,)))
    stage = pipe.build_stage(rank, torch.device(device))
    # A stage may hold no parameters (the split can give a ReLU a stage of its own): it
    # still runs forward and backward, it just has nothing to update.
    params = list(stage.submod.parameters())
    optimizer = torch.optim.SGD(params, lr=plan["lr"]) if params else None
    loss_fn = loss_function(plan["loss"])
    schedule = SCHEDULES[plan["schedule"]](stage, plan["microbatches"], loss_fn=loss_fn)
    captured = {}
    hook = stage.submod.register_forward_pre_hook(
        lambda mod, a, kw: captured.update(args=a, kwargs=kw), with_kwargs=True
    )
    last = rank == world - 1
    losses, step_seconds = [], []
    for step in range(plan["steps"]):
        x, y = batch(plan, step)
        if optimizer is not None:
            optimizer.zero_grad()
        t0 = time.perf_counter()
        if last:
            micro_losses: list = []
            kwargs = {"target": y.to(device), "losses": micro_losses}
        else:
            kwargs = {}
        schedule.step(x.to(device), **kwargs) if rank == 0 else schedule.step(**kwargs)
        if optimizer is not None:
            optimizer.step()
        step_seconds.append(time.perf_counter() - t0)
        if last:
            losses.append(float(torch.stack([v.detach() for v in micro_losses]).mean()))
    hook.remove()
    return {
        "rank": rank,
        "losses": losses if last else None,
        "step_seconds": step_seconds,
        "measured_ms": _time_alone(stage.submod, captured, device),
    }


def _time_alone(submod, captured: dict, device, repeats: int = 3) -> float:
    """Median forward+backward time (ms) of the stage on its last micro-batch input."""
    import torch

    def detached(v):
        return v.detach().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v

    args = tuple(detached(a) for a in captured.get("args", ()))
    kwargs = {k: detached(v) for k, v in captured.get("kwargs", {}).items()}
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        t0 = time.perf_counter()
        out = submod(*args, **kwargs)
        outs = [
            o
            for o in (out if isinstance(out, (tuple, list)) else (out,))
            if isinstance(o, torch.Tensor) and o.requires_grad
        ]
        if outs:
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        if str(device).startswith("cuda"):
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    submod.zero_grad(set_to_none=True)
    return 1e3 * sorted(times[1:])[len(times[1:]) // 2]


def _backend_and_device(world: int, local_rank: int):
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() >= world:
        torch.cuda.set_device(local_rank)
        return "nccl", f"cuda:{local_rank}"
    return "gloo", "cpu"


def _stage_process(rank: int, world: int, port: int, plan: dict, out_dir: str) -> None:
    """Entry of a spawned stage process: results or a one-line error go to out_dir."""
    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)  # one core per stage on a shared machine
    try:
        backend, device = _backend_and_device(world, rank)
        dist.init_process_group(backend, rank=rank, world_size=world)
        try:
            report = train_stage(plan, rank, world, device)
            report["backend"] = backend
        finally:
            dist.destroy_process_group()
        path = os.path.join(out_dir, f"rank{rank}.json")
    except Exception as e:  # reported by the parent as one line
        report = {"error": f"stage {rank}: {type(e).__name__}: {' '.join(str(e).split())}", "time": time.time()}
        path = os.path.join(out_dir, f"error{rank}.json")
    with open(path, "w") as f:
        json.dump(report, f)


def run_spawned(plan: dict) -> list[dict]:
    """One spawned Gloo/NCCL process per stage on 127.0.0.1; their reports by rank."""
    import torch.multiprocessing

    from .pipeline import _free_port

    world = len(plan["stages"])
    with tempfile.TemporaryDirectory() as out_dir:
        torch.multiprocessing.start_processes(
            _stage_process, args=(world, _free_port(), plan, out_dir), nprocs=world, join=True, start_method="spawn"
        )
        errors = []
        for name in os.listdir(out_dir):
            if name.startswith("error"):
                with open(os.path.join(out_dir, name)) as f:
                    errors.append(json.load(f))
        if errors:  # the first failure is the cause; the others are its echoes
            raise RuntimeError(min(errors, key=lambda e: e["time"])["error"])
        reports = []
        for r in range(world):
            with open(os.path.join(out_dir, f"rank{r}.json")) as f:
                reports.append(json.load(f))
    return reports


def run_under_torchrun(plan: dict) -> list[dict] | None:
    """This process is one stage of a torchrun job; rank 0 gets every report."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != len(plan["stages"]):
        raise ValueError(
            f"the split has {len(plan['stages'])} stages but torchrun started {world} "
            f"processes; run torchrun --nproc-per-node {len(plan['stages'])}"
        )
    backend, device = _backend_and_device(world, int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group(backend)
    try:
        report = train_stage(plan, rank, world, device)
        report["backend"] = backend
        reports: list = [None] * world
        dist.all_gather_object(reports, report)
    finally:
        dist.destroy_process_group()
    return reports if rank == 0 else None


# ---- the command ------------------------------------------------------------------------------


def summary(plan: dict, reports: list[dict]) -> dict:
    last = reports[-1]
    return {
        "module": plan["module"],
        "input_shape": list(plan["shape"]),
        "devices": plan["devices"],
        "steps": plan["steps"],
        "lr": plan["lr"],
        "microbatches": plan["microbatches"],
        "schedule": plan["schedule"],
        "loss_function": plan["loss"],
        "seed": plan["seed"],
        "backend": last["backend"],
        "predicted_max_load": plan["optimum"],
        "losses": last["losses"],
        "stages": [
            {
                "stage": s,
                "nodes": len(names),
                "predicted_load": plan["predicted"][s],
                "measured_ms": reports[s]["measured_ms"],
                "median_step_seconds": sorted(reports[s]["step_seconds"])[len(reports[s]["step_seconds"]) // 2],
            }
            for s, names in enumerate(plan["stages"])
        ],
    }


def table(result: dict) -> str:
    lines = [f"{'step':>4}  {'loss':>12}"]
    lines += [f"{i + 1:>4}  {loss:>12.6f}" for i, loss in enumerate(result["losses"])]
    pred_total = sum(s["predicted_load"] for s in result["stages"]) or 1.0
    meas_total = sum(s["measured_ms"] for s in result["stages"]) or 1.0
    lines += [
        "",
        f"{'stage':>5} {'nodes':>6} {'predicted load':>15} {'share':>6} "
        f"{'measured ms':>12} {'share':>6}   (measured: fwd+bwd of one micro-batch, alone)",
    ]
    for s in result["stages"]:
        lines.append(
            f"{s['stage']:>5} {s['nodes']:>6} {s['predicted_load']:>15.6g} "
            f"{s['predicted_load'] / pred_total:>6.1%} {s['measured_ms']:>12.4g} "
            f"{s['measured_ms'] / meas_total:>6.1%}"
        )
    lines.append(
        f"\n{len(result['stages'])} stages over {result['backend']}, {result['schedule']}, "
        f"{result['microbatches']} micro-batches, SGD lr {result['lr']}"
    )
    return "\n".join(lines)


def run(args) -> int:
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    try:
        plan = make_plan(args)
        reports = run_under_torchrun(plan) if under_torchrun else run_spawned(plan)
    except Exception as e:  # noqa: BLE001 -- a CLI error is one line, whatever raised it
        print(f"kfac-ext pipeline: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 1
    if reports is None:  # a torchrun rank other than 0
        return 0
    result = summary(plan, reports)
    print(json.dumps(result) if args.json else table(result))
    return 0


__all__ = ["make_plan", "run", "run_spawned", "train_stage", "batch", "loss_function", "seeded_model"]
