"""Train a model with SGD, with K-FAC-preconditioned SGD, or both side by side.

Default: scikit-learn's handwritten digits (no download), a small CNN, both
optimizers from the same initial weights and the same data order, each with
its own tuned learning rate (benchmarks/lr_sweep.py), momentum, weight decay,
linear lr warm-up and step decay. Prints a table (epochs and training seconds
to the target test accuracy, final accuracy, time per step, K-FAC overhead)
and writes a PNG of the curves.

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
import re
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from kfac_ext.app.checkpoint import (CheckpointError, FORMAT, capture_rng_state, load_checkpoint,
                                 restore_rng_state, resume_hint, save_checkpoint)
from kfac_ext.app.data import Dataset, load_dataset
from kfac_ext.app.validation import (check_fits_data, check_model_fits, check_outputs,
                                     check_train_args)

# Per-dataset defaults; the learning rates come from benchmarks/lr_sweep.py.
DEFAULTS = {
    "digits": dict(model="digits-cnn", epochs=12, batch_size=64, lr_sgd=0.05, lr_kfac=0.2,
                   damping=0.1, skip_layers=("Conv2d",),
                   weight_decay=5e-4, warmup_epochs=1.0, decay_epochs=None,
                   target_accuracy=0.97, factor_update_steps=5, inv_update_steps=20,
                   inv_lag_steps=2, threads=1),
    "cifar10": dict(model="resnet20", epochs=100, batch_size=128, lr_sgd=0.1, lr_kfac=0.1,
                    damping=0.003, skip_layers=(),
                    weight_decay=5e-4, warmup_epochs=5.0, decay_epochs=None,
                    target_accuracy=0.91, factor_update_steps=10, inv_update_steps=100,
                    inv_lag_steps=0, threads=0),
}
OPTIMIZERS = ("sgd", "kfac")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("data and model")
    d.add_argument("--data", choices=sorted(DEFAULTS), default="digits",
                   help="dataset (default digits: built into scikit-learn)")
    d.add_argument("--data-dir", default=None,
                   help="folder with the CIFAR-10 python batches (data_batch_1..5, test_batch)")
    d.add_argument("--model", default=None,
                   help="digits-cnn, digits-mlp, resnet20, resnet32, resnet56 (default: "
                        "digits-cnn for digits, resnet20 for cifar10)")
    o = parser.add_argument_group("optimisation (both optimizers)")
    o.add_argument("--optimizer", choices=("sgd", "kfac", "both"), default="both")
    o.add_argument("--epochs", type=int, default=None,
                   help="length of the lr schedule (default 12 on digits, 100 on cifar10)")
    o.add_argument("--batch-size", type=int, default=None,
                   help="global batch size (default 64 on digits, 128 on cifar10)")
    o.add_argument("--lr-sgd", type=float, default=None,
                   help="peak learning rate for SGD (default 0.05 on digits, 0.1 on cifar10)")
    o.add_argument("--lr-kfac", type=float, default=None,
                   help="peak learning rate for K-FAC (default 0.2 on digits, 0.1 on cifar10)")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    o.add_argument("--weight-decay", type=float, default=None, help="default 5e-4")
    o.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear lr warm-up from lr/10 over this many epochs")
    o.add_argument("--decay-epochs", type=float, nargs="*", default=None,
                   help="epochs at which the lr is multiplied by --decay-factor "
                        "(default: 50%% and 75%% of --epochs)")
    o.add_argument("--decay-factor", type=float, default=0.1, help="default 0.1")
    o.add_argument("--target-accuracy", type=float, default=None,
                   help="test accuracy (fraction) that time-to-target measures "
                        "(default 0.97 on digits, 0.91 on cifar10)")
    k = parser.add_argument_group("K-FAC")
    k.add_argument("--compute-method", choices=("eigen", "inverse"), default="eigen",
                   help="eigen: eigen-basis preconditioning (default); inverse: damped factor "
                        "inverses (two GEMMs a layer instead of four; damping added to each "
                        "factor, so it wants its own --damping)")
    k.add_argument("--damping", type=float, default=None,
                   help="lambda: added to the eigenvalue products (eigen) or to each factor "
                        "(inverse); default 0.1 on digits, 0.003 on cifar10")
    k.add_argument("--skip-layers", nargs="*", default=None, metavar="PATTERN",
                   help="layers K-FAC leaves to plain SGD steps: regular expressions matched "
                        "against module names and class names, e.g. Conv2d or '^0$'. Default "
                        "on digits: Conv2d (tuned with digits-cnn, like the other digits "
                        "defaults, and applied whatever --model is; see the README); on "
                        "cifar10: none. Give the flag with no pattern to precondition every "
                        "layer")
    k.add_argument("--factor-decay", type=float, default=0.95,
                   help="running-average weight of the factors (default 0.95)")
    k.add_argument("--kl-clip", type=float, default=0.001, help="default 0.001")
    k.add_argument("--factor-update-steps", type=int, default=None,
                   help="steps between factor updates before the first lr decay "
                        "(default 5 on digits, 10 on cifar10)")
    k.add_argument("--inv-update-steps", type=int, default=None,
                   help="steps between eigendecompositions before the first lr decay "
                        "(default 20 on digits, 100 on cifar10)")
    k.add_argument("--inv-lag-steps", type=int, default=None,
                   help="install each eigendecomposition this many steps after its factors, "
                        "solving it on a background thread meanwhile (CPU; default 2 on digits, "
                        "whose one training thread leaves a core free; 0 on cifar10)")
    k.add_argument("--interval-growth", type=float, default=2.0,
                   help="both update intervals are multiplied by this at every lr decay "
                        "(dynamic decoupling: curvature is refreshed less as training settles)")
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0, help="seeds every random choice")
    r.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda if present)")
    r.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on digits: its tiny layers run several "
                        "times faster on one thread than on two busy cores; 0 = torch's default)")
    r.add_argument("--save", metavar="DIR", default=None,
                   help="write a checkpoint per run (DIR/sgd.pt, DIR/kfac.pt) after every epoch")
    r.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the runs checkpointed in DIR (same settings required)")
    r.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs of the schedule (resume later)")
    r.add_argument("--plot", default="kfac_ext_train.png",
                   help="PNG of the learning curves ('' to skip)")
    r.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (logs go to stderr)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch logs")


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
    owns_group: bool = False   # we initialised the process group, so we tear it down

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
    history: list = field(default_factory=list)     # one record per finished epoch
    step_times: list = field(default_factory=list)  # seconds per training step
    train_time_s: float = 0.0
    wall_s: float = 0.0
    epoch: int = 0
    step: int = 0


def _run_config(name: str, a: argparse.Namespace, world: World) -> dict:
    """Everything that decides a run's curve; a checkpoint must match it to be resumed."""
    cfg = dict(optimizer=name, data=a.data, model=a.model, epochs=a.epochs,
               batch_size=a.batch_size, lr=a.lr_kfac if name == "kfac" else a.lr_sgd,
               momentum=a.momentum, weight_decay=a.weight_decay,
               warmup_epochs=a.warmup_epochs, decay_epochs=list(a.decay_epochs),
               decay_factor=a.decay_factor, seed=a.seed, world_size=world.size)
    if name == "kfac":
        cfg.update(compute_method=a.compute_method, damping=a.damping,
                   factor_decay=a.factor_decay, kl_clip=a.kl_clip,
                   factor_update_steps=a.factor_update_steps,
                   inv_update_steps=a.inv_update_steps, interval_growth=a.interval_growth,
                   inv_lag_steps=a.inv_lag_steps, skip_layers=list(a.skip_layers))
    return cfg


def _check_skip_layers(model: torch.nn.Module, a: argparse.Namespace) -> None:
    """Refuse --skip-layers patterns that leave K-FAC nothing, before any run starts."""
    from kfac_ext import KFACPreconditioner
    from kfac_ext.comm import LocalComm

    probe = KFACPreconditioner(model, skip_layers=a.skip_layers, comm=LocalComm())
    probe.remove_hooks()
    if not probe.layers:
        raise ValueError(f"--skip-layers {' '.join(a.skip_layers)} leaves no layer of {a.model} "
                         "for K-FAC to precondition; give fewer patterns, or the flag alone "
                         "to precondition every layer")


def _make_preconditioner(model: torch.nn.Module, sched: Schedule, a: argparse.Namespace):
    from kfac_ext import KFACPreconditioner  # imported here: SGD runs never need it

    return KFACPreconditioner(model, factor_update_steps=sched.factor_update_steps,
                              inv_update_steps=sched.inv_update_steps, damping=a.damping,
                              factor_decay=a.factor_decay, kl_clip=a.kl_clip, lr=sched.lr,
                              inv_lag_steps=a.inv_lag_steps, compute_method=a.compute_method,
                              skip_layers=a.skip_layers)


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, stream): data order needs no saved state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def _evaluate(model, data: Dataset, world: World, batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy) on the test set, sharded over the ranks."""
    model.eval()
    n = len(data.test_y)
    mine = torch.arange(world.rank, n, world.size)
    loss_sum, correct = 0.0, 0.0
    with torch.no_grad():
        for chunk in mine.split(batch_size):
            x, y = data.batch(chunk, train=False)
            x, y = x.to(world.device), y.to(world.device)
            out = model(x)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    loss_sum, correct = _all_sum([loss_sum, correct], world)
    return loss_sum / n, correct / n


def _train_run(state: RunState, a: argparse.Namespace, data: Dataset, init_weights: dict,
               world: World, resume: dict | None, log) -> RunState:
    from kfac_ext.app.models import build_model
    from tqdm import tqdm

    name = state.name
    model = build_model(a.model, data.num_classes, data.in_channels)
    model.load_state_dict(init_weights)
    model.to(world.device)
    n_train = len(data.train_y)
    steps_per_epoch = n_train // a.batch_size  # drop the last partial batch: equal steps
    sched = Schedule(state.config["lr"], steps_per_epoch, a.warmup_epochs,
                     tuple(a.decay_epochs), a.decay_factor, a.factor_update_steps or 1,
                     a.inv_update_steps or 1, a.interval_growth)
    net = model
    if world.size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=sched.lr(0), momentum=a.momentum,
                                weight_decay=a.weight_decay)
    precond = _make_preconditioner(net, sched, a) if name == "kfac" else None
    if precond is not None and resume is None:
        layers = ", ".join(f"{l.name} ({type(l.module).__name__})" for l in precond.layers)
        skipped = f"; layers matching {', '.join(a.skip_layers)} take plain SGD steps" \
            if a.skip_layers else ""
        log(f"kfac preconditions {layers}{skipped}")
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            if precond is not None:
                precond.load_state_dict(resume["preconditioner"])
        # The state dicts come from the file: any of these means it was edited or foreign.
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError,
                IndexError) as exc:
            raise CheckpointError(f"checkpoint for {name} does not fit the model/optimizer: "
                                  f"{exc}") from exc
        restore_rng_state(resume["rng"])
        state.history, state.step_times = list(resume["history"]), list(resume["step_times"])
        state.train_time_s, state.wall_s = resume["train_time_s"], resume["wall_s"]
        state.epoch, state.step = resume["epoch"], resume["step"]
    last_epoch = a.epochs if a.stop_after is None else min(a.epochs, a.stop_after)
    cuda = world.device.type == "cuda"
    for epoch in range(state.epoch, last_epoch):
        wall0 = time.perf_counter()
        net.train()
        order = torch.randperm(n_train, generator=_epoch_generator(a.seed, epoch, 0))
        augment_rng = _epoch_generator(a.seed, epoch, 1)
        loss_sum = torch.zeros((), dtype=torch.float64, device=world.device)
        epoch_train_s = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{a.epochs}",
                   leave=False, disable=a.quiet or not world.main, file=sys.stderr)
        for i in bar:
            t0 = time.perf_counter()
            # Same global batch on every rank; each takes an interleaved 1/N slice.
            x, y = data.batch(order[i * a.batch_size:(i + 1) * a.batch_size], True, augment_rng)
            x = x[world.rank::world.size].to(world.device, non_blocking=True)
            y = y[world.rank::world.size].to(world.device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = sched.lr(state.step)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            if precond is not None:
                precond.step()
            optimizer.step()
            loss_sum += loss.detach()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            epoch_train_s += dt
            state.step_times.append(dt)
            state.step += 1
        train_loss = _all_sum([loss_sum.item() / steps_per_epoch], world)[0] / world.size
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{name}: training loss became {train_loss} in epoch "
                                     f"{epoch + 1}; lower the learning rate (--lr-{name})")
        test_loss, test_acc = _evaluate(net, data, world)
        state.train_time_s += epoch_train_s
        state.epoch = epoch + 1
        state.wall_s += time.perf_counter() - wall0
        record = dict(epoch=state.epoch, train_loss=train_loss, test_loss=test_loss,
                      test_accuracy=test_acc, train_time_s=state.train_time_s,
                      lr=sched.lr(state.step - 1))
        state.history.append(record)
        log(f"{name} epoch {state.epoch:3d}: train loss {train_loss:.4f}  test loss "
            f"{test_loss:.4f}  test acc {100 * test_acc:6.2f}%  train {state.train_time_s:7.2f}s")
        if a.save and world.main:
            save_checkpoint(os.path.join(a.save, f"{name}.pt"), dict(
                format=FORMAT, config=state.config, epoch=state.epoch, step=state.step,
                model=model.state_dict(), optimizer=optimizer.state_dict(),
                preconditioner=precond.state_dict() if precond is not None else None,
                rng=capture_rng_state(), data_order=dict(seed=a.seed, rule="randperm per epoch"),
                history=state.history, step_times=state.step_times,
                train_time_s=state.train_time_s, wall_s=state.wall_s))
    return state


# --------------------------------------------------------------------------- results
def summarize(state: RunState, target: float) -> dict:
    """The JSON record of one run."""
    reached = next((r for r in state.history if r["test_accuracy"] >= target), None)
    times = state.step_times
    return dict(
        lr=state.config["lr"],
        time_to_target_s=reached["train_time_s"] if reached else None,
        epochs_to_target=reached["epoch"] if reached else None,
        final_test_accuracy=state.history[-1]["test_accuracy"] if state.history else None,
        best_test_accuracy=max((r["test_accuracy"] for r in state.history), default=None),
        final_test_loss=state.history[-1]["test_loss"] if state.history else None,
        step_ms_median=1000 * statistics.median(times) if times else None,
        step_ms_mean=1000 * statistics.fmean(times) if times else None,
        steps=state.step, epochs=state.epoch, train_s=state.train_time_s, wall_s=state.wall_s,
        config=state.config, history=state.history)


def format_table(runs: dict, target: float) -> str:
    fmt = lambda v, spec: "never" if v is None else format(v, spec)  # noqa: E731
    lines = [f"target: {100 * target:g}% test accuracy; times are training time "
             f"(evaluation excluded)", "",
             "| optimizer | lr | epochs to target | seconds to target | final test acc "
             "| step ms (median / mean) | train s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['lr']:g} | {fmt(r['epochs_to_target'], 'd')} | "
                     f"{fmt(r['time_to_target_s'], '.2f')} | {100 * r['final_test_accuracy']:.2f}% "
                     f"| {r['step_ms_median']:.2f} / {r['step_ms_mean']:.2f} | {r['train_s']:.1f} |")
    if "sgd" in runs and "kfac" in runs:
        s, k = runs["sgd"], runs["kfac"]
        lines.append("")
        lines.append(f"K-FAC overhead per step: {100 * (k['step_ms_mean'] / s['step_ms_mean'] - 1):+.0f}%"
                     f" (mean, includes factor and eigendecomposition steps), "
                     f"{100 * (k['step_ms_median'] / s['step_ms_median'] - 1):+.0f}% (median)")
        if s["time_to_target_s"] and k["time_to_target_s"]:
            lines.append(f"time to target: K-FAC / SGD = "
                         f"{k['time_to_target_s'] / s['time_to_target_s']:.2f}")
    return "\n".join(lines)


def _resolve_defaults(a: argparse.Namespace) -> None:
    for key, value in DEFAULTS[a.data].items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    if a.decay_epochs is None:
        a.decay_epochs = [0.5 * a.epochs, 0.75 * a.epochs]
    check_train_args(a)  # every flag, whatever --optimizer runs (kfac_ext/app/validation.py)
    for pattern in a.skip_layers:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"--skip-layers {pattern!r} is not a regular expression: {exc}") \
                from None


# Besides ValueError and OSError, which kfac_ext.cli.main prints as one line.
EXPECTED_ERRORS = (CheckpointError, FloatingPointError)


def interrupted_message(args: argparse.Namespace) -> str:
    return resume_hint(args.save)


def run(args: argparse.Namespace) -> int:
    return _run(args)


def _run(a: argparse.Namespace) -> int:
    _resolve_defaults(a)
    world = _setup_world(a.device)
    try:
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

    data = load_dataset(a.data, a.data_dir)
    check_fits_data(a, a.data, len(data.train_y), world.size)
    names = OPTIMIZERS if a.optimizer == "both" else (a.optimizer,)
    states = {n: RunState(n, _run_config(n, a, world)) for n in names}
    resumes: dict[str, dict | None] = {n: None for n in names}
    if a.resume:
        found = {n: os.path.join(a.resume, f"{n}.pt") for n in names}
        if not any(os.path.isfile(p) for p in found.values()):
            raise CheckpointError(f"--resume {a.resume}: no checkpoint there "
                                  f"(expected {', '.join(found.values())})")
        # Load (and check) every checkpoint before training anything: a bad one stops
        # the run before a single file is written.
        for n, path in found.items():
            if os.path.isfile(path):
                resumes[n] = load_checkpoint(path, states[n].config, ("test_accuracy",))
    # One initialisation, shared by both runs; every random choice follows --seed.
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    from kfac_ext.app.models import build_model

    init_model = build_model(a.model, data.num_classes, data.in_channels)
    check_model_fits(init_model, a, data.batch(torch.arange(2), train=False)[0])
    if "kfac" in names:
        _check_skip_layers(init_model, a)
    init_weights = copy.deepcopy(init_model.state_dict())
    log(f"{a.data}: {len(data.train_y)} train / {len(data.test_y)} test samples, model "
        f"{a.model}, batch {a.batch_size}, {a.epochs} epochs, {world.size} process(es) on "
        f"{world.device}")
    for n in names:
        torch.manual_seed(a.seed)  # identical RNG stream at the start of each run
        _train_run(states[n], a, data, init_weights, world, resumes[n], log)
    if not world.main:
        return 0
    runs = {n: summarize(s, a.target_accuracy) for n, s in states.items()}
    if a.plot:
        from kfac_ext.app.plotting import plot_curves

        plot_curves({n: s.history for n, s in states.items()}, a.plot, a.target_accuracy,
                    title=f"{a.model} on {a.data}, seed {a.seed}")
    table = format_table(runs, a.target_accuracy)
    if a.json:
        if not a.quiet:
            print(table, file=sys.stderr)
        print(json.dumps(dict(target_accuracy=a.target_accuracy, data=a.data, model=a.model,
                              seed=a.seed, world_size=world.size, plot=a.plot or None,
                              timing="training time only (evaluation excluded)", runs=runs)))
    else:
        print(table)
        if a.plot:
            print(f"\ncurves: {a.plot}")
    return 0
