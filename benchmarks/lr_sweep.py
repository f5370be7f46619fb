"""The sweep behind `kfac-ext train`'s default learning rates (and K-FAC damping,
AdamW weight decay) on digits, for both tasks (`--task classify|autoencoder`).

Every optimizer gets the same budget: six configurations each (SGD: six
learning rates; K-FAC: three learning rates x two dampings, since with KL
clipping the damping sets K-FAC's step size as much as the lr does; AdamW and
SOAP: three learning rates x two weight decays), the same epochs and schedule,
the same sweep seeds (100, 101: disjoint from the seeds 0-2 that
table_training.py reports, so the reported runs are not the ones tuned on).
A setting is scored by its median epochs to the target (test accuracy, or the
autoencoder's training loss; epochs, not seconds: for a fixed optimizer the
time per step does not depend on the lr, and epochs are immune to the
machine's load); runs that never reach the target count as epochs + 1, ties go
to the better median final metric.

Not in the grid: K-FAC's update intervals, eigendecomposition lag, KL clip,
factor start (`--factor-init`), per-example G and adaptive damping were chosen
(or rejected) on the same sweep seeds in separate comparisons
(benchmarks/RESULTS.md), so K-FAC's configuration had more tries than the
baselines'. Since 2026-12-02 K-FAC preconditions every layer of the digits CNN
(before: `--skip-layers Conv2d`; `sgd_conv_lr.py` checked that configuration's
lead against SGD with a separate convolution lr). Since 2026-12-07 its default is
relative damping with factor decay 0.5 (`--relative-damping --factor-decay 0.5`):
the same K-FAC grid run with and without it on the sweep seeds, best 3.5 epochs
against 5 (lr 0.2, at the grid's upper edge; one step up, lr 0.4, tied at 3.5 and 4
epochs and was not taken; docs/results/digits_lr_sweep_*_2026-12-07e.log).
The AdamW grid was moved up one lr step after its first run put the best at the grid's edge.
On the autoencoder AdamW's betas are (0.7, 0.9) since 2026-12-08 (batch_scaling.py's equal-budget
probe); its grid was re-run with them (`-- --adamw-betas 0.7 0.9`; lr 0.01, one step past the edge,
took twice the epochs: docs/results/ae_adamw_betas_lr_sweep_2026-12-08.log).

    .venv/bin/python benchmarks/lr_sweep.py [--task autoencoder] [--optimizers adamw]
        [--seeds 100 101] [-- more train flags]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_line, run_train  # noqa: E402

# Six configurations per optimizer and task: equal budgets.
GRIDS = {
    "classify": {
        "sgd": [{"lr-sgd": lr} for lr in (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4)],
        "kfac": [{"lr-kfac": lr, "damping": d} for d in (0.1, 0.3) for lr in (0.05, 0.1, 0.2)],
        # lr 0.001-0.01 put the best at the grid's edge (0.01; RESULTS): moved up one step.
        "adamw": [{"lr-adamw": lr, "adamw-weight-decay": wd} for wd in (0.01, 0.1) for lr in (0.003, 0.01, 0.03)],
        "soap": [{"lr-soap": lr, "soap-weight-decay": wd} for wd in (0.01, 0.1) for lr in (0.003, 0.01, 0.03)],
    },
    "autoencoder": {
        "sgd": [{"lr-sgd": lr} for lr in (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)],
        "kfac": [{"lr-kfac": lr, "damping": d} for d in (0.03, 0.1) for lr in (0.025, 0.05, 0.1)],
        "adamw": [{"lr-adamw": lr, "adamw-weight-decay": wd} for wd in (0.0, 0.01) for lr in (0.0003, 0.001, 0.003)],
        "soap": [{"lr-soap": lr, "soap-weight-decay": wd} for wd in (0.0, 0.01) for lr in (0.0003, 0.001, 0.003)],
    },
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    p.add_argument("--task", choices=sorted(GRIDS), default="classify")
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adamw", "kfac"])
    p.add_argument("extra", nargs="*", help="more `kfac-ext train` flags, after --")
    a = p.parse_args()
    if set(a.seeds) & {0, 1, 2}:
        p.error("--seeds: 0, 1 and 2 are the reported seeds (table_training.py); sweep on others")
    print(f"lr sweep on digits, task {a.task} ({machine_line()})")
    print(f"command: python benchmarks/lr_sweep.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    accuracy = a.task == "classify"
    print(
        f"| optimizer | setting | epochs to target (per seed) | median "
        f"| {'final acc' if accuracy else 'final train loss'} (median) | train s (median) |"
    )
    print("|---|---|---|---|---|---|")
    best = {}
    for name in a.optimizers:
        for setting in GRIDS[a.task][name]:
            flags = [x for k, v in setting.items() for x in (f"--{k}", str(v))]
            label = " ".join(f"{k} {v:g}" for k, v in setting.items())
            epochs, accs, secs = [], [], []
            for seed in a.seeds:
                out = run_train(
                    ["--task", a.task, "--optimizer", name, *flags, "--seed", str(seed), *a.extra], allow_diverged=True
                )
                run = out["runs"][name] if out else None
                limit = (len(run["history"]) if run else out_epochs(a)) + 1
                epochs.append((run and run["epochs_to_target"]) or limit)
                if accuracy:
                    accs.append(run["final_test_accuracy"] if run else 0.0)
                else:  # lower is better: score the negated loss
                    accs.append(-run["final_train_eval_loss"] if run else -float("inf"))
                secs.append(run["train_s"] if run else float("nan"))
            score = (statistics.median(epochs), -statistics.median(accs))
            shown = ", ".join(str(e) if e < limit else "never" for e in epochs)
            final = statistics.median(accs)
            final = f"{100 * final:.2f}%" if accuracy else f"{-final:.4f}"
            print(
                f"| {name} | {label} | {shown} | {statistics.median(epochs):g} | "
                f"{final} | {statistics.median(secs):.1f} |",
                flush=True,
            )
            if name not in best or score < best[name][0]:
                best[name] = (score, label)
    print()
    goal = "97% test accuracy (default)" if accuracy else "the default --target-loss"
    print(
        f"target: {goal}; a diverged run counts as never; best: "
        + "; ".join(f"{n}: {label}" for n, (_, label) in best.items())
    )
    return 0


def out_epochs(a) -> int:
    """The schedule length of a run that diverged (it returned no history)."""
    from kfac_ext.app import train_options

    flags = a.extra
    if "--epochs" in flags:
        return int(flags[flags.index("--epochs") + 1])
    return (train_options.AUTOENCODER_DEFAULTS if a.task == "autoencoder" else train_options.DEFAULTS["digits"])[
        "epochs"
    ]


if __name__ == "__main__":
    sys.exit(main())
