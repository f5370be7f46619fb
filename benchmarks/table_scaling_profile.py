"""Repeated device profiles for `kfac-ext bench scaling --profile FILE`, and their spread.

Times the eigendecomposition at several sizes and a GEMM ``--runs`` times
(kfac_ext/scaling/measure.py: round robin, fastest samples (the GEMM's: min of medians)
with the median beside them, sizes not monotone in n rejected; on one CPU thread the thread's CPU time is the clock) and
prints each run's rates and the spread across runs; on the CPU also this machine's
per-op host cost (``measure_op_overhead``: min of medians of 3000 bursts of 100 ops). ``--out`` writes the median
run's profile as JSON. On a GPU host (``--device cuda``) this is the GPU profile.

    python benchmarks/table_scaling_profile.py                      # this CPU, 1 thread
    python benchmarks/table_scaling_profile.py --device cuda --sizes 64,256,1024,2048,4096 \
        --out h100.json
"""

import argparse
import os
import sys

import torch
from _common import machine_line

from kfac_ext.scaling.measure import measure_op_overhead, measure_profile
from kfac_ext.scaling.profiles import to_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--sizes", default="64,128,256,512")
    p.add_argument("--repeats", type=int, default=120)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default="", help="write the median run's profile here (JSON)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    sizes = [int(s) for s in a.sizes.split(",")]
    print(f"{machine_line()}, load average {os.getloadavg()[0]:.1f}; `python {' '.join(sys.argv)}`\n")
    print(
        "| run | GEMM GFLOP/s | eigh GFLOP/s | eigh latency ms | rejected sizes | spread of repeats: GEMM, eigh "
        "| per-op us (median) |"
    )
    print("|---:|---:|---:|---:|---|---|---:|")
    runs, ops = [], []
    for i in range(a.runs):
        m = measure_profile(sizes, a.repeats, device=a.device)
        runs.append(m)
        q = m.profile
        ops.append(measure_op_overhead() if a.device == "cpu" else (float("nan"), float("nan")))
        print(
            f"| {i + 1} | {q.flops_per_s / 1e9:.1f} | {q.eigh_flops_per_s / 1e9:.2f} "
            f"| {q.eigh_latency_s * 1e3:.3f} | {list(m.rejected) or '-'} "
            f"| {m.gemm_spread:.2f}x, {m.eigh_spread:.2f}x | {ops[-1][0] * 1e6:.2f} ({ops[-1][1] * 1e6:.2f}) |"
        )
    for label, key in (("GEMM", "flops_per_s"), ("eigh", "eigh_flops_per_s"), ("eigh latency", "eigh_latency_s")):
        vals = [getattr(m.profile, key) for m in runs]
        print(f"\n{label}: max/min across runs {max(vals) / min(vals):.3f}", end="")
    if a.device == "cpu":
        vals = [o[0] for o in ops]
        print(f"\nper-op host cost: max/min across runs {max(vals) / min(vals):.3f}", end="")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if a.out:
        mid = sorted(runs, key=lambda m: m.profile.eigh_flops_per_s)[len(runs) // 2]
        to_json(
            mid.profile,
            a.out,
            samples=list(mid.samples),
            rejected=list(mid.rejected),
            gemm_flops_per_s_of_runs=[r.profile.flops_per_s for r in runs],
        )
        print(f"profile: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
