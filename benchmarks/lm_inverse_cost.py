"""What K-FAC's inverse updates cost on the LM task, and whether a warm start could cut it.

Three measurements (issue 29's LM time line; benchmarks/RESULTS.md):

1. **Warm start.** The factors every inverse update of a real run sees (``--task lm``,
   K-FAC at B 16 on sweep seed 100, every step and lazy 2 / 10, the settings of
   ``batch_scaling.py``) are recorded, and for each update after the first the
   residual of the previous damped inverse against the new factor,
   ``ρ = ‖I − (F_t + λI) X_{t−1}‖₂`` (float64, X exact), is computed. A Newton–Schulz
   refinement ``X ← X(2I − (F + λI)X)`` from ``X_{t−1}`` squares the residual
   (``R ← R²``), so it converges only for ρ < 1, and one step (2 GEMMs) reaches a
   residual ≤ 1e-3 only from ρ ≤ 0.03 (k steps from ρ^(2^k) ≤ 1e-3).
2. **Inverse update cost**, one update of all the dense factors of that run, timed
   interleaved: per factor (``methods.damped_inverse``, as before 2026-12-07 19:50),
   batched (``methods.cholesky_inverses``: one Cholesky and ``cholesky_inverse`` call
   per shape, the check on the Cholesky diagonal; the CPU solve until 23:30) and the
   recursive GEMM blocks (``methods.damped_inverses``, the CPU solve since; its own
   benchmark is ``inverse_ab.py``), with LAPACK's pieces and the GEMM floor.
3. ``--race``: the step of each configuration in one round-robin loop
   (``batch_scaling.round_robin_times``' protocol, the order reversed every other
   round, 3 warm-up steps), AdamW B 8 and K-FAC at B 16 and 8, with ``--old-solve`` also
   K-FAC with the per-factor solve (B 16); seconds = the reported seeds' median steps
   (RESULTS) × the mean ms/step over whole update periods (until 2026-12-07 20:50 UTC the
   median step, which has no update for lazy K-FAC and read its seconds low).
   ``--race-rows LABEL ...`` times only those rows of ``RACE`` (and AdamW B 8), e.g. the
   2026-12-08 probe's winners against the picks they replace.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/lm_inverse_cost.py [--race] [--reps N] [--json]
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

from kfac_ext.methods import DiagonalData, InverseData, cholesky_inverses, damped_inverse, damped_inverses  # noqa: E402

# (name, setting, batch): the LM's swept settings (batch_scaling.SWEPT["lm"])
RUNS = {
    "every step": ("kfac", dict(lr=0.05, damping=0.03), 16, 80),
    "lazy 2/10": ("kfac-lazy", dict(lr=0.05, damping=0.09), 16, 110),
}
# the race: (label, optimizer, setting, batch, median steps of the reported seeds 0-2, RESULTS)
RACE = [
    ("AdamW B 8", "adamw", dict(lr=0.00212, beta1=0.8, beta2=0.95), 8, 176),
    ("K-FAC lazy B 16", "kfac-lazy", dict(lr=0.05, damping=0.09), 16, 102),
    ("K-FAC every step B 16", "kfac", dict(lr=0.05, damping=0.03), 16, 80),
    ("K-FAC no updates B 16 (x 80 steps)", "kfac-f1000-i1000", dict(lr=0.05, damping=0.03), 16, 80),
    ("K-FAC every step B 8", "kfac", dict(lr=0.00884, damping=0.03), 8, 119),
    # factors and inverses every 2 steps at B 8: the best of three B 8 intervals probed on the
    # sweep seeds (2026-12-07 19:50, RESULTS), its reported seeds 135, 150, 165
    ("K-FAC f2/i2 B 8", "kfac-f2-i2", dict(lr=0.00884, damping=0.03), 8, 150),
    # the 2026-12-08 probe's winners on the sweep seeds (RESULTS, fifth pass), their reported
    # seeds' medians: momentum 0.8 (72, 75, 80) and factor decay 0.3 (105, 112, 102)
    ("K-FAC every step B 16, momentum 0.8", "kfac", dict(lr=0.05, damping=0.03, momentum=0.8), 16, 75),
    ("K-FAC lazy B 16, decay 0.3", "kfac-lazy", dict(lr=0.05, damping=0.09, factor_decay=0.3), 16, 105),
    # K-FAC's SGD momentum 0.9 with Nesterov (2026-12-08 02:36, eight K-FAC settings and eight
    # AdamW settings on the sweep seeds, RESULTS' sixth pass): reported seeds 57, 68, 57
    ("K-FAC every step B 16, Nesterov", "kfac", dict(lr=0.05, damping=0.03, momentum=0.9, nesterov=True), 16, 57),
    # the same with factors and inverses every 2 steps (2026-12-08 02:42; reported seeds 54, 60, 75)
    ("K-FAC f2/i2 B 16, Nesterov", "kfac-f2-i2", dict(lr=0.05, damping=0.03, momentum=0.9, nesterov=True), 16, 60),
]


def record(problem, name: str, setting: dict, batch: int, steps: int, seed: int = 100) -> list:
    """[(factors, damping)] of every solve of a run (the factors as the preconditioner passes them)."""
    torch.manual_seed(seed)
    model = problem.make_model()
    opt, pre = bs.make_optimizer(name, model, problem, setting, batch)
    seen = []
    solve = pre._method.solve

    def recording(factors, damping):
        seen.append(([f.clone() for f in factors], damping))
        return solve(factors, damping)

    pre._method.solve = recording
    gen = torch.Generator().manual_seed(seed * 1_000_003 + batch)
    for _ in range(steps):
        x, y = problem.sample(batch, gen)
        opt.zero_grad(set_to_none=True)
        problem.loss(model(x), y).backward()
        pre.step()
        opt.step()
    return seen


def residuals(seen: list) -> list[float]:
    """ρ of every dense factor at every update after the first."""
    out = []
    for (new, damping), (old, _) in zip(seen[1:], seen[:-1]):
        for f, g in zip(new, old):
            if f.dim() != 2:
                continue
            eye = torch.eye(f.shape[0], dtype=torch.float64)
            x_old = torch.linalg.inv(g.double() + damping * eye)
            out.append(torch.linalg.matrix_norm(eye - (f.double() + damping * eye) @ x_old, 2).item())
    return out


def newton_iterations(rho: float, tol: float = 1e-3) -> int:
    """Newton-Schulz steps (2 GEMMs each) from residual ``rho`` < 1 to ``tol``: rho^(2^k) <= tol."""
    k = 0
    while rho > tol:
        rho, k = rho * rho, k + 1
    return k


def per_factor(factors, damping):
    """The inverse method's solve as it was: one damped_inverse per dense factor."""
    return [
        DiagonalData(1.0 / (f + damping)) if f.dim() == 1 else InverseData(damped_inverse(f, damping)) for f in factors
    ]


def batched(factors, damping):
    return cholesky_inverses([f for f in factors if f.dim() == 2], damping)


def blocks(factors, damping):
    return damped_inverses([f for f in factors if f.dim() == 2], damping)


def interleaved(fns: dict, reps: int) -> dict:
    times = {k: [] for k in fns}
    for i in range(reps + 2):
        for k in list(fns) if i % 2 == 0 else list(fns)[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            if i >= 2:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def inverse_cost(seen: list, reps: int) -> dict:
    factors, damping = seen[len(seen) // 2]
    dense = [f for f in factors if f.dim() == 2]
    damped = [f + damping * torch.eye(f.shape[0]) for f in dense]
    chol = [torch.linalg.cholesky(d) for d in damped]
    ms = interleaved(
        {
            "per factor (damped_inverse)": lambda: per_factor(factors, damping),
            "batched (cholesky_inverses)": lambda: batched(factors, damping),
            "recursive blocks (damped_inverses)": lambda: blocks(factors, damping),
            "cholesky_ex alone": lambda: [torch.linalg.cholesky_ex(d) for d in damped],
            "cholesky_inverse alone": lambda: [torch.cholesky_inverse(c) for c in chol],
            "one n x n GEMM each (2n^3 flops)": lambda: [d @ d for d in damped],
        },
        reps,
    )
    return dict(dense_factors=[f.shape[0] for f in dense], ms=ms)


def race(problem, reps: int, old_solve: bool, rows: list[str] | None = None) -> dict:
    configs = [c for c in RACE if rows is None or c[0] == "AdamW B 8" or c[0] in rows]
    if old_solve:
        configs.append(("K-FAC lazy B 16, per-factor solve", "kfac-lazy", dict(lr=0.05, damping=0.09), 16, 102))
        configs.append(("K-FAC every step B 16, per-factor solve", "kfac", dict(lr=0.05, damping=0.03), 16, 80))
    runs = []
    for label, name, setting, batch, steps in configs:
        torch.manual_seed(0)
        model = problem.make_model()
        opt, pre = bs.make_optimizer(name, model, problem, setting, batch)
        if pre is not None and label.endswith("per-factor solve"):
            pre._method.solve = per_factor
        runs.append((label, model, opt, pre, torch.Generator().manual_seed(batch), batch, steps, []))
    # Whole update periods, so the mean charges update steps as training does (the no-update
    # row's interval of 1000 is left out: it is meant to time steps without updates).
    reps = bs.whole_periods(reps, [c[1] for c in configs if "f1000" not in c[1]])
    load_before = os.getloadavg()
    start = time.strftime("%H:%M:%S", time.gmtime())
    for i in range(reps + 3):
        for _label, model, opt, pre, gen, batch, _steps, times in runs if i % 2 == 0 else runs[::-1]:
            t = bs.timed_step(problem, model, opt, pre, batch, gen)
            if i >= 3:
                times.append(t)
    rows = {r[0]: dict(ms=statistics.fmean(r[7]) * 1e3, steps=r[6]) for r in runs}
    adamw = rows["AdamW B 8"]
    for row in rows.values():
        row["s"] = row["ms"] * row["steps"] / 1e3
        row["vs_adamw_b8"] = row["s"] / (adamw["ms"] * adamw["steps"] / 1e3)
    return dict(
        utc=f"{start}-{time.strftime('%H:%M:%S', time.gmtime())}",
        load_before=[round(x, 2) for x in load_before],
        load_after=[round(x, 2) for x in os.getloadavg()],
        steps_each=reps,
        rows=rows,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=30, help="timed repetitions (default 30)")
    p.add_argument("--race", action="store_true", help="also the round-robin step times (AdamW B 8, K-FAC B 16)")
    p.add_argument("--race-only", action="store_true", help="only the round-robin step times")
    p.add_argument("--race-steps", type=int, default=40, help="timed steps per configuration in --race (default 40)")
    p.add_argument("--old-solve", action="store_true", help="--race also times K-FAC with the per-factor solve")
    p.add_argument(
        "--race-rows",
        nargs="+",
        metavar="LABEL",
        help="--race times only these RACE rows (by label) and AdamW B 8",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    labels = [c[0] for c in RACE]
    bad = [r for r in a.race_rows or [] if r not in labels]
    if bad:
        p.error(f"--race-rows: unknown {bad}; the rows are {labels}")
    if a.reps < 1 or a.race_steps < 1:
        p.error(f"--reps and --race-steps must be >= 1, got {a.reps}, {a.race_steps}")
    torch.set_num_threads(1)
    problem = bs.lm_problem()
    out: dict = dict(machine=machine_line())
    if not a.race_only:
        for label, (name, setting, batch, steps) in RUNS.items():
            seen = record(problem, name, setting, batch, steps)
            rho = sorted(residuals(seen))
            out[label] = dict(
                updates=len(seen),
                rho_median=statistics.median(rho),
                rho_min=rho[0],
                rho_max=rho[-1],
                frac_below_1=sum(r < 1 for r in rho) / len(rho),
                frac_below_0_03=sum(r <= 0.03 for r in rho) / len(rho),
                iterations_median=statistics.median(newton_iterations(r) for r in rho if r < 1)
                if min(rho) < 1
                else None,
            )
            if label == "every step":
                out["inverse update"] = inverse_cost(seen, a.reps)
    if a.race or a.race_only:
        out["race"] = race(problem, a.race_steps, a.old_solve, a.race_rows)
    if a.json:
        print(json.dumps(out))
        return 0
    print(out["machine"])
    for label in RUNS:
        if label in out:
            r = out[label]
            print(
                f"warm start, {label}: {r['updates']} updates; rho = ||I - (F_t + λI) X_(t-1)||_2 median "
                f"{r['rho_median']:.3g} (min {r['rho_min']:.2g}, max {r['rho_max']:.3g}); "
                f"< 1 (Newton-Schulz converges): {r['frac_below_1']:.0%}; <= 0.03 (one step to 1e-3): "
                f"{r['frac_below_0_03']:.0%}; Newton-Schulz steps to 1e-3 where it converges, median "
                f"{r['iterations_median']} (2 GEMMs each)"
            )
    if "inverse update" in out:
        r = out["inverse update"]
        print(f"one inverse update, {len(r['dense_factors'])} dense factors {r['dense_factors']}:")
        for k, v in r["ms"].items():
            print(f"  {k:32s} {v:7.2f} ms")
    if "race" in out:
        r = out["race"]
        print(
            f"round robin {r['utc']} UTC, load {r['load_before']} -> {r['load_after']}, {r['steps_each']} steps each:"
        )
        for k, v in r["rows"].items():
            print(
                f"  {k:42s} {v['ms']:6.1f} ms x {v['steps']:3d} steps = {v['s']:5.2f} s  ({v['vs_adamw_b8']:.2f}x AdamW B 8)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
