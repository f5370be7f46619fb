"""Placement engine on the paper's throughput workloads: objective of every method and solve times.

Table 1: per workload at its own k, the max load of one device, greedy, PipeDream's chain
DP, the experts' split (where one ships; an inference split also places the training
graph) and the exact contiguous optimum (ideal DP), with the DP's time.
Table 2: the ideal DP at k = 2, 4, 6/own, 8: ideals, pairs examined and seconds.

  python benchmarks/table_placement.py [--workloads DIR] [--ks 2,4,8]
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import time

import torch  # noqa: F401  (kfac_ext/__init__ loads the op library, which needs torch loaded first)
from _machine import describe_machine

from kfac_ext.placement import Graph
from kfac_ext.placement.baselines import expert, greedy, one_device, pipedream
from kfac_ext.placement.dp import ideal_dp

REPO = pathlib.Path(__file__).resolve().parents[1]


def _expert_split(workloads: pathlib.Path, path: pathlib.Path):
    if path.parent.name != "LayerGraphs":
        return None
    model, kind = path.stem.split("_", 1)
    for name in (f"{model}_{kind}_expert.json", f"{model}_inference_expert.json"):
        if (workloads / "human-experts" / name).exists():
            return workloads / "human-experts" / name
    return None


def _fmt(sol) -> str:
    text = f"{sol.value:.2f}"
    return text + ("*" if sol.stats.get("memory_ok") is False else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=str(REPO / "workloads"))
    parser.add_argument("--ks", default="2,4,8", help="extra accelerator counts for table 2")
    args = parser.parse_args()
    workloads = pathlib.Path(args.workloads)
    files = sorted((workloads / "throughput-inputs").glob("*/*.json"))
    if not files:
        print(f"no workloads under {workloads}", file=sys.stderr)
        return 1
    ks = [int(k) for k in args.ks.split(",") if k]

    print(
        f"Date {datetime.date.today()}, machine: {describe_machine(threads=False)}, "
        f"torch {torch.__version__}, "
        f"command: `python benchmarks/{pathlib.Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip()
    )
    print()
    print(
        "Max load (time per sample, lower is better) at the file's own k (and l = 1 CPU); "
        "`*` = breaks the memory cap.\n"
    )
    print("| workload | k | one device | greedy | PipeDream | expert | **DP (exact)** | DP vs PipeDream | DP s |")
    print("|---|---|---|---|---|---|---|---|---|")
    sweep = []
    for path in files:
        g = Graph.from_json(path)
        name = f"{path.parent.name.replace('Graphs', '')}/{path.stem}"
        sols = {"one": one_device(g), "greedy": greedy(g), "pipedream": pipedream(g)}
        split = _expert_split(workloads, path)
        t0 = time.perf_counter()
        dp = ideal_dp(g)
        dp_seconds = time.perf_counter() - t0
        exp = _fmt(expert(g, split)) if split is not None else "–"
        gain = sols["pipedream"].value / dp.value
        print(
            f"| {name} | {g.num_accelerators} | {_fmt(sols['one'])} | {_fmt(sols['greedy'])} | "
            f"{_fmt(sols['pipedream'])} | {exp} | **{dp.value:.2f}** | {gain:.3f}x | {dp_seconds:.2f} |",
            flush=True,
        )
        sweep.append((name, g.num_accelerators, dp, dp_seconds))
        for k in ks:
            if k == g.num_accelerators:
                continue
            t0 = time.perf_counter()
            sol = ideal_dp(g.with_resources(num_accelerators=k))
            sweep.append((name, k, sol, time.perf_counter() - t0))

    print(
        "\nIdeal DP per (workload, k): ideals, pairs examined (all passes), passes, seconds "
        "(incl. the PipeDream bound).\n"
    )
    print("| workload | k | max load | units | ideals | pairs examined | passes | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, k, sol, seconds in sorted(sweep, key=lambda r: (r[0], r[1])):
        st = sol.stats
        print(
            f"| {name} | {k} | {sol.value:.3f} | {st['units']} | {st['ideals']:,} | {st['pairs_examined']:,} | "
            f"{len(st['passes'])} | {seconds:.2f} |"
        )
    worst = max(sweep, key=lambda r: r[3])
    print(
        f"\nSlowest solve: {worst[0]} at k={worst[1]}: {worst[3]:.2f} s; "
        f"all {len(sweep)} solves: {sum(r[3] for r in sweep):.1f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
