"""What a barrier every step costs the CIFAR rows on N GPUs: the slowest rank's input.

The published CIFAR script (gpauloski/kfac_pytorch examples/pytorch_cifar10_resnet.py
at 493f693) builds each batch in the training process on every rank (DataLoader
``num_workers=0``), and every step ends in two blocking ``hvd.allreduce`` of the
metrics, a barrier: a step on N ranks lasts as long as its slowest rank's input. Rank
0 also redraws the tqdm bar (``disable=not verbose``, ``verbose`` only on rank 0); the
other ranks still format the postfix string (its ``.item()`` calls are arguments).

This script times, alternately, a rank-0 iteration and another rank's iteration of the
same input work (``table_scaling_input_check``'s dataset and loop, one thread, the
thread's CPU time). This shared VM's CPU changes speed in spells of seconds (tens of
iterations), which would widen the distribution, so each time is divided by the median
of its ``--half-width`` neighbours each side (``measure.local_relative``), leaving the
iteration-to-iteration jitter of the work; E[max over N ranks] - E[rank 0] is computed
exactly from the two relative distributions (``measure.expected_max_excess``), as a
fraction of an iteration: times 23.6 ms (``calibrate.CIFAR_INPUT_S``) it is the CIFAR
rows' term. Beside it, the same from the quietest ``--window`` consecutive pairs
(``measure.quietest_window``) in ms, and from all raw samples (loaded). ``--runs`` runs
for the spread. It is this CPU's per-iteration jitter (AMD EPYC, today's PIL and torch),
not Longhorn's POWER9. On 2026-12-07 at load 5-9 it did not measure the work's jitter:
the relative spread kept shrinking with the neighbourhood (the VM's speed changes at
every time scale), so calibrate.CIFAR_STRAGGLER_S stays 0 (docs/distributed.md).

    python benchmarks/table_scaling_straggler_check.py [--batches 400] [--half-width 10] [--runs 5]
"""

import argparse
import os
import random
import statistics
import sys
import tempfile

import torch
from _common import machine_line
from table_scaling_input_check import InputLoop, _Cifar

from kfac_ext.scaling.calibrate import CIFAR_INPUT_S
from kfac_ext.scaling.measure import expected_max_excess, local_relative, quietest_window

try:
    from tqdm import tqdm
except ImportError as exc:  # pragma: no cover - ships with the project's venv
    raise SystemExit(f"table_scaling_straggler_check needs tqdm: {exc}") from None

RANKS = (2, 4, 8, 16)


def _run(dataset, batches: int) -> tuple[list[float], list[float]]:
    """Per-iteration thread CPU seconds of rank 0's and another rank's loop, alternating."""
    loop = InputLoop(dataset)
    first, others = [], []
    with tempfile.TemporaryFile("w") as log, tqdm(total=10**9, file=log) as bar:
        for k in range(2 * batches):
            rank0 = k % 2 == 0  # only rank 0's bar is enabled
            (first if rank0 else others).append(loop.iteration(bar if rank0 else None))
    return first, others


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=400, help="iterations of each kind a run")
    parser.add_argument("--window", type=int, default=60, help="consecutive pairs of the quiet spell")
    parser.add_argument("--half-width", type=int, default=10, help="neighbours each side (pairs) of the local median")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.batches < 5 or args.runs < 1 or not 2 <= args.window <= args.batches:
        raise SystemExit("--batches must be >= 5, --runs >= 1 and --window in 2..--batches")
    torch.set_num_threads(1)
    random.seed(0)
    dataset = _Cifar()
    print(f"{machine_line()}, load average {os.getloadavg()[0]:.1f}, 1 thread; `python {' '.join(sys.argv)}`\n")
    head = " | ".join(f"N={r}" for r in RANKS)
    print(
        f"| run | rank 0 ms: mean (quiet window) | sd / local median: rank 0, others | {head}: relative excess % "
        "(x 23.6 ms), quiet window ms, raw ms |"
    )
    print("|---:|---:|---:|" + "---:|" * len(RANKS))
    at4 = []
    for run in range(args.runs):
        first, others = _run(dataset, args.batches)
        series = [t for pair in zip(first, others) for t in pair]
        rel = local_relative(series, 2 * args.half_width)
        r0, ro = rel[0::2], rel[1::2]
        i = quietest_window([a + b for a, b in zip(first, others)], args.window)
        qf, qo = first[i : i + args.window], others[i : i + args.window]
        cells = []
        for r in RANKS:
            excess = expected_max_excess(r0, ro, r)
            quiet, raw = expected_max_excess(qf, qo, r), expected_max_excess(first, others, r)
            cells.append(
                f"{excess * 100:.2f} % ({excess * CIFAR_INPUT_S * 1e3:.2f}), {quiet * 1e3:.2f}, {raw * 1e3:.2f}"
            )
            if r == 4:
                at4.append(excess)
        print(
            f"| {run + 1} | {statistics.fmean(first) * 1e3:.2f} ({statistics.fmean(qf) * 1e3:.2f}) "
            f"| {statistics.stdev(r0) * 100:.1f} %, {statistics.stdev(ro) * 100:.1f} % | " + " | ".join(cells) + " |",
            flush=True,
        )
    med = statistics.median(at4)
    print(
        f"\nE[max of 4] - E[rank 0], relative: median of runs {med * 100:.2f} % of an iteration "
        f"(runs {min(at4) * 100:.2f}-{max(at4) * 100:.2f} %), x {CIFAR_INPUT_S * 1e3:.1f} ms = "
        f"{med * CIFAR_INPUT_S * 1e3:.2f} ms; load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
