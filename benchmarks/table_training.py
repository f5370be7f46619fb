"""Time to target test accuracy, SGD vs K-FAC: the default `kfac-ext train` run
(digits, both optimizers, defaults) for 3 seeds, medians reported.

Times are training time (evaluation excluded) as `kfac-ext train` measures
them; both optimizers run in the same process, one after the other, per seed.

    .venv/bin/python benchmarks/table_training.py [--seeds 0 1 2] [-- more train flags]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys

import torch

from kfac_ext.app import train


def run_train(flags: list[str], allow_diverged: bool = False) -> dict | None:
    """Run `kfac-ext train FLAGS --json` in this process; its JSON result (None for a
    diverged run when ``allow_diverged``: a sweep scores it as never reaching the target)."""
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args([*flags, "--json", "--quiet", "--plot", ""])
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = train.run(args)
    except FloatingPointError:
        if allow_diverged:
            return None
        raise
    if code != 0:
        raise RuntimeError(f"kfac-ext train {' '.join(flags)} failed with exit code {code}")
    return json.loads(out.getvalue())


def machine_line() -> str:
    """Date, CPU model, cores, torch version and threads: the header of every table."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                     if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {model}, "
            f"{os.cpu_count()} cores, torch {torch.__version__}")


def _median(values):
    """Median of the values, or None when fewer than half the seeds reached the target."""
    known = [v for v in values if v is not None]
    if len(known) * 2 < len(values):
        return None
    # An unreached target counts as worse than every reached one.
    padded = sorted(known) + [float("inf")] * (len(values) - len(known))
    m = statistics.median(padded)
    return None if m == float("inf") else m


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--also-targets", type=float, nargs="*", default=[0.98],
                   help="further targets read off the same runs' per-epoch test accuracy")
    p.add_argument("extra", nargs="*", help="more `kfac-ext train` flags, after --")
    a = p.parse_args()
    results = [run_train(["--optimizer", "both", "--seed", str(s), *a.extra]) for s in a.seeds]
    target = results[0]["target_accuracy"]
    fmt = lambda v, spec: "never" if v is None else format(v, spec)  # noqa: E731
    print(f"## Training: {results[0]['model']} on {results[0]['data']}, SGD vs K-FAC, "
          f"target {100 * target:g}% test accuracy")
    print()
    print(f"{machine_line()}; seeds {a.seeds}")
    print(f"command: python benchmarks/table_training.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print("| optimizer | lr | s to target (per seed) | s to target (median) "
          "| epochs to target (median) | final acc (median) | step ms (median) "
          "| step ms (mean) | train s (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    med = {}
    for name in ("sgd", "kfac"):
        runs = [r["runs"][name] for r in results]
        t = [r["time_to_target_s"] for r in runs]
        med[name] = _median(t)
        print(f"| {name} | {runs[0]['lr']:g} | {', '.join(fmt(v, '.2f') for v in t)} | "
              f"{fmt(med[name], '.2f')} | "
              f"{fmt(_median([r['epochs_to_target'] for r in runs]), 'g')} | "
              f"{100 * statistics.median(r['final_test_accuracy'] for r in runs):.2f}% | "
              f"{statistics.median(r['step_ms_median'] for r in runs):.2f} | "
              f"{statistics.median(r['step_ms_mean'] for r in runs):.2f} | "
              f"{statistics.median(r['train_s'] for r in runs):.1f} |")
    print()
    overhead = statistics.median(r["runs"]["kfac"]["step_ms_mean"] / r["runs"]["sgd"]["step_ms_mean"]
                                 for r in results) - 1
    line = f"K-FAC time per step vs SGD (mean, amortised): {100 * overhead:+.0f}%"
    if med["sgd"] and med["kfac"]:
        line += f"; median time to target K-FAC / SGD = {med['kfac'] / med['sgd']:.2f}"
    print(line)
    epochs = {name: [r["runs"][name]["epochs_to_target"] for r in results] for name in ("sgd", "kfac")}
    print("epochs to target per seed (SGD/K-FAC): " +
          ", ".join(f"{fmt(s, 'g')}/{fmt(k, 'g')}" for s, k in zip(epochs["sgd"], epochs["kfac"])))
    for extra in a.also_targets:
        cells = []
        for name in ("sgd", "kfac"):
            t = [next((h["train_time_s"] for h in r["runs"][name]["history"]
                       if h["test_accuracy"] >= extra), None) for r in results]
            cells.append(f"{name} {', '.join(fmt(v, '.2f') for v in t)} s "
                         f"(median {fmt(_median(t), '.2f')})")
        print(f"same runs, target {100 * extra:g}%: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
