"""`make demo`: where K-FAC loses on this machine, and where it wins, in one table and one PNG.

Two `kfac-ext train` races, each interleaving SGD, AdamW and K-FAC epoch by epoch
from the same weights and data order, every optimizer at its swept default:

1. **digits CNN to 97 % test accuracy** (the race as it was): a target every
   optimizer reaches in a few epochs; K-FAC (relative damping) saves about one
   epoch of AdamW's four or five, and its step costs about a fifth more, so the two
   finish about together (AdamW first in most runs, by up to a tenth): the regime where
   K-FAC's curvature does not pay.
2. **digits autoencoder to a training loss of 0.5**: the first 20 epochs of the
   40-epoch schedule; K-FAC passes 0.5 in 16-19 epochs, while SGD and AdamW (its
   betas tuned too) do not reach it in all 40 (AdamW ends at 0.64-0.77, SGD at 1.1-1.4,
   seeds 0-2): the regime of Martens & Grosse's autoencoders, more progress per step.
   The table also reads the same runs at loss 1.5, where AdamW is first: K-FAC needs
   about its epochs at a dearer step (to 1.0 the two are level: 15-19 epochs against 10-11).

Why, and the steps-to-target across batch sizes: docs/training-races.md.

    python -m kfac_ext.app.demo [--plot kfac_ext_demo.png] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

from kfac_ext.app import train, train_options

RACES = (
    ("digits CNN", "test accuracy ≥ 97 %", ["--optimizer", "sgd,adamw,kfac"]),
    # The first 20 epochs of the 40-epoch schedule (--stop-after: the same curves, half the
    # time): K-FAC passes 0.5 by epoch 16-19; SGD and AdamW never reach it in all 40.
    (
        "digits autoencoder",
        "training loss ≤ 0.5",
        ["--task", "autoencoder", "--optimizer", "sgd,adamw,kfac", "--target-loss", "0.5", "--stop-after", "20"],
    ),
)


# A second, easier target read off the same runs' curves: the autoencoder to 1.5, where AdamW
# (its betas tuned) is first and K-FAC's dearer steps do not pay (table_training.py: 1.64x).
MILESTONES = {"digits autoencoder": (1.5, "training loss ≤ 1.5 (same runs)")}


def at_milestone(res: dict, loss: float) -> dict:
    """The race's result as if its target had been ``loss``: each run's first epoch at or below
    it (from its per-epoch history) and the training seconds by then."""
    runs = {}
    for name, r in res["runs"].items():
        hit = next((h for h in r["history"] if h["train_eval_loss"] <= loss), None)
        runs[name] = dict(
            r,
            epochs_to_target=hit["epoch"] if hit else None,
            time_to_target_s=hit["train_time_s"] if hit else None,
        )
    return dict(res, runs=runs, target_loss=loss)


def run_race(flags: list[str], seed: int) -> dict:
    """One `kfac-ext train` race in this process; its JSON result."""
    parser = argparse.ArgumentParser()
    train_options.add_arguments(parser)
    args = parser.parse_args([*flags, "--seed", str(seed), "--json", "--quiet", "--plot", ""])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = train.run(args)
    if code != 0:
        raise RuntimeError(f"kfac-ext train {' '.join(flags)} failed with exit code {code}")
    return json.loads(out.getvalue())


def winner(runs: dict) -> str | None:
    """The optimizer first to the target in training seconds (None: nobody reached it)."""
    done = {n: r["time_to_target_s"] for n, r in runs.items() if r["time_to_target_s"]}
    return min(done, key=done.get) if done else None


def verdict(race: str, goal: str, runs: dict) -> str:
    """One line per race, from its figures: who was first and what K-FAC's time was against
    the best of the others."""
    first = winner(runs)
    never = [train_options.NAMES[n] for n, r in runs.items() if r["time_to_target_s"] is None]
    line = f"{race} to {goal}: " + (f"{train_options.NAMES[first]} first" if first else "nobody reached it")
    k = runs.get("kfac", {}).get("time_to_target_s")
    others = [r["time_to_target_s"] for n, r in runs.items() if n != "kfac" and r["time_to_target_s"]]
    if k and others:
        line += f"; K-FAC / best other = {k / min(others):.2f} in time"
    if never:
        line += f"; never reached in the budget: {', '.join(never)}"
    return line


def format_table(results: list[tuple[str, str, dict]]) -> str:
    fmt = lambda v, spec: "never" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "| race | target | optimizer | epochs to target | seconds to target | final | step ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for race, goal, res in results:
        runs = res["runs"]
        first = winner(runs)
        for name, r in runs.items():
            final = (
                f"{100 * r['final_test_accuracy']:.1f} % acc"
                if "task" not in res
                else f"loss {r['final_train_eval_loss']:.3f}"
            )
            mark = " (first)" if name == first else ""
            lines.append(
                f"| {race} | {goal} | {train_options.NAMES[name]}{mark} | "
                f"{fmt(r['epochs_to_target'], 'd')} | "
                f"{fmt(r['time_to_target_s'], '.2f')} | {final} | "
                f"{r['step_ms_median']:.2f} |"
            )
    return "\n".join(lines)


def plot(results: list[tuple[str, str, dict]], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    colours = {"sgd": "tab:blue", "kfac": "tab:red", "adamw": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=80)
    for ax, (race, goal, res) in zip(axes, results):
        accuracy = "task" not in res
        key = "test_accuracy" if accuracy else "train_eval_loss"
        for name, r in res["runs"].items():
            xs = [h["train_time_s"] for h in r["history"]]
            ys = [(100 if accuracy else 1) * h[key] for h in r["history"]]
            ax.plot(xs, ys, marker=".", color=colours.get(name), label=train_options.NAMES[name])
        target = 100 * res["target_accuracy"] if accuracy else res["target_loss"]
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target: {goal}")
        if race in MILESTONES:
            loss, label = MILESTONES[race]
            ax.axhline(loss, color="grey", linestyle=":", linewidth=1, label=label)
        if accuracy:
            ax.set_ylim(85, 100)
            ax.set_ylabel("test accuracy (%)")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("training reconstruction loss")
        first = winner(res["runs"])
        verdict = (
            "K-FAC first"
            if first == "kfac"
            else f"K-FAC not first ({train_options.NAMES[first]} is)"
            if first
            else "nobody reached it"
        )
        if race in MILESTONES:  # who was first at the easier target of the same runs
            easy = winner(at_milestone(res, MILESTONES[race][0])["runs"])
            verdict += f"; to {MILESTONES[race][0]:g}: {train_options.NAMES[easy] if easy else 'nobody'} first"
        ax.set_title(f"{race}: {verdict}")
        ax.set_xlabel("training seconds (evaluation excluded)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"SGD, AdamW and K-FAC on this machine, seed {results[0][2]['seed']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plot", default="kfac_ext_demo.png", help="PNG of both races ('' to skip)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    results = []
    for race, goal, flags in RACES:
        print(f"racing SGD, AdamW and K-FAC: {race} to {goal} ...", file=sys.stderr, flush=True)
        results.append((race, goal, run_race(flags, a.seed)))
    milestones = [
        (race, MILESTONES[race][1], at_milestone(res, MILESTONES[race][0]))
        for race, _, res in results
        if race in MILESTONES
    ]
    print(format_table(results + milestones))
    print()
    for race, goal, res in results + milestones:
        print(verdict(race, goal, res["runs"]))
    print("Why (and K-FAC's steps to target across batch sizes): docs/training-races.md")
    if a.plot:
        print(f"\ncurves: {plot(results, a.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
