"""K-FAC work assignment: exact makespan vs LPT on ResNet-50's 108 factors.

Costs are n^3 + 8 n^2 for an n x n factor (eigendecomposition FLOPs plus the
bytes of the broadcast eigenvectors, in the same arbitrary unit); ResNet-50
(torchvision) has 108 factors of 13 distinct sizes.  For each worker count:
the solver's time, whether it proved optimality within the 1 s limit, its
makespan over the lower bound max(largest, ceil(sum / N)), and LPT's.

    python benchmarks/table_makespan.py
"""

import datetime
import sys
import time

import torch  # noqa: F401  (kfac_ext/__init__ loads the op library, which needs libtorch)
from _common import resnet50_factor_sizes
from _machine import describe_machine

from kfac_ext.assignment import lpt_assignment, optimal_makespan_assignment


def main() -> int:
    costs = [float(n) ** 3 + 8.0 * n * n for n in resnet50_factor_sizes()]
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {describe_machine(threads=False)}, "
        f"torch {torch.__version__}, `python {' '.join(sys.argv)}`\n"
    )
    print("| workers | solve s | optimal | makespan / bound | LPT / bound | LPT / optimum |")
    print("|---|---|---|---|---|---|")
    for n in (2, 3, 4, 5, 8, 16, 32, 64):
        t = time.perf_counter()
        res = optimal_makespan_assignment(costs, n, time_limit=1.0)
        dt = time.perf_counter() - t
        lpt = lpt_assignment(costs, n).makespan
        print(
            f"| {n} | {dt:.3f} | {res.optimal} | {res.makespan / res.lower_bound:.9f} "
            f"| {lpt / res.lower_bound:.6f} | {lpt / res.makespan:.6f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
