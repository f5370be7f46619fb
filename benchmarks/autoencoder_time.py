"""The autoencoder's time line of issue 29: K-FAC's time to training loss 1.5 against the
best first-order optimizer's, each at its own best batch size and settings.

Steps to target are load-free and come from the sweeps (the medians below, with their
seeds and sources in benchmarks/RESULTS.md, "Autoencoder time, third pass"); only the
step times are measured here. Every configuration is stepped in one round-robin loop
(``batch_scaling.round_robin_times``: order reversed every other round, the mean over
whole update periods, so lazy K-FAC's update steps are charged), several rounds, and
each round gives seconds = median steps x mean step time. The figure is K-FAC's best
seconds / the best first-order seconds, per round and its median.

    OMP_WAIT_POLICY=PASSIVE nice -n 5 python benchmarks/autoencoder_time.py [--rounds 5] [--json]
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
from _common import machine_line  # noqa: E402
from batch_scaling import autoencoder_problem, display, round_robin_times  # noqa: E402

# (optimizer, setting, batch, median steps to loss 1.5, where the steps come from)
CONFIGS = [
    ("sgd", dict(lr=0.04), 16, 420, "seeds 0-8 (sweep 2026-12-07 11:10 and extra seeds 20:34)"),
    ("sgd", dict(lr=0.04), 32, 345, "seeds 0-8 (second pass and extra seeds 20:34)"),
    ("adamw", dict(lr=0.004), 32, 465, "seeds 0-2 (sweep 2026-12-07)"),
    ("adamw", dict(lr=0.00566), 128, 285, "seeds 0-2 (sweep 2026-12-07)"),
    ("kfac-lazy", dict(lr=0.05, damping=0.03), 64, 119, "seeds 0-8 (sweep 11:23, absolute λ, decay 0.95)"),
    (
        "kfac-f5-i20",
        dict(lr=0.141, relative_damping=True, factor_decay=0.5, damping=0.03),
        128,
        119,
        "seeds 0-8 (relative λ sweep 19:58-20:46)",
    ),
    (
        "kfac-f10-i20",
        dict(lr=0.141, relative_damping=True, factor_decay=0.5, damping=0.01),
        128,
        119,
        "seeds 0-8 (sweep 2026-12-07 23:56, docs/results/ae_reldamp_f10_i20_sweep_2026-12-07g.log)",
    ),
]


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def one_round(problem, reps: int) -> list[dict]:
    load_before, t0 = _load(), time.strftime("%H:%M:%S", time.gmtime())
    secs = round_robin_times(problem, [(n, s, b) for n, s, b, _, _ in CONFIGS], reps)
    rows = []
    for (name, setting, batch, steps, source), sec in zip(CONFIGS, secs):
        rows.append(
            dict(
                optimizer=name,
                batch=batch,
                setting=setting,
                median_steps=steps,
                steps_source=source,
                ms=sec * 1e3,
                seconds=sec * steps,
            )
        )
    first = min(r["seconds"] for r in rows if not r["optimizer"].startswith("kfac"))
    adamw = min(r["seconds"] for r in rows if r["optimizer"] == "adamw")
    kfac = min(r["seconds"] for r in rows if r["optimizer"].startswith("kfac"))
    return [
        dict(
            utc=[t0, time.strftime("%H:%M:%S", time.gmtime())],
            load=[load_before, _load()],
            rows=rows,
            kfac_over_first_order=kfac / first,
            kfac_over_adamw=kfac / adamw,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=160, help="timed steps per configuration per round")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.reps < 1:
        p.error("--rounds and --reps must be positive")
    torch.set_num_threads(1)
    problem = autoencoder_problem()
    rounds = []
    for i in range(a.rounds):
        rounds += one_round(problem, a.reps)
        r = rounds[-1]
        print(
            f"round {i}: {r['utc'][0]}-{r['utc'][1]} UTC, load {r['load'][0]} -> {r['load'][1]}: "
            f"K-FAC / best first-order {r['kfac_over_first_order']:.3f}, / AdamW {r['kfac_over_adamw']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    ratios = [r["kfac_over_first_order"] for r in rounds]
    out = dict(
        machine=machine_line(),
        command="python benchmarks/autoencoder_time.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        rounds=rounds,
        kfac_over_first_order=ratios,
        median=statistics.median(ratios),
        median_over_adamw=statistics.median(r["kfac_over_adamw"] for r in rounds),
    )
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"{out['machine']}\n")
    print("| optimizer | batch | setting | median steps | ms/step (per round) | s to loss 1.5 (median) |")
    print("|---|---|---|---|---|---|")
    for j, (name, setting, batch, steps, _) in enumerate(CONFIGS):
        ms = [r["rows"][j]["ms"] for r in rounds]
        s = statistics.median(r["rows"][j]["seconds"] for r in rounds)
        setting_txt = ", ".join(f"{k} {v}" for k, v in setting.items())
        print(
            f"| {display(name)} | {batch} | {setting_txt} | {steps} | {', '.join(f'{m:.2f}' for m in ms)} | {s:.2f} |"
        )
    print(
        f"\nK-FAC / best first-order per round: {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"median {out['median']:.3f} (/ AdamW {out['median_over_adamw']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
