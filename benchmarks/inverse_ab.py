"""The inverse method's damped inverses, old (LAPACK) against new (recursive GEMM blocks), in one process.

``methods.damped_inverses`` computes (F + λI)⁻¹ of every dense Kronecker factor. Until
2026-12-07 it was ``methods.cholesky_inverses`` (one batched ``cholesky_ex`` +
``cholesky_inverse`` per factor shape: LAPACK's potrf + potri); on the CPU it is now the
``kfac_ext::damped_inverses`` op (csrc/cpu/damped_inverses.cpp: Y = L⁻¹ and YᵀY by
recursive blocks whose flops are GEMMs). This script times both on the factors real runs
pass to the solve, interleaved, thread CPU time, one thread:

- the digits autoencoder, K-FAC 5/20 with relative λ, B 128 (its race configuration), and
- the character LM (``--task lm``), lazy K-FAC (2/10) at B 16, λ 0.09,

each factor set whole and per factor size, with the rate in GFLOP/s counting n³ flops per
factor (potrf + potri's count) and torch.mm's rate on the same sizes (2n³ per n×n GEMM).

``--accuracy``: the relative error ‖X − X₆₄‖_F / ‖X₆₄‖_F of both against the float64 inverse,
on every recorded factor and on synthetic F + λI of condition 1e3-1e6.
``--step``: whole steps in one round-robin loop (``batch_scaling.round_robin_times``'
protocol: the order reversed every other round, means over whole update periods): the
autoencoder's SGD B 32 and K-FAC 5/20 relative λ B 128 with each solve; the LM's AdamW B 8
and lazy K-FAC B 16 with each solve.

    OMP_WAIT_POLICY=PASSIVE nice -n 5 python benchmarks/inverse_ab.py [--accuracy] [--step] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import batch_scaling as bs  # noqa: E402
from _common import machine_line  # noqa: E402
from lm_inverse_cost import record as record_solves  # noqa: E402

from kfac_ext.methods import DiagonalData, InverseData, cholesky_inverses, damped_inverses  # noqa: E402

# task -> (problem, optimizer name, setting, batch, steps recorded)
TASKS = {
    "autoencoder": (
        bs.autoencoder_problem,
        "kfac-f5-i20",
        dict(lr=0.025, damping=0.03, relative_damping=True, factor_decay=0.5),
        128,
        60,
    ),
    "lm": (bs.lm_problem, "kfac-lazy", dict(lr=0.05, damping=0.09), 16, 30),
}
# --step: (label, optimizer, setting, batch) per task; the K-FAC rows run once per solve
STEP_BASELINE = {
    "autoencoder": ("SGD B 32", "sgd", dict(lr=0.04), 32),
    "lm": ("AdamW B 8", "adamw", dict(lr=0.00212, beta1=0.8, beta2=0.95), 8),
}


def old_solve(factors, damping):
    """The inverse method's solve as it was (LAPACK's batched Cholesky inverse)."""
    dense = iter(cholesky_inverses([f for f in factors if f.dim() == 2], damping))
    return [DiagonalData(1.0 / (f + damping)) if f.dim() == 1 else InverseData(next(dense)) for f in factors]


def record(task: str) -> list:
    """[(dense factors, damping)] of every solve of a short run (as the preconditioner passes them)."""
    make, name, setting, batch, steps = TASKS[task]
    seen = record_solves(make(), name, setting, batch, steps, seed=100)
    return [([f for f in factors if f.dim() == 2], damping) for factors, damping in seen]


def interleaved(fns: dict, reps: int) -> dict:
    """Median thread CPU time (ms) of each function, called in turn, the order reversed every other round."""
    times: dict = {k: [] for k in fns}
    for i in range(reps + 2):
        for k in list(fns) if i % 2 == 0 else list(fns)[::-1]:
            t0 = time.thread_time()
            fns[k]()
            if i >= 2:
                times[k].append(time.thread_time() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def timing(factors: list, damping: float, reps: int) -> dict:
    cube = sum(f.shape[0] ** 3 for f in factors)
    a = [torch.randn_like(f) for f in factors]
    ms = interleaved(
        {
            "old": lambda: cholesky_inverses(factors, damping),
            "new": lambda: damped_inverses(factors, damping),
            "mm": lambda: [torch.mm(x, x) for x in a],
        },
        reps,
    )
    return dict(
        sizes=[f.shape[0] for f in factors],
        sum_n3_M=round(cube / 1e6, 2),
        old_ms=round(ms["old"], 3),
        new_ms=round(ms["new"], 3),
        new_over_old=round(ms["new"] / ms["old"], 3),
        old_gflops=round(cube / ms["old"] / 1e6, 1),
        new_gflops=round(cube / ms["new"] / 1e6, 1),
        mm_gflops=round(2 * cube / ms["mm"] / 1e6, 1),
    )


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def errors(factors: list, damping: float) -> tuple[list, list]:
    refs = [torch.linalg.inv(f.double() + damping * torch.eye(f.shape[0], dtype=torch.float64)) for f in factors]
    old = [rel(x, r) for x, r in zip(cholesky_inverses(factors, damping), refs)]
    new = [rel(x, r) for x, r in zip(damped_inverses(factors, damping), refs)]
    return old, new


def conditioned(n: int, cond: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return ((q * torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)) @ q.T).float()


def accuracy(seen: dict) -> dict:
    out: dict = {}
    for task, updates in seen.items():
        old, new = [], []
        for factors, damping in updates:
            o, n = errors(factors, damping)
            old += o
            new += n
        out[task] = dict(
            factors=len(old),
            old_median=f"{statistics.median(old):.2e}",
            new_median=f"{statistics.median(new):.2e}",
            old_max=f"{max(old):.2e}",
            new_max=f"{max(new):.2e}",
        )
    synthetic = {}
    for cond in (1e3, 1e4, 1e5, 1e6):
        for n in (64, 65, 128, 129, 256, 257):
            o, w = errors([conditioned(n, cond, s) for s in range(3)], 0.0)
            synthetic[f"cond {cond:.0e} n {n}"] = dict(old_max=f"{max(o):.2e}", new_max=f"{max(w):.2e}")
    out["synthetic (3 factors each, λ 0)"] = synthetic
    return out


def steps(task: str, reps: int) -> dict:
    """Mean ms per step over whole update periods, K-FAC with each solve beside the baseline."""
    make, name, setting, batch, _ = TASKS[task]
    problem = make()
    base_label, base_name, base_setting, base_batch = STEP_BASELINE[task]
    configs = [
        (base_label, base_name, base_setting, base_batch, None),
        (f"K-FAC {name} B {batch}, old solve", name, setting, batch, old_solve),
        (f"K-FAC {name} B {batch}, new solve", name, setting, batch, None),
    ]
    runs = []
    for label, opt_name, s, b, solve in configs:
        torch.manual_seed(0)
        model = problem.make_model()
        opt, pre = bs.make_optimizer(opt_name, model, problem, dict(s), b)
        if solve is not None:
            pre._method.solve = solve
        runs.append((label, model, opt, pre, torch.Generator().manual_seed(b), b, []))
    reps = bs.whole_periods(reps, [name])
    load = os.getloadavg()[0]
    start = time.strftime("%H:%M:%S", time.gmtime())
    for i in range(reps + 3):
        for _label, model, opt, pre, gen, b, times in runs if i % 2 == 0 else runs[::-1]:
            t = bs.timed_step(problem, model, opt, pre, b, gen)
            if i >= 3:
                times.append(t)
    ms = {r[0]: statistics.fmean(r[6]) * 1e3 for r in runs}
    old, new = ms[configs[1][0]], ms[configs[2][0]]
    return dict(
        utc=f"{start}-{time.strftime('%H:%M:%S', time.gmtime())}",
        load_before=round(load, 2),
        load_after=round(os.getloadavg()[0], 2),
        steps_each=reps,
        ms={k: round(v, 3) for k, v in ms.items()},
        new_over_old=round(new / old, 3),
        old_over_baseline=round(old / ms[base_label], 3),
        new_over_baseline=round(new / ms[base_label], 3),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=100, help="timed repetitions of each factor set (default 100)")
    p.add_argument("--accuracy", action="store_true", help="also the errors against float64 inverses")
    p.add_argument("--step", action="store_true", help="also whole steps, old solve against new")
    p.add_argument("--step-reps", type=int, default=200, help="timed steps per configuration in --step (default 200)")
    p.add_argument("--task", choices=["both", *TASKS], default="both")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.reps < 1 or a.step_reps < 1:
        p.error(f"--reps and --step-reps must be >= 1, got {a.reps}, {a.step_reps}")
    torch.set_num_threads(1)
    tasks = list(TASKS) if a.task == "both" else [a.task]
    out: dict = dict(machine=machine_line(), utc_start=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
    out["load_before"] = [round(x, 2) for x in os.getloadavg()]
    seen = {t: record(t) for t in tasks}
    for task in tasks:
        factors, damping = seen[task][len(seen[task]) // 2]
        row = dict(damping=damping, all=timing(factors, damping, a.reps))
        for n in sorted({f.shape[0] for f in factors}):
            row[f"n {n}"] = timing([f for f in factors if f.shape[0] == n], damping, a.reps)
        out[task] = row
    out["load_after_timing"] = [round(x, 2) for x in os.getloadavg()]
    if a.accuracy:
        out["accuracy"] = accuracy(seen)
    if a.step:
        out["step"] = {t: steps(t, a.step_reps) for t in tasks}
    out["utc_end"] = time.strftime("%H:%M:%S", time.gmtime())
    if a.json:
        print(json.dumps(out))
        return 0
    print(out["machine"], out["utc_start"], "load", out["load_before"])
    for task in tasks:
        print(f"\n{task} (λ {out[task]['damping']:.3g}): ms old / new, GFLOP/s (n³) old / new, torch.mm's")
        for key, r in out[task].items():
            if key == "damping":
                continue
            print(
                f"  {key:>5}: Σn³ {r['sum_n3_M']:7.2f} M  {r['old_ms']:7.3f} / {r['new_ms']:7.3f} ms "
                f"(x{r['new_over_old']:.3f})  {r['old_gflops']:5.1f} / {r['new_gflops']:5.1f}  mm {r['mm_gflops']:5.1f}"
            )
    if a.accuracy:
        print("\naccuracy (relative Frobenius error against float64):")
        print(json.dumps(out["accuracy"], indent=1))
    if a.step:
        print("\nwhole steps:")
        print(json.dumps(out["step"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
