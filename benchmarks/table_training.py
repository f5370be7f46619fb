"""Time to target, SGD vs AdamW vs K-FAC: the default `kfac-ext train` run (digits CNN
to 97 % test accuracy, or `--task autoencoder` to its target training loss) for
3 seeds, per-seed figures and medians.

Times are training time (evaluation excluded) as `kfac-ext train` measures
them; the optimizers run in the same process, interleaved epoch by epoch, per
seed, so the machine's load hits them alike. Epochs to target are reported
too: they do not depend on the load.

    .venv/bin/python benchmarks/table_training.py [--task autoencoder]
        [--optimizers sgd,adamw,kfac] [--seeds 0 1 2] [-- more train flags]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from _common import machine_line, run_train


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--task", choices=("classify", "autoencoder"), default="classify")
    p.add_argument("--optimizers", default="sgd,adamw,kfac")
    p.add_argument(
        "--also-targets",
        type=float,
        nargs="*",
        default=None,
        help="further targets read off the same runs' per-epoch metric "
        "(default: 98%% for classify, none for the autoencoder)",
    )
    p.add_argument("extra", nargs="*", help="more `kfac-ext train` flags, after --")
    a = p.parse_args()
    results = [run_train(["--task", a.task, "--optimizer", a.optimizers, "--seed", str(s), *a.extra]) for s in a.seeds]
    names = list(results[0]["runs"])
    accuracy = a.task == "classify"
    metric = "test_accuracy" if accuracy else "train_eval_loss"
    target = results[0]["target_accuracy"] if accuracy else results[0]["target_loss"]
    goal = f"{100 * target:g}% test accuracy" if accuracy else f"training loss {target:g}"
    fmt = lambda v, spec: "never" if v is None else format(v, spec)  # noqa: E731
    print(f"## Training: {results[0]['model']} on {results[0]['data']}, {', '.join(names)}, target {goal}")
    print()
    print(f"{machine_line()}; seeds {a.seeds}")
    print(f"command: python benchmarks/table_training.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print(
        "| optimizer | lr | s to target (per seed) | s to target (median) "
        "| epochs to target (per seed) | epochs (median) | final (median) "
        "| step ms (median) | step ms (mean) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    med, meds_epochs = {}, {}
    for name in names:
        runs = [r["runs"][name] for r in results]
        t = [r["time_to_target_s"] for r in runs]
        e = [r["epochs_to_target"] for r in runs]
        med[name], meds_epochs[name] = _median(t), _median(e)
        final = statistics.median(r["history"][-1][metric] for r in runs)
        print(
            f"| {name} | {runs[0]['lr']:g} | {', '.join(fmt(v, '.2f') for v in t)} | "
            f"{fmt(med[name], '.2f')} | {', '.join(fmt(v, 'd') for v in e)} | "
            f"{fmt(meds_epochs[name], 'g')} | "
            f"{f'{100 * final:.2f}%' if accuracy else f'{final:.4f}'} | "
            f"{statistics.median(r['step_ms_median'] for r in runs):.2f} | "
            f"{statistics.median(r['step_ms_mean'] for r in runs):.2f} |"
        )
    print()
    baselines = [n for n in names if n != "kfac"]
    if "kfac" in names and baselines:
        for b in baselines:
            over = (
                statistics.median(r["runs"]["kfac"]["step_ms_mean"] / r["runs"][b]["step_ms_mean"] for r in results) - 1
            )
            line = f"K-FAC time per step vs {b} (mean, amortised): {100 * over:+.0f}%"
            if med[b] and med["kfac"]:
                line += f"; median time to target K-FAC / {b} = {med['kfac'] / med[b]:.2f}"
            print(line)
        reached = [b for b in baselines if med[b]]
        if reached and med["kfac"]:
            fastest = min(reached, key=lambda b: med[b])
            print(f"K-FAC / the faster baseline ({fastest}), median time to target: {med['kfac'] / med[fastest]:.2f}")
        per_seed = []
        for r in results:
            k = r["runs"]["kfac"]["time_to_target_s"]
            best = [r["runs"][b]["time_to_target_s"] for b in baselines if r["runs"][b]["time_to_target_s"]]
            per_seed.append(fmt(k / min(best), ".2f") if k and best else "n/a")
        print("K-FAC / fastest baseline per seed: " + ", ".join(per_seed))
    also = a.also_targets if a.also_targets is not None else ([0.98] if accuracy else [])
    for extra in also:
        cells = []
        for name in names:
            t = [
                next(
                    (
                        h["train_time_s"]
                        for h in r["runs"][name]["history"]
                        if (h[metric] >= extra if accuracy else h[metric] <= extra)
                    ),
                    None,
                )
                for r in results
            ]
            cells.append(f"{name} {', '.join(fmt(v, '.2f') for v in t)} s (median {fmt(_median(t), '.2f')})")
        print(f"same runs, target {extra:g}: " + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
