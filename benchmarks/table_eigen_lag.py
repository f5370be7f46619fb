"""What `inv_lag_steps` saves: the digits CNN's K-FAC step by its position in the
eigendecomposition cycle, with the eigendecompositions inline (lag 0) and on the
background thread (lag 1, 2).

`kfac-ext train`'s digits loop (batch 64, factors every 5 steps, eigh every 20,
1 torch thread), run for --steps steps per setting; settings alternate over
--reps rounds so each sees the same machine load. For each step position k in
the 20-step cycle, the median step time; the table shows positions 0-2 (0 is
the eigendecomposition step, also a factor step), the median of the plain
positions, and the extra cost of position 0 over a plain step. A factor-only
step (positions 5, 10, 15) is shown for comparison: with the solve off the main
thread, position 0 should cost about what a factor step costs.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/table_eigen_lag.py [--reps 3] [--steps 420]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _machine import describe_machine

from kfac_ext import KFACPreconditioner
from kfac_ext.app.data import load_dataset
from kfac_ext.app.models import build_model

CYCLE = 20


def cycle_medians(data, lag: int, steps: int) -> dict[int, float]:
    """Median step time (ms) at each position of the eigendecomposition cycle."""
    torch.manual_seed(0)
    model = build_model("digits-cnn", data.num_classes, data.in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pre = KFACPreconditioner(
        model, factor_update_steps=5, inv_update_steps=CYCLE, damping=0.1, lr=0.05, inv_lag_steps=lag
    )
    per_batch = 64
    batches = len(data.train_y) // per_batch
    gen = torch.Generator().manual_seed(1)
    times: dict[int, list[float]] = {}
    for step in range(steps):
        i = step % batches
        if i == 0:
            order = torch.randperm(len(data.train_y), generator=gen)
        t0 = time.perf_counter()
        x, y = data.batch(order[i * per_batch : (i + 1) * per_batch], True, gen)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        pre.step()
        optimizer.step()
        if step >= CYCLE:  # the first cycle decomposes inline whatever the lag
            times.setdefault(step % CYCLE, []).append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=420)
    p.add_argument("--lags", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits", None)
    print("## K-FAC step by position in the eigendecomposition cycle (digits CNN)\n")
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {describe_machine()}")
    print(f"command: python benchmarks/table_eigen_lag.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print("| rep | lag | step 0 (eigh) ms | step 1 | step 2 | plain (median) | factor step | eigh step - plain |")
    print("|---|---|---|---|---|---|---|---|")
    for rep in range(a.reps):
        for lag in a.lags:
            m = cycle_medians(data, lag, a.steps)
            plain = statistics.median(v for k, v in m.items() if k % 5)
            factor = statistics.median(m[k] for k in (5, 10, 15))
            print(
                f"| {rep + 1} | {lag} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {plain:.2f} | "
                f"{factor:.2f} | {m[0] - plain:+.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
