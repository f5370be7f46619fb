"""Steps to a target loss across batch sizes, per optimizer (Shallue et al. 2019's protocol).

For each batch size and optimizer the hyperparameters come from a small sweep on
seeds disjoint from the reported ones, then the chosen setting is run on the
reported seeds. Steps, not seconds, are the main figure: they do not depend on
the machine's load. A second, separate measurement times each optimizer's step
at every batch size, interleaved step by step, so the K-FAC / AdamW step-time
ratio is load-fair; seconds to target are median steps x the mean step time (over
whole update periods: until 2026-12-07 20:50 UTC the median step time, which
understated lazy K-FAC's seconds by 5-11 %).

The loop: a constant learning rate (no warm-up, no decay), each step a fresh
random draw of ``batch`` distinct training samples (seeded by the run's seed,
so every optimizer sees the same batches), the target metric measured on the
fixed evaluation set after step s whenever s <= 15 or s is a multiple of
s // 15: a step count is exact up to 7 %. The evaluation, a pass over the whole
evaluation set, costs more than a small batch's step, so it is skipped while the
step's own batch loss is above 1.3x the target (the batch loss is an unbiased
estimate of the training loss; 1.3x is several of its standard deviations).

The sweep (per task, batch size and optimizer; every optimizer the same budget):
  1. a learning-rate grid of 4 points a factor 2 apart, centred by the square-root
     rule on the task's batch-64 default; while the best is at the grid's edge the
     grid is extended by one point that way (at most 3 times);
  2. two more settings around stage 1's best: K-FAC its damping x1/3 and x3,
     SGD and AdamW the lr x2^(-1/2) and x2^(1/2);
  3. with --variants, the task's variants of each optimizer, applied one at a time to
     the best so far, the same number for every optimizer (lm: K-FAC factor decay 0.8
     and 0.95 (its base: 0.5, G per loss term), AdamW beta1 0.9 and beta2 0.999 (its base:
     0.8, 0.95), SGD momentum 0.8 and 0.95).
  A setting scores its median steps to target over the sweep seeds; a run is cut
  off at 2x the best median so far (it cannot win) and counts as never.

Critical batch size: the smallest batch B of the list at which doubling the batch
cuts the median steps by less than 30 % (steps(2B) / steps(B) > 0.7); perfect
scaling would halve them.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/batch_scaling.py \
        [--task autoencoder|lm|digits] [--optimizers sgd adamw kfac kfac-lazy kfac-fF-iI ...]
        [--variants] [--quick] [--json-out F] [--plot docs/F.png]

--quick skips the sweep and runs the settings its sweeps chose on 2026-12-07 and 08 (SWEPT below;
autoencoder and lm). digits: the digits CNN to 3 % test error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_line  # noqa: E402

NAMES = {"sgd": "SGD", "adamw": "AdamW", "kfac": "K-FAC", "kfac-lazy": "K-FAC lazy", "soap": "SOAP"}
# K-FAC's factor / inverse update intervals: every step (most progress per step), and lazy
# (cheap steps; the intervals measured best for time on the sweep seeds, docs/training-races.md).
# Other intervals by name: "kfac-fF-iI" updates factors every F steps, inverses every I.
KFAC_INTERVALS = {"kfac": (1, 1), "kfac-lazy": (2, 10)}


def kfac_intervals(name: str) -> tuple[int, int]:
    """(factor, inverse) update intervals of a K-FAC optimizer name."""
    if name in KFAC_INTERVALS:
        return KFAC_INTERVALS[name]
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "kfac" and parts[1][:1] == "f" and parts[2][:1] == "i":
        return int(parts[1][1:]), int(parts[2][1:])
    raise ValueError(f"unknown K-FAC optimizer name {name!r} (kfac, kfac-lazy or kfac-fF-iI)")


def display(name: str) -> str:
    """The optimizer's name in tables."""
    if name in NAMES:
        return NAMES[name]
    f, i = kfac_intervals(name)
    return f"K-FAC {f}/{i}"


CUTOFF = 2.0  # a sweep run stops at this x the best median so far
PREFILTER = 1.3  # evaluate only once the batch loss is within this x the target
EDGE_EXTENSIONS = 3  # grid extensions allowed per side


# --------------------------------------------------------------------------- problems
@dataclass
class Problem:
    """A model, a batch sampler and a target on a fixed evaluation metric (lower is better)."""

    name: str
    target: float
    metric_label: str
    make_model: Callable[[], nn.Module]  # draws from torch's global RNG
    sample: Callable[[int, torch.Generator], tuple]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: Callable[[nn.Module], float]
    n_train: int
    center_lr: dict  # optimizer -> lr at batch 64
    kfac: dict = field(default_factory=dict)  # KFACPreconditioner arguments
    damping: float = 0.03
    tokens_per_sample: int = 1
    # --variants: stage 3 of the sweep, settings changed one at a time from the best of
    # stages 1-2; the same number for every optimizer (equal budget)
    variants: dict = field(default_factory=dict)
    # evaluate only once the step's batch loss is within PREFILTER x the target (the metric is a
    # loss of the same scale); False: at every due step (a metric such as an error rate)
    batch_loss_gate: bool = True
    # K-FAC's G scaled by the loss terms squared (make_optimizer's per_example_g), unless a
    # setting says otherwise
    per_example_g: bool = False
    # optimizer -> settings every sweep setting of it starts from (recorded in each setting)
    base: dict = field(default_factory=dict)


def autoencoder_problem(target: float | None = None) -> Problem:
    from kfac_ext.app.data import load_digits_dataset
    from kfac_ext.app.models import digits_autoencoder
    from kfac_ext.app.tasks import Autoencoder

    task = Autoencoder(load_digits_dataset())
    x_all = task.train_x

    def sample(batch, gen):
        x = x_all[torch.randperm(len(x_all), generator=gen)[:batch]]
        return x, x

    def metric(model):
        with torch.no_grad():
            return task.loss(model(x_all), x_all).item()

    # The batch-64 centres are kfac-ext train's tuned autoencoder defaults.
    return Problem(
        "autoencoder",
        1.5 if target is None else target,
        "training reconstruction loss",
        digits_autoencoder,
        sample,
        task.loss,
        metric,
        len(x_all),
        center_lr=dict(sgd=0.04, adamw=0.001, kfac=0.025, soap=0.003),
        kfac=dict(compute_method="inverse"),
        damping=0.03,
    )


def lm_problem(target: float | None = None) -> Problem:
    from kfac_ext.app.lm_data import load_text_corpus
    from kfac_ext.app.lm_model import char_gpt
    from kfac_ext.app.lm_task import LM_TARGET, LanguageModel

    task = LanguageModel(load_text_corpus())

    def sample(batch, gen):
        return task.train_batch(torch.randint(0, task.n_train, (batch,), generator=gen), gen)

    def metric(model):
        return task.validation_loss(model)

    return Problem(
        "lm",
        LM_TARGET if target is None else target,
        "validation loss (nats/byte)",
        lambda: char_gpt(),
        sample,
        task.loss,
        metric,
        task.n_train,
        center_lr=dict(sgd=0.1, adamw=0.003, kfac=0.05, soap=0.003),
        # G at the per-example (per loss term) scale and a short factor memory: a probe on the
        # sweep seeds at B 8 (2026-12-07 13:50, RESULTS.md) found the batch-mean G 1e-10-1e-7,
        # so λ 0.03 swamped it (K-FAC was A-only), and decay 0.95 kept the identity start in
        # A for most of a 200-step run
        kfac=dict(compute_method="inverse", factor_decay=0.5),
        per_example_g=True,
        damping=0.03,
        tokens_per_sample=task.context,
        # AdamW's betas from its own probe (B 8, sweep seeds, 14:25; RESULTS.md): β1 0.8 and β2
        # 0.95 at lr 0.00212 took 180, 176 steps against 192, 208 at the defaults
        base=dict(adamw=dict(beta1=0.8, beta2=0.95)),
        variants=dict(
            kfac=[dict(factor_decay=0.8), dict(factor_decay=0.95)],
            adamw=[dict(beta1=0.9), dict(beta2=0.999)],
            sgd=[dict(momentum=0.8), dict(momentum=0.95)],
            soap=[dict(beta2=0.95), dict(beta2=0.99)],
        ),
    )


def digits_problem(target: float | None = None) -> Problem:
    """The digits CNN (every layer preconditioned, as `kfac-ext train`'s default); the metric
    is the test error, the target 3 % (the race's 97 % test accuracy)."""
    from kfac_ext.app.data import load_digits_dataset
    from kfac_ext.app.models import digits_cnn
    from kfac_ext.app.tasks import Classification

    data = load_digits_dataset()
    task = Classification(data)
    test_x, test_y = data.batch(torch.arange(len(data.test_y)), train=False)

    def sample(batch, gen):
        return data.batch(torch.randperm(task.n_train, generator=gen)[:batch], True, gen)

    def metric(model):
        with torch.no_grad():
            return (model(test_x).argmax(1) != test_y).float().mean().item()

    # The batch-64 centres are kfac-ext train's swept digits defaults.
    return Problem(
        "digits",
        0.03 if target is None else target,
        "test error",
        digits_cnn,
        sample,
        task.loss,
        metric,
        task.n_train,
        center_lr=dict(sgd=0.05, adamw=0.01, kfac=0.1, soap=0.01),
        kfac=dict(compute_method="eigen"),
        damping=0.1,
        batch_loss_gate=False,
    )


PROBLEMS = {"autoencoder": autoencoder_problem, "lm": lm_problem, "digits": digits_problem}

# --quick: no sweep, the settings the sweeps of 2026-12-07 and 08 chose (benchmarks/RESULTS.md; sweep
# seed 100, batches 32-512), run on the reported seeds. SGD's are the sweep's picks, at the
# edge of its stability (RESULTS says what a smaller lr gives).
SWEPT = {
    "autoencoder": {
        "sgd": {
            32: dict(lr=0.0566),
            64: dict(lr=0.08),
            128: dict(lr=0.0566),
            256: dict(lr=0.113),
            512: dict(lr=0.0799),
        },
        # AdamW: re-swept 2026-12-08 02:18-02:25 with betas (0.7, 0.9) and (0.7, 0.95) on seeds
        # 100, 101 (--base); the new betas beat the default-betas picks at every batch (RESULTS)
        "adamw": {
            32: dict(lr=0.004, beta1=0.7, beta2=0.9),
            64: dict(lr=0.008, beta1=0.7, beta2=0.95),
            128: dict(lr=0.008, beta1=0.7, beta2=0.95),
            256: dict(lr=0.008, beta1=0.7, beta2=0.9),
            512: dict(lr=0.008, beta1=0.7, beta2=0.9),
        },
        # K-FAC every step: re-swept 2026-12-08 02:27-02:31 from its B 128 probe's base (SGD
        # momentum 0.8 with Nesterov, KL clip 0.003; --kfac-base), which beat the lr/λ-only picks
        # at every batch on seeds 100, 101 (RESULTS)
        "kfac": {
            b: dict(lr=lr, damping=lam, momentum=0.8, nesterov=True, kl_clip=0.003)
            for b, lr, lam in (
                (32, 0.141, 0.03),
                (64, 0.1, 0.03),
                (128, 0.141, 0.01),
                (256, 0.2, 0.03),
                (512, 0.283, 0.01),
            )
        },
        "kfac-lazy": {128: dict(lr=0.0354, damping=0.03), 256: dict(lr=0.1, damping=0.03)},
    },
    # the 2026-12-07 14:09-15:01 sweeps with --variants (seeds 100, 101; RESULTS.md): AdamW from
    # beta1 0.8, beta2 0.95, K-FAC (G per loss term, factor decay 0.5) and K-FAC lazy; then the
    # 2026-12-08 01:30-01:59 probes, 24 settings each on the sweep seeds, whose winners are kept
    # where they beat the sweep's pick there (RESULTS, fifth pass): AdamW B 8 beta2 0.9 with a
    # 20-step warm-up (160, 176 against 180, 176), K-FAC B 16 momentum 0.8 (72, 75 against 72,
    # 80), K-FAC lazy B 16 factor decay 0.3 (96, 102 against 102, 112)
    "lm": {
        "adamw": {
            8: dict(lr=0.00212, beta1=0.8, beta2=0.9, warmup=20),
            **{b: dict(lr=0.00212, beta1=0.8, beta2=0.95) for b in (16, 32, 64)},
        },
        "kfac": {
            8: dict(lr=0.00884, damping=0.03),
            16: dict(lr=0.05, damping=0.03, momentum=0.9, nesterov=True),  # 2026-12-08 02:36 (RESULTS)
            32: dict(lr=0.0177, damping=0.03),
            64: dict(lr=0.2, damping=0.01),
        },
        "kfac-lazy": {
            8: dict(lr=0.00884, damping=0.03),
            16: dict(lr=0.05, damping=0.09, factor_decay=0.3),
        },
    },
}


# --------------------------------------------------------------------------- one run
# A K-FAC sweep setting's keys and the KFACPreconditioner arguments they set.
_KFAC_SETTINGS = {
    "method": "compute_method",
    "approx": "kfac_approx",
    "kl_clip": "kl_clip",
    "factor_decay": "factor_decay",
    "skip": "skip_layers",
    "factor_init": "factor_init",
    "relative_damping": "relative_damping",
}


def make_optimizer(name: str, model: nn.Module, problem: Problem, setting: dict, batch: int | None = None):
    """(optimizer, preconditioner or None) for one setting {lr, damping} and, from a --variants
    sweep, method (K-FAC's compute method), approx (kfac_approx), kl_clip (None: off),
    factor_decay, factor_init ('identity' or 'first_batch'), per_example_g (True: G scaled
    by the batch's loss terms squared, batch x tokens_per_sample, Martens & Grosse's
    per-example scale, so that λ is not 10^5-10^9 x the batch-mean G), g_scale_mult (a
    factor on that scale), skip (K-FAC's skip_layers: those layers take the optimizer's
    plain steps at its lr), relative_damping (KFACPreconditioner's: each factor divided by its
    mean eigenvalue before the solve, so λ is relative to each layer's curvature), beta1,
    beta2, eps, weight_decay (AdamW's), momentum, nesterov (SGD's and K-FAC's SGD: Nesterov
    momentum), and warmup (steps_to_target's linear lr warm-up over that many steps, the
    optimizer's lr only: K-FAC's KL clip keeps its lr)."""
    lr = setting["lr"]
    if name == "adamw":
        betas = (setting.get("beta1", 0.9), setting.get("beta2", 0.999))
        return (
            torch.optim.AdamW(
                model.parameters(),
                lr=lr,
                betas=betas,
                eps=setting.get("eps", 1e-8),
                weight_decay=setting.get("weight_decay", 0.0),
            ),
            None,
        )
    if name == "soap":
        import heavyball
        import heavyball.utils

        heavyball.utils.compile_mode = None
        kw = {"betas": (0.95, setting["beta2"])} if "beta2" in setting else {}  # else heavyball's default
        return heavyball.SOAP(model.parameters(), lr=lr, weight_decay=0.0, compile_step=False, **kw), None
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=setting.get("momentum", 0.9), nesterov=setting.get("nesterov", False)
    )
    if name == "sgd":
        return optimizer, None
    from kfac_ext import KFACPreconditioner
    from kfac_ext.comm import LocalComm

    factor_steps, inv_steps = kfac_intervals(name)
    kw = dict(factor_update_steps=factor_steps, inv_update_steps=inv_steps, kl_clip=0.001, factor_decay=0.95)
    kw.update(problem.kfac)
    kw.update({arg: setting[key] for key, arg in _KFAC_SETTINGS.items() if key in setting})
    if setting.get("per_example_g", problem.per_example_g):
        if batch is None:
            raise ValueError("per_example_g needs the batch size")
        kw["g_scale"] = float(batch * problem.tokens_per_sample) ** 2 * setting.get("g_scale_mult", 1.0)
    precond = KFACPreconditioner(model, lr=lr, damping=setting["damping"], comm=LocalComm(), **kw)
    return optimizer, precond


def _eval_due(step: int) -> bool:
    return step <= 15 or step % (step // 15) == 0


def steps_to_target(
    problem: Problem, name: str, setting: dict, batch: int, seed: int, cap: int
) -> tuple[int | None, float]:
    """(steps to the target or None within ``cap`` steps, the last metric measured)."""
    torch.manual_seed(seed)
    model = problem.make_model()
    optimizer, precond = make_optimizer(name, model, problem, setting, batch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + batch)
    last = math.inf
    warmup = setting.get("warmup", 0)  # a linear lr warm-up over this many steps (optimizer's lr only)
    for step in range(1, cap + 1):
        if warmup:
            for group in optimizer.param_groups:
                group["lr"] = setting["lr"] * min(1.0, step / warmup)
        x, y = problem.sample(batch, gen)
        optimizer.zero_grad(set_to_none=True)
        loss = problem.loss(model(x), y)
        loss.backward()
        batch_loss = loss.item()
        if not math.isfinite(batch_loss):
            return None, math.inf
        if precond is not None:
            precond.step()
        optimizer.step()
        gate = batch_loss <= PREFILTER * problem.target if problem.batch_loss_gate else True
        if (_eval_due(step) and gate) or step == cap:
            last = problem.metric(model)
            if not math.isfinite(last):
                return None, math.inf
            if last <= problem.target:
                return step, last
    return None, last


# --------------------------------------------------------------------------- the sweep
def _score(steps: list[int | None], cap: int) -> float:
    return statistics.median([cap + 1 if s is None else s for s in steps])


def sweep(
    problem: Problem, name: str, batch: int, seeds: list[int], max_steps: int, log, variants: bool = False
) -> tuple[dict, list[dict]]:
    """The best setting for (optimizer, batch) and every setting tried with its steps;
    ``variants``: stage 3, the problem's variants of the optimizer applied to the best
    of stages 1-2, one at a time."""
    base = problem.center_lr.get(name, problem.center_lr[name.split("-")[0]])
    center = base * math.sqrt(batch / 64)
    tried: dict[tuple, dict] = {}
    best: dict | None = None

    def run(setting: dict) -> dict:
        nonlocal best
        key = tuple(sorted(setting.items()))
        if key in tried:
            return tried[key]
        cap = max_steps if best is None else min(max_steps, math.ceil(CUTOFF * best["score"]))
        steps = [steps_to_target(problem, name, setting, batch, s, cap)[0] for s in seeds]
        rec = dict(setting=dict(setting), steps=steps, score=_score(steps, max_steps))
        tried[key] = rec
        log(f"  sweep {name:5s} B={batch:5d} {_fmt_setting(setting):22s} steps {steps}")
        if best is None or rec["score"] < best["score"]:
            best = rec
        return rec

    def with_lr(lr: float) -> dict:
        s = dict(lr=float(f"{lr:.3g}"), **problem.base.get(name.split("-")[0], {}))
        if name.startswith("kfac"):
            s["damping"] = problem.damping
        return s

    grid = [center * 2.0**k for k in (-1, 0, 1, 2)]
    for lr in grid:
        run(with_lr(lr))
    for _ in range(EDGE_EXTENSIONS):
        lrs = sorted(grid)
        best_lr = best["setting"]["lr"]
        if best["score"] > max_steps:  # nothing reached the target: both ways
            new = [lrs[0] / 2, lrs[-1] * 2]
        elif math.isclose(best_lr, float(f"{lrs[0]:.3g}")):
            new = [lrs[0] / 2]
        elif math.isclose(best_lr, float(f"{lrs[-1]:.3g}")):
            new = [lrs[-1] * 2]
        else:
            break
        for lr in new:
            grid.append(lr)
            run(with_lr(lr))
    stage1 = dict(best["setting"])
    if name.startswith("kfac"):
        for f in (1 / 3, 3.0):
            run(dict(stage1, damping=float(f"{stage1['damping'] * f:.3g}")))
    else:
        for f in (2**-0.5, 2**0.5):
            run(with_lr(stage1["lr"] * f))
    if variants:
        stage2 = dict(best["setting"])
        for change in problem.variants.get(name.split("-")[0], []):
            run(dict(stage2, **change))
    return best, list(tried.values())


def _fmt_setting(s: dict) -> str:
    label = dict(
        lr="lr",
        damping="λ",
        beta1="β1",
        beta2="β2",
        momentum="momentum",
        nesterov="Nesterov",
        kl_clip="KL clip",
        factor_decay="decay",
        factor_init="init",
        per_example_g="per-example G",
        eps="eps",
        weight_decay="wd",
        skip="skip",
        g_scale_mult="G scale x",
        relative_damping="relative λ",
        warmup="warm-up",
    )

    def value(v) -> str:
        if isinstance(v, list | tuple):
            return "+".join(map(str, v))
        if v is None or v is False:
            return "off"
        if v is True:
            return "on"
        return v if isinstance(v, str) else f"{v:g}"

    return ", ".join(f"{label[k]} {value(v)}" if k in label else str(v) for k, v in s.items())


# --------------------------------------------------------------------------- step times
def timed_step(problem: Problem, model, opt, pre, batch: int, gen: torch.Generator) -> float:
    """Seconds of one training step (batch drawn first, not timed): zero_grad, forward,
    backward, the preconditioner's step when there is one, the optimizer's step."""
    x, y = problem.sample(batch, gen)
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    problem.loss(model(x), y).backward()
    if pre is not None:
        pre.step()
    opt.step()
    return time.perf_counter() - t0


def update_period(names) -> int:
    """Steps after which every K-FAC optimizer among ``names`` repeats its pattern of
    factor and inverse updates (the lcm of their intervals; 1 without K-FAC)."""
    period = 1
    for n in names:
        if n.startswith("kfac"):
            period = math.lcm(period, *kfac_intervals(n))
    return period


def whole_periods(reps: int, names) -> int:
    """``reps`` rounded up to a whole number of :func:`update_period` steps, so the mean
    step time weighs update steps as often as training does."""
    period = update_period(names)
    return -(-reps // period) * period


def step_times(problem: Problem, chosen: dict, batch: int, reps: int) -> dict:
    """Mean seconds per step of each optimizer at its chosen setting and one batch size,
    interleaved step by step (:func:`round_robin_times`)."""
    secs = round_robin_times(problem, [(name, setting, batch) for name, setting in chosen.items()], reps)
    return dict(zip(chosen, secs))


def round_robin_times(problem: Problem, configs: list[tuple[str, dict, int]], reps: int) -> list[float]:
    """Mean seconds per step of each (optimizer, setting, batch), all of them stepped in
    one round-robin loop (the order reversed every other round), so that configurations at
    different batch sizes are timed under the same load; 3 warm-up steps each, then ``reps``
    rounded up to whole update periods (:func:`whole_periods`). The mean, not the median:
    time to target is the sum of the steps, and the median step of lazy K-FAC is one
    without updates (it understated lazy K-FAC's time by 5-11 %, docs/training-races.md)."""
    reps = whole_periods(reps, [name for name, _, _ in configs])
    runs = []
    for name, setting, batch in configs:
        torch.manual_seed(0)
        model = problem.make_model()
        opt, pre = make_optimizer(name, model, problem, setting, batch)
        runs.append((model, opt, pre, torch.Generator().manual_seed(batch), batch, []))
    for i in range(reps + 3):
        for model, opt, pre, gen, batch, times in runs if i % 2 == 0 else runs[::-1]:
            t = timed_step(problem, model, opt, pre, batch, gen)
            if i >= 3:
                times.append(t)
    return [statistics.fmean(r[5]) for r in runs]


def best_batches(out: dict, per_optimizer: int = 2) -> list[tuple[str, dict, int, float]]:
    """Each optimizer's ``per_optimizer`` fastest batch sizes by the per-batch timing:
    (optimizer, setting, batch, median steps)."""
    picks = []
    for n, per_batch in out["results"].items():
        cands = sorted(
            (r["median"] * out["step_ms"][b][n], int(b))
            for b, r in per_batch.items()
            if r["median"] is not None and n in out["step_ms"].get(b, {})
        )
        picks += [(n, per_batch[str(b)]["setting"], b, per_batch[str(b)]["median"]) for _, b in cands[:per_optimizer]]
    return picks


# --------------------------------------------------------------------------- analysis
def critical_batch(batches: list[int], medians: list[float | None]) -> str:
    """The smallest B at which doubling cuts the median steps by less than 30 %."""
    for (b0, s0), (b1, s1) in zip(zip(batches, medians), zip(batches[1:], medians[1:])):
        if s0 is None or s1 is None:
            continue
        if b1 == 2 * b0 and s1 / s0 > 0.7:
            return str(b0)
    never = [str(b) for b, m in zip(batches, medians) if m is None]
    if never:
        return f"not determined (median never at B {', '.join(never)})"
    return f"> {batches[-1]} (not reached)"


def median_or_none(steps: list[int | None]) -> float | None:
    """The median of the steps, None if more than half of the seeds never reached the target."""
    m = statistics.median([math.inf if s is None else s for s in steps])
    return None if math.isinf(m) else m


def plot(results: dict, batches: list[int], problem: Problem, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    colors = {
        "sgd": "tab:blue",
        "adamw": "tab:orange",
        "kfac": "tab:green",
        "kfac-lazy": "tab:olive",
        "soap": "tab:red",
    }
    for name, per_batch in results.items():
        xs = [b for b in batches if b in per_batch and per_batch[b]["median"] is not None]
        ys = [per_batch[b]["median"] for b in xs]
        ax.plot(xs, ys, "o-", color=colors.get(name), label=display(name))
        for b in (b for b in batches if b in per_batch):
            seeds = [s for s in per_batch[b]["steps"] if s is not None]
            ax.scatter([b] * len(seeds), seeds, s=8, color=colors.get(name), alpha=0.4)
    ref = [(b, r["median"]) for b, r in sorted(results.get("sgd", {}).items()) if r["median"]]
    if ref:  # steps halving with each doubling, from SGD's first point
        b0, m0 = ref[0]
        ax.plot(batches, [m0 * b0 / b for b in batches], ":", color="grey", label="perfect scaling")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"steps to {problem.metric_label} ≤ {problem.target:g}")
    ax.set_title(f"{problem.name}: steps to target (median of seeds; dots: seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_tables(out: dict) -> str:
    """The steps table, the settings, the step-time table and the summary lines; a point an
    optimizer was not run at shows as '-'."""
    batches, results, times = out["batches"], out["results"], out["step_ms"]
    names = list(results)
    kfacs = [n for n in names if n.startswith("kfac")] if "adamw" in names else []

    def median(n, b):
        return results[n].get(str(b), {}).get("median")

    lines = [
        "| batch | "
        + " | ".join(f"{display(n)} steps (per seed) | median" for n in names)
        + "".join(f" | {display(k)} / AdamW steps" for k in kfacs)
        + " |",
        "|---" * (2 * len(names) + 1 + len(kfacs)) + "|",
    ]
    for b in batches:
        cells = []
        for n in names:
            r = results[n].get(str(b))
            if r is None:
                cells += ["-", "-"]
                continue
            cells += [
                ", ".join("never" if s is None else str(s) for s in r["steps"]),
                "never" if r["median"] is None else f"{r['median']:g}",
            ]
        for k in kfacs:
            cells.append(f"{median(k, b) / median('adamw', b):.2f}" if median(k, b) and median("adamw", b) else "-")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Settings (best of the sweep): "
        + "; ".join(
            f"{display(n)} "
            + ", ".join(f"B{b}: {_fmt_setting(results[n][str(b)]['setting'])}" for b in batches if str(b) in results[n])
            for n in names
        ),
        "",
    ]
    lines += [
        "| batch | "
        + " | ".join(f"{display(n)} ms/step" for n in names)
        + "".join(f" | {display(k)} / AdamW step time" for k in kfacs)
        + " | "
        + " | ".join(f"{display(n)} s to target" for n in names)
        + " |",
        "|---" * (2 * len(names) + 1 + len(kfacs)) + "|",
    ]
    best: dict = {}
    for b in batches:
        t = times[str(b)]
        cells = [f"{t[n]:.2f}" if n in t else "-" for n in names]
        cells += [f"{t[k] / t['adamw']:.2f}" if k in t and "adamw" in t else "-" for k in kfacs]
        for n in names:
            m = median(n, b)
            if n not in t or str(b) not in results[n]:
                cells.append("-")
            elif m is None:
                cells.append("never")
            else:
                cells.append(f"{m * t[n] / 1000:.2f}")
                best[n] = min(best.get(n, (math.inf, b)), (m * t[n] / 1000, b))
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Critical batch size (doubling cuts the steps by < 30 %): "
        + "; ".join(f"{display(n)} {out['critical_batch'][n]}" for n in names),
    ]
    lines.append(
        "Best time to target, each at its own best batch: "
        + "; ".join(f"{display(n)} {s:.2f} s (B {b})" for n, (s, b) in best.items())
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(PROBLEMS), default="autoencoder")
    p.add_argument(
        "--quick",
        action="store_true",
        help="no sweep: the settings the 2026-12-07 and 08 sweeps chose (SWEPT), on the "
        "reported seeds, at the batches swept (autoencoder 32-512, lm 8-64); then the step times",
    )
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument(
        "--optimizers",
        nargs="+",
        default=None,
        help="any of sgd adamw kfac kfac-lazy kfac-fF-iI soap (default: sgd adamw kfac "
        "kfac-lazy; soap, whose eager CPU step costs 3-15x AdamW's, on request; "
        "kfac-fF-iI: factors every F steps, inverses every I)",
    )
    p.add_argument(
        "--variants",
        action="store_true",
        help="a third sweep stage: the task's variants of each optimizer (lm: K-FAC factor "
        "decay 0.8, 0.95; AdamW beta1 0.9, beta2 0.999; SGD momentum 0.8, 0.95), two each",
    )
    p.add_argument(
        "--kfac-base",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='settings every K-FAC sweep setting starts from, e.g. \'{"relative_damping": true, '
        "\"factor_decay\": 0.5}' (added to the task's own; recorded in each setting)",
    )
    p.add_argument(
        "--base",
        nargs=2,
        action="append",
        default=[],
        metavar=("OPT", "JSON"),
        help="settings every sweep setting of a first-order optimizer OPT (sgd, adamw, soap) "
        'starts from, e.g. --base adamw \'{"beta1": 0.7, "beta2": 0.9}\' (over the task\'s own; '
        "recorded in each setting); repeatable",
    )
    p.add_argument("--sweep-seeds", type=int, nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--target", type=float, default=None)
    p.add_argument(
        "--time-reps", type=int, default=30, help="timed steps per optimizer (rounded up to whole update periods)"
    )
    p.add_argument("--json-out", default=None)
    p.add_argument("--plot", default=None, help="PNG of steps vs batch (log-log)")
    p.add_argument(
        "--sweep-only",
        action="store_true",
        help="stop after the steps (the results go to JSON_OUT.partial): one process per optimizer, then --merge",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="no sweeps: take the steps from these --sweep-only results (a file "
        "per optimizer or per batch sizes), then time the steps interleaved "
        "and report",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    problem = PROBLEMS[a.task](a.target)
    if a.kfac_base is not None:
        if not isinstance(a.kfac_base, dict):
            p.error("--kfac-base must be a JSON object")
        problem.base["kfac"] = {**problem.base.get("kfac", {}), **a.kfac_base}
    for opt_name, text in a.base:
        if opt_name not in NAMES or opt_name.startswith("kfac"):
            p.error(f"--base: {opt_name!r} is not a first-order optimizer (sgd, adamw, soap; K-FAC: --kfac-base)")
        try:
            settings = json.loads(text)
        except json.JSONDecodeError as e:
            p.error(f"--base {opt_name}: not JSON ({e})")
        if not isinstance(settings, dict):
            p.error(f"--base {opt_name}: must be a JSON object")
        problem.base[opt_name] = {**problem.base.get(opt_name, {}), **settings}
    if a.quick:
        if a.task not in SWEPT:
            p.error(f"--quick: no swept settings stored for --task {a.task}")
        batches = a.batches or sorted({b for per_batch in SWEPT[a.task].values() for b in per_batch})
        sweep_seeds = a.sweep_seeds or ([100] if a.task == "autoencoder" else [100, 101])
        max_steps = a.max_steps or 1200
    else:
        batches = a.batches or [32, 64, 128, 256, 512, 1024]
        sweep_seeds = a.sweep_seeds or [100, 101]
        max_steps = a.max_steps or 1500
    if set(sweep_seeds) & set(a.seeds):
        p.error("--sweep-seeds must be disjoint from --seeds")
    batches = [b for b in batches if b <= problem.n_train]
    names = a.optimizers or (["sgd", "adamw", "kfac"] if a.quick else ["sgd", "adamw", "kfac", "kfac-lazy"])
    if a.quick:  # only what the sweep stored settings for
        names = [n for n in names if n in SWEPT[a.task]]
    for n in names:
        if n.startswith("kfac"):
            try:
                kfac_intervals(n)
            except ValueError as e:
                p.error(str(e))
        elif n not in NAMES:
            p.error(f"unknown optimizer {n!r}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    header = machine_line()
    log(f"batch_scaling {a.task}: {header}; batches {batches}, optimizers {names}")
    results: dict = {n: {} for n in names}
    t_start = time.time()
    if a.merge:
        results = {}
        for path in a.merge:  # several files may hold one optimizer's sizes
            with open(path) as f:
                for n, per_batch in json.load(f).items():
                    results.setdefault(n, {}).update(per_batch)
        names = list(results)
        batches = [b for b in batches if any(str(b) in results[n] for n in names)]
    for b in batches if not a.merge else ():
        for n in names:
            if a.quick:
                if b not in SWEPT[a.task].get(n, {}):
                    continue
                best, tried = dict(setting=SWEPT[a.task][n][b]), []
            else:
                best, tried = sweep(problem, n, b, sweep_seeds, max_steps, log, a.variants)
            steps = [steps_to_target(problem, n, best["setting"], b, s, max_steps)[0] for s in a.seeds]
            results[n][str(b)] = dict(setting=best["setting"], steps=steps, median=median_or_none(steps), sweep=tried)
            log(f"{n:5s} B={b:5d} {_fmt_setting(best['setting'])}: steps {steps} ({time.time() - t_start:.0f} s)")
        if a.json_out:  # partial results survive an interrupted run
            with open(a.json_out + ".partial", "w") as f:
                json.dump(results, f, indent=1)
    if a.sweep_only:
        return 0
    log("timing steps (interleaved)")
    step_ms = {}
    for b in batches:
        chosen = {n: results[n][str(b)]["setting"] for n in names if str(b) in results[n]}
        step_ms[str(b)] = {n: 1000 * t for n, t in step_times(problem, chosen, b, a.time_reps).items()}
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    out = dict(
        task=a.task,
        target=problem.target,
        metric=problem.metric_label,
        machine=header,
        load_after=load,
        command="python benchmarks/batch_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        batches=batches,
        sweep_seeds=sweep_seeds,
        seeds=a.seeds,
        max_steps=max_steps,
        results=results,
        step_ms=step_ms,
        critical_batch={
            n: critical_batch(
                [b for b in batches if str(b) in results[n]],
                [results[n][str(b)]["median"] for b in batches if str(b) in results[n]],
            )
            for n in names
        },
        wall_s=time.time() - t_start,
    )
    print(
        f"steps to {problem.metric_label} <= {problem.target:g} ({header}; load at the end "
        f"{load}; {out['wall_s']:.0f} s)"
    )
    print(f"sweep seeds {sweep_seeds}, reported seeds {a.seeds}, cap {max_steps} steps")
    print()
    print(format_tables(out))
    picks = best_batches(out)
    if picks:
        secs = round_robin_times(problem, [(n, st, b) for n, st, b, _ in picks], a.time_reps)
        out["best_batch_times"] = [
            dict(optimizer=n, setting=st, batch=b, median_steps=m, ms=1000 * t, seconds=m * t)
            for (n, st, b, m), t in zip(picks, secs)
        ]
        print("\nEach optimizer at its fastest batch sizes, timed in one round-robin loop:\n")
        print("| optimizer | batch | setting | median steps | ms/step | s to target |")
        print("|---|---|---|---|---|---|")
        for r in out["best_batch_times"]:
            print(
                f"| {display(r['optimizer'])} | {r['batch']} | {_fmt_setting(r['setting'])} | "
                f"{r['median_steps']:g} | {r['ms']:.2f} | {r['seconds']:.2f} |"
            )
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(out, f, indent=1)
    if a.plot:
        plot(
            {n: {b: results[n][str(b)] for b in batches if str(b) in results[n]} for n in names},
            batches,
            problem,
            a.plot,
        )
        print(f"\nplot: {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
