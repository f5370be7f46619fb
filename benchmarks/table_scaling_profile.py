"""Repeated device profiles for `kfac-ext bench scaling --profile FILE`, and their spread.

Each run times the eigendecomposition at several sizes and at 4 x 4 (its per-call
latency, timed directly), and a GEMM (kfac_ext/scaling/measure.py: round robin, in
windows of ``--repeats`` rounds, each quantity the best window's min of medians, timed
until a second window agrees within 5 % (here at least 120 s, at most 150 s: this VM's
quiet speed moves by ~30 % from minute to minute under load, and 30-90 s profiles, the
library's and the CLI's default, repeated within 20 % in one set of four at load 6-10,
2-2.5 min ones in two sets of three at 3-6, the third over its confirmed runs;
docs/distributed.md), sizes not
monotone in n rejected; on one CPU thread the thread's CPU time is the clock) and
prints each run's rates, which quantities it could not confirm, and the spread across
runs (all runs, and the confirmed ones); on the CPU also this machine's per-op host
cost (``op_overhead_estimate``, the same estimator over bursts of 100 ops). ``--out``
writes the median confirmed run's profile as JSON (of all runs if none is confirmed). On a GPU host (``--device cuda``) this is the
GPU profile.

    python benchmarks/table_scaling_profile.py                      # this CPU, 1 thread
    python benchmarks/table_scaling_profile.py --device cuda --sizes 64,256,1024,2048,4096 \
        --out h100.json
"""

import argparse
import os
import sys

import torch
from _common import machine_line

from kfac_ext.scaling.measure import measure_profile, op_overhead_estimate
from kfac_ext.scaling.profiles import to_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--sizes", default="64,128,256,512")
    p.add_argument("--repeats", type=int, default=5, help="rounds per window")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=120.0, help="time each profile at least this long")
    p.add_argument("--max-seconds", type=float, default=150.0, help="and at most this long")
    p.add_argument("--out", default="", help="write the median run's profile here (JSON)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    sizes = [int(s) for s in a.sizes.split(",")]
    print(f"{machine_line()}, load average {os.getloadavg()[0]:.1f}; `python {' '.join(sys.argv)}`\n")
    print(
        "| run | GEMM GFLOP/s | eigh GFLOP/s | eigh latency us | per-op us (median) | windows "
        "| not confirmed | rejected sizes | median / estimate: GEMM, eigh |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---|---|")
    runs, ops = [], []
    for i in range(a.runs):
        m = measure_profile(sizes, a.repeats, device=a.device, min_s=a.min_seconds, max_s=a.max_seconds)
        runs.append(m)
        q = m.profile
        op = op_overhead_estimate() if a.device == "cpu" else None
        ops.append(op)
        unconfirmed = list(m.unconfirmed) + ([] if op is None or op.confirmed else ["per-op"])
        per_op = "-" if op is None else f"{op.value * 1e6:.2f} ({op.median * 1e6:.2f})"
        print(
            f"| {i + 1} | {q.flops_per_s / 1e9:.1f} | {q.eigh_flops_per_s / 1e9:.2f} "
            f"| {q.eigh_latency_s * 1e6:.2f} | {per_op} | {m.windows} | {', '.join(unconfirmed) or '-'} "
            f"| {list(m.rejected) or '-'} | {m.gemm_spread:.2f}, {m.eigh_spread:.2f} |",
            flush=True,
        )
    columns = [
        ("GEMM", [m.profile.flops_per_s for m in runs]),
        ("eigh", [m.profile.eigh_flops_per_s for m in runs]),
        ("eigh latency", [m.profile.eigh_latency_s for m in runs]),
    ]
    if a.device == "cpu":
        columns.append(("per-op host cost", [o.value for o in ops]))
    ok = [i for i, m in enumerate(runs) if m.confirmed and (ops[i] is None or ops[i].confirmed)]
    print()
    for label, vals in columns:
        sub = [vals[i] for i in ok]
        conf = f"{max(sub) / min(sub):.3f} over the {len(sub)} confirmed" if sub else "no run confirmed"
        print(f"{label}: max/min across runs {max(vals) / min(vals):.3f} (all {len(vals)}), {conf}")
    print(f"runs confirmed on every quantity: {len(ok)} of {len(runs)}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if a.out:
        pool = [runs[i] for i in ok] or runs  # the confirmed runs, if any
        mid = sorted(pool, key=lambda m: m.profile.eigh_flops_per_s)[len(pool) // 2]
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
