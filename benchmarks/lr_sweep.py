"""The sweep behind `kfac-ext train`'s default learning rates (and K-FAC damping) on digits.

Both optimizers get the same budget: six configurations each (SGD: six
learning rates; K-FAC: three learning rates x two dampings, since with KL
clipping the damping sets K-FAC's step size as much as the lr does), the
same epochs and schedule, the same sweep seeds (100, 101: disjoint from the seeds 0-2 that
table_training.py reports, so the reported runs are not the ones tuned on).
An lr is scored by its median epochs to the target test accuracy (epochs, not
seconds: for a fixed optimizer the time per step does not depend on the lr,
and epochs are immune to the machine's load); runs that never reach the target
count as epochs + 1, ties go to the higher median final accuracy.

Not in the grid: K-FAC's update intervals, eigendecomposition lag and which
layers it preconditions (`--skip-layers`, Conv2d on digits) were chosen on the
same sweep seeds in separate comparisons (benchmarks/RESULTS.md), so K-FAC's
configuration had more tries than SGD's. `sgd_conv_lr.py` gives SGD the one
extra freedom that could explain K-FAC's digits lead.

    .venv/bin/python benchmarks/lr_sweep.py [--seeds 100 101] [-- more train flags]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from table_training import machine_line, run_train  # noqa: E402

# Six configurations per optimizer: equal budgets.
GRIDS = {
    "sgd": [{"lr-sgd": lr} for lr in (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4)],
    "kfac": [{"lr-kfac": lr, "damping": d} for d in (0.1, 0.3) for lr in (0.05, 0.1, 0.2)],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    p.add_argument("--optimizers", nargs="+", default=["sgd", "kfac"])
    p.add_argument("extra", nargs="*", help="more `kfac-ext train` flags, after --")
    a = p.parse_args()
    print(f"lr sweep on digits ({machine_line()})")
    print(f"command: python benchmarks/lr_sweep.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print("| optimizer | setting | epochs to target (per seed) | median | final acc (median) "
          "| train s (median) |")
    print("|---|---|---|---|---|---|")
    best = {}
    for name in a.optimizers:
        for setting in GRIDS[name]:
            flags = [x for k, v in setting.items() for x in (f"--{k}", str(v))]
            label = " ".join(f"{k} {v:g}" for k, v in setting.items())
            epochs, accs, secs = [], [], []
            for seed in a.seeds:
                out = run_train(["--optimizer", name, *flags, "--seed", str(seed), *a.extra])
                run = out["runs"][name]
                limit = len(run["history"]) + 1
                epochs.append(run["epochs_to_target"] or limit)
                accs.append(run["final_test_accuracy"])
                secs.append(run["train_s"])
            score = (statistics.median(epochs), -statistics.median(accs))
            shown = ", ".join(str(e) if e < limit else "never" for e in epochs)
            print(f"| {name} | {label} | {shown} | {statistics.median(epochs):g} | "
                  f"{100 * statistics.median(accs):.2f}% | {statistics.median(secs):.1f} |",
                  flush=True)
            if name not in best or score < best[name][0]:
                best[name] = (score, label)
    print()
    print(f"target: {100 * out['target_accuracy']:g}% test accuracy; best: " +
          "; ".join(f"{n}: {label}" for n, (_, label) in best.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
