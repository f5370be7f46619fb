"""The Python part of Horovod 0.19.0's gradient hook, timed on this CPU.

On N > 1 ranks, ``hvd.DistributedOptimizer`` (v0.19.0) fires one Python hook per
parameter tensor during backward, on the thread that runs backward, in series with
issuing the backward's ops; each hook runs Python (look-ups, asserts, the function
name from ``tensor.type()``, ``hasattr``, ``encode``) before entering C++
(``DoAllreduce``). ``measure.hook_cost_estimate`` times a backward over 95 one-element
leaves (ResNet-32's parameter tensors) with and without such a hook on each leaf's
gradient accumulator (thread CPU time, quiet windows confirmed by a second window) and
divides the difference by 95. It is today's Python and torch on this x86 CPU and leaves
out the C++ side: a lower bound for the 2020 runs' hooks.

    python benchmarks/table_scaling_hook_check.py [--runs 5]
"""

import argparse
import os
import statistics
import sys

import torch
from _common import machine_line

from kfac_ext.scaling.measure import hook_cost_estimate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tensors", type=int, default=95)
    args = parser.parse_args()
    if args.runs < 1 or args.tensors < 1:
        raise SystemExit("--runs and --tensors must be >= 1")
    torch.set_num_threads(1)
    print(f"{machine_line()}, load average {os.getloadavg()[0]:.1f}, 1 thread; `python {' '.join(sys.argv)}`\n")
    print("| run | per hook us | backward ms: plain (median) | with hooks (median) | confirmed |")
    print("|---:|---:|---:|---:|---|")
    per = []
    for run in range(args.runs):
        hook, plain, hooked = hook_cost_estimate(args.tensors)
        per.append(hook)
        print(
            f"| {run + 1} | {hook * 1e6:.2f} | {plain.value * 1e3:.3f} ({plain.median * 1e3:.3f}) "
            f"| {hooked.value * 1e3:.3f} ({hooked.median * 1e3:.3f}) | {plain.confirmed and hooked.confirmed} |",
            flush=True,
        )
    print(
        f"\nper hook: median of runs {statistics.median(per) * 1e6:.2f} us (runs {min(per) * 1e6:.2f}-"
        f"{max(per) * 1e6:.2f}); x {args.tensors} = {statistics.median(per) * args.tensors * 1e3:.2f} ms a step; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
