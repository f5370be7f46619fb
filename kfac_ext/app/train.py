"""Train a model with SGD, AdamW, K-FAC-preconditioned SGD (and SOAP), side by side.

Default: scikit-learn's handwritten digits (no download), a small CNN, SGD and
K-FAC from the same initial weights and the same data order, each with its
own tuned learning rate (benchmarks/lr_sweep.py), momentum, weight decay,
linear lr warm-up and step decay (`--optimizer sgd,adamw,kfac` adds AdamW, with
its own swept lr and weight decay). Prints a table (epochs and training
seconds to the target, final accuracy, time per step, K-FAC overhead) and
writes a PNG of the curves. `--task autoencoder` trains a deep autoencoder of
the digits pixels instead, to a target training reconstruction loss.

The runs are interleaved epoch by epoch (the order reversed every other
epoch), so a change of the machine's load hits every optimizer alike; each
run keeps its own RNG state, so its curve is the one it would have alone.

Time to target counts training time only: the wall clock of the training
steps (batch assembly included), summed over epochs; test-set evaluation and
checkpoint writing are excluded for both optimizers. The target is checked
after every epoch.

Data parallel: torchrun --nproc_per_node=N -m kfac_ext train ...
(Gloo on CPU, NCCL on GPU; --batch-size is the global batch, split evenly).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from kfac_ext.app.checkpoint import (
    FORMAT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    resume_hint,
    save_checkpoint,
    sigterm_as_interrupt,
)
from kfac_ext.app.data import load_dataset
from kfac_ext.app.tasks import make_task
from kfac_ext.app.train_options import NAMES, TORCH_ADAMW_BETAS, resolve_defaults
from kfac_ext.app.train_options import add_arguments as add_arguments  # kfac_ext.cli's subcommand protocol
from kfac_ext.app.validation import check_fits_data, check_model_fits, check_outputs


# --------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Schedule:
    """Learning rate and K-FAC update intervals as pure functions of the step."""

    peak_lr: float
    steps_per_epoch: int
    warmup_epochs: float
    decay_epochs: tuple[float, ...]
    decay_factor: float
    factor_steps: int = 1
    inv_steps: int = 1
    growth: float = 1.0

    def decays_passed(self, step: int) -> int:
        epoch = step / self.steps_per_epoch
        return sum(epoch >= e for e in self.decay_epochs)

    def lr(self, step: int) -> float:
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        scale = self.decay_factor ** self.decays_passed(step)
        if step < warmup_steps:  # linear from lr/10 to lr
            scale *= 0.1 + 0.9 * step / warmup_steps
        return self.peak_lr * scale

    def factor_update_steps(self, step: int) -> int:
        return max(1, round(self.factor_steps * self.growth ** self.decays_passed(step)))

    def inv_update_steps(self, step: int) -> int:
        return max(1, round(self.inv_steps * self.growth ** self.decays_passed(step)))


# --------------------------------------------------------------------------- distributed
@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_world(device_arg: str) -> World:
    want_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    size = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if size > 1:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if want_cuda else "gloo")
            owns = True
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", "0"))
    else:
        rank, local = 0, 0
    if want_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return World(rank, size, device, owns)


def _all_sum(values: list[float], world: World) -> list[float]:
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


# --------------------------------------------------------------------------- one run
@dataclass
class RunState:
    name: str
    config: dict
    history: list = field(default_factory=list)  # one record per finished epoch
    step_times: list = field(default_factory=list)  # seconds per training step
    train_time_s: float = 0.0
    wall_s: float = 0.0
    epoch: int = 0
    step: int = 0


def _run_config(name: str, a: argparse.Namespace, world: World) -> dict:
    """Everything that decides a run's curve; a checkpoint must match it to be resumed."""
    cfg = dict(
        optimizer=name,
        data=a.data,
        model=a.model,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=getattr(a, f"lr_{name}"),
        momentum=a.momentum,
        weight_decay=a.weight_decay,
        warmup_epochs=a.warmup_epochs,
        decay_epochs=list(a.decay_epochs),
        decay_factor=a.decay_factor,
        seed=a.seed,
        world_size=world.size,
    )
    if a.task != "classify":
        cfg["task"] = a.task
    if name in ("adamw", "soap"):
        del cfg["momentum"]  # their own betas (SOAP: the library's)
        cfg["weight_decay"] = getattr(a, f"{name}_weight_decay")
    if name == "adamw" and tuple(a.adamw_betas) != TORCH_ADAMW_BETAS:
        cfg["betas"] = list(a.adamw_betas)  # only when set: older checkpoints still resume
    if name == "kfac":
        cfg.update(
            compute_method=a.compute_method,
            damping=a.damping,
            factor_decay=a.factor_decay,
            kl_clip=a.kl_clip,
            factor_update_steps=a.factor_update_steps,
            inv_update_steps=a.inv_update_steps,
            interval_growth=a.interval_growth,
            inv_lag_steps=a.inv_lag_steps,
            skip_layers=list(a.skip_layers),
            factor_init=a.factor_init,
            per_example_g=a.per_example_g,
            adaptive_damping=a.adaptive_damping,
        )
        if a.relative_damping:
            cfg["relative_damping"] = True  # only when set: older checkpoints still resume
        if a.auto_step:  # the step is the quadratic model's: SGD at lr 1, no schedule
            cfg.update(
                auto_step=True,
                auto_step_damping=a.auto_step_damping,
                auto_step_interval=a.auto_step_interval,
                lr=1.0,
                momentum=0.0,
                warmup_epochs=0.0,
                decay_factor=1.0,
                kl_clip=None,
            )
    return cfg


def _check_skip_layers(model: torch.nn.Module, a: argparse.Namespace) -> None:
    """Refuse --skip-layers patterns that leave K-FAC nothing, before any run starts."""
    from kfac_ext import KFACPreconditioner
    from kfac_ext.comm import LocalComm

    probe = KFACPreconditioner(model, skip_layers=a.skip_layers, comm=LocalComm())
    probe.remove_hooks()
    if not probe.layers:
        raise ValueError(
            f"--skip-layers {' '.join(a.skip_layers)} leaves no layer of {a.model} "
            "for K-FAC to precondition; give fewer patterns, or the flag alone "
            "to precondition every layer"
        )


def _make_preconditioner(model: torch.nn.Module, sched: Schedule, a: argparse.Namespace, terms_per_sample: int = 1):
    """The preconditioner, and its AdaptiveDamping (None without --adaptive-damping).

    The loss is a mean over batch x terms_per_sample terms (an LM's bytes), so G from its
    gradient is 1/terms² of the per-term Fisher factor: ``--per-example-g`` multiplies it back.
    """
    from kfac_ext import KFACPreconditioner  # imported here: SGD runs never need it

    loss_terms = float(a.batch_size * terms_per_sample)
    g_scale = loss_terms**2 if a.per_example_g else 1.0
    damping, auto_step = a.damping, None
    if a.auto_step:
        from kfac_ext.auto_step import AutoStep

        auto_step = AutoStep(damping=a.auto_step_damping, weight_decay=a.weight_decay, interval=a.auto_step_interval)
    if a.adaptive_damping:
        from kfac_ext.adaptive_damping import AdaptiveDamping

        damping = AdaptiveDamping(a.damping, interval=a.adaptive_damping, curvature_scale=loss_terms**2 / g_scale)
    adaptive = damping if a.adaptive_damping else None
    return KFACPreconditioner(
        model,
        factor_update_steps=sched.factor_update_steps,
        inv_update_steps=sched.inv_update_steps,
        damping=damping,
        factor_init=a.factor_init,
        g_scale=g_scale,
        factor_decay=a.factor_decay,
        kl_clip=None if a.auto_step else a.kl_clip,
        lr=sched.lr,
        inv_lag_steps=a.inv_lag_steps,
        compute_method=a.compute_method,
        skip_layers=a.skip_layers,
        auto_step=auto_step,
        relative_damping=a.relative_damping,
    ), adaptive


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, stream): data order needs no saved state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def _make_optimizer(name: str, model: torch.nn.Module, lr: float, a: argparse.Namespace):
    """SGD with momentum (also under K-FAC), AdamW, or heavyball's SOAP (imported only here)."""
    if name == "kfac" and a.auto_step:  # applies the step K-FAC wrote into .grad as it is
        return torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0, weight_decay=0.0)
    if name in ("sgd", "kfac"):
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=a.momentum, weight_decay=a.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=lr, betas=tuple(a.adamw_betas), weight_decay=a.adamw_weight_decay
        )
    import heavyball  # the [soap] extra
    import heavyball.utils

    # Eager: heavyball torch.compiles its fused kernels (and with compile_step the whole
    # step) in max-autotune mode, minutes of autotuning on a CPU before the first step.
    heavyball.utils.compile_mode = None
    return heavyball.SOAP(model.parameters(), lr=lr, weight_decay=a.soap_weight_decay, compile_step=False)


class _Run:
    """One optimizer's run: model, optimizer, preconditioner and schedule, an epoch at a time."""

    def __init__(
        self,
        state: RunState,
        a: argparse.Namespace,
        task,
        init_weights: dict,
        model_args: tuple,
        world: World,
        resume: dict | None,
        log,
    ):
        from kfac_ext.app.models import build_model

        self.state, self.a, self.task, self.world, self.log = state, a, task, world, log
        name = state.name
        model = build_model(a.model, *model_args)
        model.load_state_dict(init_weights)
        model.to(world.device)
        self.model = model
        self.steps_per_epoch = task.n_train // a.batch_size  # drop the last partial batch
        self.sched = Schedule(
            state.config["lr"],
            self.steps_per_epoch,
            state.config["warmup_epochs"],
            tuple(a.decay_epochs),
            state.config["decay_factor"],
            a.factor_update_steps or 1,
            a.inv_update_steps or 1,
            a.interval_growth,
        )
        self.net = model
        if world.size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[world.device.index] if world.device.type == "cuda" else None
            )
        self.optimizer = _make_optimizer(name, model, self.sched.lr(0), a)
        self.precond, self.adaptive = (
            _make_preconditioner(self.net, self.sched, a, getattr(task, "tokens_per_sample", 1))
            if name == "kfac"
            else (None, None)
        )
        self.last_batch = None  # the global batch of the last step (see _pending_batch)
        if self.precond is not None and resume is None:
            layers = ", ".join(f"{l.name} ({type(l.module).__name__})" for l in self.precond.layers)
            skipped = f"; layers matching {', '.join(a.skip_layers)} take plain SGD steps" if a.skip_layers else ""
            auto = "; step length and momentum from the quadratic model (--auto-step)" if a.auto_step else ""
            log(f"kfac preconditions {layers}{skipped}{auto}")
        if resume is not None:
            try:
                model.load_state_dict(resume["model"])
                self.optimizer.load_state_dict(resume["optimizer"])
                if self.precond is not None:
                    self.precond.load_state_dict(resume["preconditioner"])
                    self._resume_measurement(resume.get("pending_batch"))
            # The state dicts come from the file: any of these means it was edited or foreign.
            except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
                raise CheckpointError(f"checkpoint for {name} does not fit the model/optimizer: {exc}") from exc
            restore_rng_state(resume["rng"])
            state.history, state.step_times = list(resume["history"]), list(resume["step_times"])
            state.train_time_s, state.wall_s = resume["train_time_s"], resume["wall_s"]
            state.epoch, state.step = resume["epoch"], resume["step"]
        self.rng = capture_rng_state()  # this run's RNG between its epochs

    def _pending_batch(self) -> dict | None:
        """The batch of an adaptive-damping measurement the checkpoint holds: its closure
        is re-made from it on resume, so the resumed run stays bit-identical."""
        if self.adaptive is None or not self.adaptive.pending:
            return None
        x, y = self.last_batch
        return dict(x=x.cpu(), y=y.cpu())

    def _resume_measurement(self, batch: dict | None) -> None:
        if self.adaptive is None or not self.adaptive.pending or batch is None:
            return  # without the batch the library drops the measurement, with a warning
        world, net, task = self.world, self.net, self.task
        x = batch["x"][world.rank :: world.size].to(world.device)
        y = batch["y"][world.rank :: world.size].to(world.device)
        self.adaptive.resume(lambda: task.loss(net(x), y))

    def train_epoch(self, epoch: int) -> None:
        from tqdm import tqdm

        a, state, world, sched = self.a, self.state, self.world, self.sched
        name, net, optimizer, precond, task = (state.name, self.net, self.optimizer, self.precond, self.task)
        restore_rng_state(self.rng)
        wall0 = time.perf_counter()
        net.train()
        order = torch.randperm(task.n_train, generator=_epoch_generator(a.seed, epoch, 0))
        augment_rng = _epoch_generator(a.seed, epoch, 1)
        loss_sum = torch.zeros((), dtype=torch.float64, device=world.device)
        epoch_train_s = 0.0
        cuda = world.device.type == "cuda"
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"{name} epoch {epoch + 1}/{a.epochs}",
            leave=False,
            disable=a.quiet or not world.main,
            file=sys.stderr,
        )
        tokens_per_step = a.batch_size * getattr(task, "tokens_per_sample", 0)
        for i in bar:
            if tokens_per_step and i:
                bar.set_postfix_str(f"{tokens_per_step * i / epoch_train_s:,.0f} tokens/s", refresh=False)
            t0 = time.perf_counter()
            # Same global batch on every rank; each takes an interleaved 1/N slice.
            x, y = task.train_batch(order[i * a.batch_size : (i + 1) * a.batch_size], augment_rng)
            self.last_batch = (x, y)
            x = x[world.rank :: world.size].to(world.device, non_blocking=True)
            y = y[world.rank :: world.size].to(world.device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = sched.lr(state.step)
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(net(x), y)
            loss.backward()
            if precond is not None:
                # Adaptive damping re-evaluates this batch's loss (no grad) after the move;
                # the auto step takes its inputs and loss of the outputs.
                # (x, y bound now: the closure is evaluated again at the next step.)
                if a.auto_step:
                    closure = lambda x=x, y=y: (x, lambda out: task.loss(out, y))  # noqa: E731
                elif a.adaptive_damping:
                    closure = lambda x=x, y=y: task.loss(net(x), y)  # noqa: E731
                else:
                    closure = None
                precond.step(closure=closure)
            optimizer.step()
            loss_sum += loss.detach()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            epoch_train_s += dt
            state.step_times.append(dt)
            state.step += 1
        train_loss = _all_sum([loss_sum.item() / self.steps_per_epoch], world)[0] / world.size
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"{name}: training loss became {train_loss} in epoch {epoch + 1}; lower the learning rate (--lr-{name})"
            )
        net.eval()
        metrics = task.evaluate(net, world.rank, world.size, world.device, lambda v: _all_sum(v, world))
        state.train_time_s += epoch_train_s
        state.epoch = epoch + 1
        state.wall_s += time.perf_counter() - wall0
        record = dict(
            epoch=state.epoch,
            train_loss=train_loss,
            **metrics,
            train_time_s=state.train_time_s,
            lr=sched.lr(state.step - 1),
        )
        state.history.append(record)
        shown = "  ".join(
            f"{k.replace('_', ' ')} " + (f"{100 * v:6.2f}%" if k.endswith("accuracy") else f"{v:.4f}")
            for k, v in metrics.items()
        )
        self.log(
            f"{name} epoch {state.epoch:3d}: train loss {train_loss:.4f}  {shown}  train {state.train_time_s:7.2f}s"
        )
        self.rng = capture_rng_state()
        if a.save and world.main:
            save_checkpoint(
                os.path.join(a.save, f"{name}.pt"),
                dict(
                    format=FORMAT,
                    config=state.config,
                    epoch=state.epoch,
                    step=state.step,
                    model=self.model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    preconditioner=precond.state_dict() if precond is not None else None,
                    rng=self.rng,
                    data_order=dict(seed=a.seed, rule="randperm per epoch"),
                    pending_batch=self._pending_batch(),
                    history=state.history,
                    step_times=state.step_times,
                    train_time_s=state.train_time_s,
                    wall_s=state.wall_s,
                ),
            )


def _train_run(
    states: dict, a: argparse.Namespace, task, init_weights: dict, model_args: tuple, world: World, resumes: dict, log
) -> None:
    """Train every run, interleaved epoch by epoch."""
    runs = []
    for name, state in states.items():
        torch.manual_seed(a.seed)  # identical RNG stream at the start of each run
        runs.append(_Run(state, a, task, init_weights, model_args, world, resumes[name], log))
    last_epoch = a.epochs if a.stop_after is None else min(a.epochs, a.stop_after)
    first = min(r.state.epoch for r in runs)
    for epoch in range(first, last_epoch):
        # Reversed every other epoch: no optimizer always runs right after another.
        for run in runs if epoch % 2 == 0 else runs[::-1]:
            if run.state.epoch <= epoch:
                run.train_epoch(epoch)


# --------------------------------------------------------------------------- results
def summarize(state: RunState, target: float, metric: str = "test_accuracy", higher_is_better: bool = True) -> dict:
    """The JSON record of one run."""

    def reached(r):
        return r[metric] >= target if higher_is_better else r[metric] <= target

    hit = next((r for r in state.history if reached(r)), None)
    times = state.step_times
    last = state.history[-1] if state.history else {}
    out = dict(
        lr=state.config["lr"],
        time_to_target_s=hit["train_time_s"] if hit else None,
        epochs_to_target=hit["epoch"] if hit else None,
        final_test_accuracy=last.get("test_accuracy"),
        best_test_accuracy=max((r["test_accuracy"] for r in state.history if "test_accuracy" in r), default=None),
        final_test_loss=last.get("test_loss"),
        step_ms_median=1000 * statistics.median(times) if times else None,
        step_ms_mean=1000 * statistics.fmean(times) if times else None,
        steps=state.step,
        epochs=state.epoch,
        train_s=state.train_time_s,
        wall_s=state.wall_s,
        config=state.config,
        history=state.history,
    )
    if metric != "test_accuracy":
        out[f"final_{metric}"] = last.get(metric)
    return out


def format_table(runs: dict, target: float, metric: str = "test_accuracy") -> str:
    fmt = lambda v, spec: "never" if v is None else format(v, spec)  # noqa: E731
    accuracy = metric == "test_accuracy"
    goal = f"{100 * target:g}% test accuracy" if accuracy else f"{metric.replace('_', ' ')} {target:g}"
    final = "final test acc" if accuracy else f"final {metric.replace('_', ' ')}"
    lines = [
        f"target: {goal}; times are training time (evaluation excluded)",
        "",
        f"| optimizer | lr | epochs to target | seconds to target | {final} | step ms (median / mean) | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        value = r["final_test_accuracy"] if accuracy else r[f"final_{metric}"]
        shown = "-" if value is None else (f"{100 * value:.2f}%" if accuracy else f"{value:.4f}")
        lines.append(
            f"| {name} | {r['lr']:g} | {fmt(r['epochs_to_target'], 'd')} | "
            f"{fmt(r['time_to_target_s'], '.2f')} | {shown} "
            f"| {r['step_ms_median']:.2f} / {r['step_ms_mean']:.2f} | {r['train_s']:.1f} |"
        )
    if "kfac" in runs:
        k = runs["kfac"]
        baselines = [n for n in runs if n != "kfac"]
        if baselines:
            lines.append("")
        for b in baselines:
            s = runs[b]
            lines.append(
                f"K-FAC overhead per step vs {NAMES[b]}: "
                f"{100 * (k['step_ms_mean'] / s['step_ms_mean'] - 1):+.0f}%"
                f" (mean, includes factor and eigendecomposition steps), "
                f"{100 * (k['step_ms_median'] / s['step_ms_median'] - 1):+.0f}% (median)"
            )
        for b in baselines:
            s = runs[b]
            if s["time_to_target_s"] and k["time_to_target_s"]:
                lines.append(
                    f"time to target: K-FAC / {NAMES[b]} = {k['time_to_target_s'] / s['time_to_target_s']:.2f}"
                )
    return "\n".join(lines)


# Besides ValueError and OSError, which kfac_ext.cli.main prints as one line.
EXPECTED_ERRORS = (CheckpointError, FloatingPointError)


def interrupted_message(args: argparse.Namespace) -> str:
    return resume_hint(args.save)


def run(args: argparse.Namespace) -> int:
    return _run(args)


def _run(a: argparse.Namespace) -> int:
    resolve_defaults(a)
    world = _setup_world(a.device)
    try:
        with sigterm_as_interrupt():  # a scheduler's stop: as Ctrl-C, exit 143
            return _run_in_world(a, world)
    finally:
        if world.owns_group:
            dist.destroy_process_group()


def _run_in_world(a: argparse.Namespace, world: World) -> int:
    if world.main:
        check_outputs(a)  # --save / --plot writable: known now, not after an epoch
    if a.threads:
        torch.set_num_threads(a.threads)
    out = sys.stderr if a.json else sys.stdout

    def log(msg: str) -> None:
        if world.main and not a.quiet:
            print(msg, file=out, flush=True)

    data = None if a.task == "lm" else load_dataset(a.data, a.data_dir)  # lm: its own text
    task = make_task(a.task, data)
    check_fits_data(a, a.data, task.n_train, world.size)
    names = a.optimizers
    states = {n: RunState(n, _run_config(n, a, world)) for n in names}
    resumes: dict[str, dict | None] = {n: None for n in names}
    if a.resume:
        found = {n: os.path.join(a.resume, f"{n}.pt") for n in names}
        if not any(os.path.isfile(p) for p in found.values()):
            raise CheckpointError(f"--resume {a.resume}: no checkpoint there (expected {', '.join(found.values())})")
        # Load (and check) every checkpoint before training anything: a bad one stops
        # the run before a single file is written.
        for n, path in found.items():
            if os.path.isfile(path):
                resumes[n] = load_checkpoint(path, states[n].config, (task.metric,))
    # One initialisation, shared by every run; every random choice follows --seed.
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    from kfac_ext.app.models import build_model

    model_args = task.model_args if data is None else (data.num_classes, data.in_channels)
    init_model = build_model(a.model, *model_args)
    check_model_fits(init_model, a, task.train_batch(torch.arange(2), torch.Generator())[0])
    if "kfac" in names:
        _check_skip_layers(init_model, a)
    init_weights = copy.deepcopy(init_model.state_dict())
    what = task.describe() if data is None else f"{a.data}: {task.n_train} train / {len(data.test_y)} test samples"
    log(f"{what}, model {a.model}, batch {a.batch_size}, {a.epochs} epochs, {world.size} process(es) on {world.device}")
    _train_run(states, a, task, init_weights, model_args, world, resumes, log)
    if not world.main:
        return 0
    target = a.target_accuracy if a.task == "classify" else a.target_loss
    runs = {n: summarize(s, target, task.metric, task.higher_is_better) for n, s in states.items()}
    if a.plot:
        from kfac_ext.app.plotting import plot_curves

        plot_curves(
            {n: s.history for n, s in states.items()},
            a.plot,
            target,
            title=f"{a.model} on {a.data}, seed {a.seed}",
            metric=task.metric,
            metric_label=task.metric_label,
        )
    table = format_table(runs, target, task.metric)
    if a.json:
        if not a.quiet:
            print(table, file=sys.stderr)
        goal = dict(target_accuracy=target) if a.task == "classify" else dict(task=a.task, target_loss=target)
        print(
            json.dumps(
                dict(
                    **goal,
                    data=a.data,
                    model=a.model,
                    seed=a.seed,
                    world_size=world.size,
                    plot=a.plot or None,
                    timing="training time only (evaluation excluded)",
                    runs=runs,
                )
            )
        )
    else:
        print(table)
        if a.plot:
            print(f"\ncurves: {a.plot}")
    return 0
