"""Where batched_eigh's time goes on ResNet-50's 108 factors (GPU): per size
group, kfac_ext.ops.batched_eigh on the group against a loop of
torch.linalg.eigh, float32, random SPD factors. Guides the work on the
issue-6 target (whole list >= 3x faster than the torch loop).

    python benchmarks/table_eigh_groups.py     # needs a CUDA device
"""
from __future__ import annotations

import collections
import datetime
import sys

import torch

from kfac_ext import ops
from table_gpu import _spd, resnet50_factor_sizes


def best_ms(fn, reps: int) -> float:
    fn()  # warm-up: handles, workspaces
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end))
    return best


def main() -> int:
    if not torch.cuda.is_available():
        print("table_eigh_groups: skipped: no CUDA device")
        return 0
    groups = sorted(collections.Counter(resnet50_factor_sizes()).items())
    rows, total_ours, total_torch = [], 0.0, 0.0
    for n, count in groups:
        factors = [_spd(n, seed=i, device="cuda") for i in range(count)]
        ours = best_ms(lambda: ops.batched_eigh(factors), reps=2)
        loop = best_ms(lambda: [torch.linalg.eigh(f) for f in factors], reps=2)
        rows.append((n, count, ours, loop))
        total_ours, total_torch = total_ours + ours, total_torch + loop
    everything = [_spd(n, seed=i, device="cuda") for i, n in enumerate(resnet50_factor_sizes())]
    all_ours = best_ms(lambda: ops.batched_eigh(everything), reps=2)
    all_torch = best_ms(lambda: [torch.linalg.eigh(f) for f in everything], reps=2)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{now}; {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print("| n | factors | ours ms | torch loop ms | × torch | share of torch loop |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, count, ours, loop in rows:
        print(f"| {n} | {count} | {ours:.2f} | {loop:.2f} | {loop / ours:.2f} | "
              f"{100 * loop / total_torch:.0f} % |")
    print(f"| all, group by group | {sum(c for _, c in groups)} | {total_ours:.1f} | "
          f"{total_torch:.1f} | {total_torch / total_ours:.2f} | 100 % |")
    print(f"| all in one call | {len(everything)} | {all_ours:.1f} | {all_torch:.1f} | "
          f"{all_torch / all_ours:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
