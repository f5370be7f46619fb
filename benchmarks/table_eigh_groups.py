"""Where batched_eigh's time goes on ResNet-50's 108 factors (GPU): per size
group, kfac_ext.ops.batched_eigh on the group against a loop of
torch.linalg.eigh, float32, random SPD factors, for one or more settings of
KFAC_EXT_EIGH_STREAMS (the streams, each fed by its own host thread, that the
syevd groups spread over). Guides the work towards the goal of the whole list
>= 3x faster than the torch loop (docs/cuda.md).

    python benchmarks/table_eigh_groups.py                  # 4 streams (the default)
    python benchmarks/table_eigh_groups.py --streams 2 4 8  # compare settings
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import sys

import torch
from _common import resnet50_factor_sizes, spd

from kfac_ext import ops


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


def ours_ms(factors, streams: int) -> float:
    os.environ["KFAC_EXT_EIGH_STREAMS"] = str(streams)  # read by the op on every call
    return best_ms(lambda: ops.batched_eigh(factors), reps=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[4])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("table_eigh_groups: skipped: no CUDA device")
        return 0
    groups = sorted(collections.Counter(resnet50_factor_sizes()).items())
    rows = []
    for n, count in groups:
        factors = [spd(n, seed=i, device="cuda") for i in range(count)]
        loop = best_ms(lambda: [torch.linalg.eigh(f) for f in factors], reps=2)
        rows.append((n, count, loop, [ours_ms(factors, s) for s in args.streams]))
    everything = [spd(n, seed=i, device="cuda") for i, n in enumerate(resnet50_factor_sizes())]
    all_torch = best_ms(lambda: [torch.linalg.eigh(f) for f in everything], reps=2)
    all_ours = [ours_ms(everything, s) for s in args.streams]
    os.environ.pop("KFAC_EXT_EIGH_STREAMS")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{now}; {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print(f"command: python benchmarks/table_eigh_groups.py --streams {' '.join(map(str, args.streams))}")
    total_torch = sum(loop for _, _, loop, _ in rows)
    head = " | ".join(f"ours ms, {s} streams | × torch" for s in args.streams)
    print(f"| n | factors | torch loop ms | share of loop | {head} |")
    print("|---:|---:|---:|---:|" + "---:|---:|" * len(args.streams))
    for n, count, loop, ours in rows:
        cells = " | ".join(f"{o:.2f} | {loop / o:.2f}" for o in ours)
        print(f"| {n} | {count} | {loop:.2f} | {100 * loop / total_torch:.0f} % | {cells} |")
    cells = " | ".join(f"{o:.1f} | {all_torch / o:.2f}" for o in all_ours)
    print(f"| all in one call | {len(everything)} | {all_torch:.1f} | | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
