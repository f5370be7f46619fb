"""Placement MILP (HiGHS) vs the contiguous DP (throughput), on the paper's workloads.

The DP's contiguous optimum (``ideal_dp``, exact) and the non-contiguous MILP
warm-started from it, with HiGHS's dual bound and gap after ``--time-limit``
seconds, re-scored from the graph alone.  Latency has its own table:
table_latency.py.

    python benchmarks/table_placement_milp.py                  # 10 s per MILP
    python benchmarks/table_placement_milp.py --time-limit 60
"""

import argparse
import datetime
import pathlib
import sys
import time

import torch  # noqa: F401  (kfac_ext/__init__ loads the op library, which needs libtorch)
from _machine import describe_machine

from kfac_ext.placement.dp import ideal_dp
from kfac_ext.placement.graph import Graph
from kfac_ext.placement.milp import solve_milp

WORKLOADS = pathlib.Path(__file__).resolve().parents[1] / "workloads"
THROUGHPUT = [
    "LayerGraphs/bert24_inference.json",
    "LayerGraphs/bert24_training.json",
    "LayerGraphs/gnmt_inference.json",
    "LayerGraphs/resnet50_inference.json",
    "OperatorGraphs/bert_l-3_inference.json",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per MILP")
    args = ap.parse_args()
    if not WORKLOADS.is_dir():
        print(f"workloads not found at {WORKLOADS}", file=sys.stderr)
        return 1
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {describe_machine(threads=False)}, "
        f"torch {torch.__version__}, `python {' '.join(sys.argv)}`, HiGHS 1 thread\n"
    )
    print(
        "| objective | workload | nodes | k / l | start (method) | start s | MILP | MILP s "
        "| bound | gap | HiGHS status |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in THROUGHPUT:
        g = Graph.from_json(WORKLOADS / "throughput-inputs" / name)
        t = time.perf_counter()
        dp = ideal_dp(g)
        dp_s = time.perf_counter() - t
        m = solve_milp(g, time_limit=args.time_limit, warm_start=dp)
        print(
            f"| throughput | {name} | {len(g)} | {g.num_accelerators} / {g.num_cpus} "
            f"| {dp.value:.4f} (DP, exact contiguous) | {dp_s:.2f} | {m.value:.4f} "
            f"| {m.solve_seconds:.1f} | {m.lower_bound:.4f} | {100 * m.stats['gap']:.2f} % "
            f"| {m.stats['status']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
