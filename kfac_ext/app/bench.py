"""Benchmarks and models. `kfac-ext bench scaling`: predicted distributed K-FAC step time.

Predicts, for ResNet-50's 54 K-FAC layers, the amortised per-step K-FAC time
of the slowest worker on 8..1024 workers for COMM-OPT, HYBRID-OPT and
MEM-OPT, split into compute (eigendecompositions, preconditioning) and
communication (factor all-reduce, eigenbasis and gradient broadcasts), from
kernel times measured on this machine and an alpha-beta network model
(kfac_ext/scaling.py documents the model and its defaults). Prints a markdown
table and writes a plot.
"""
from __future__ import annotations

import argparse
import datetime
import math
import sys

import torch

from kfac_ext.app import scaling
from kfac_ext.app.machine import cpu_model
from kfac_ext.app.validation import check_output_path

# An eigendecomposition of a larger factor takes minutes and gigabytes to time; the
# fit needs only a few sizes (kfac_ext/app/scaling.py).
MAX_EIGH_SIZE = 4096
# The prediction builds every worker's layer assignment: 65536 workers take ~13 s and
# 260 MB, 2**20 a minute and 540 MB, 10**12 runs out of memory (2-core EPYC, 2026-12-01).
MAX_WORKERS = 2 ** 16


def _positive_ints(text: str) -> list[int]:
    """argparse type: a comma-separated list of integers >= 1."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") \
            from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["scaling"], help="which benchmark")
    parser.add_argument("--workers", type=_positive_ints,
                        default=[8, 16, 32, 64, 128, 256, 512, 1024],
                        help="comma-separated worker counts (default 8..1024, powers of two; "
                             f"at most {MAX_WORKERS})")
    parser.add_argument("--network", choices=sorted(scaling.NETWORKS), default="ib100",
                        help="alpha-beta defaults: ib100 = 100 Gb/s InfiniBand, nvlink = NVSwitch")
    parser.add_argument("--alpha", type=float, default=None, help="override latency (s)")
    parser.add_argument("--bandwidth", type=float, default=None, help="override bandwidth (B/s)")
    parser.add_argument("--factor-update-steps", type=int, default=10)
    parser.add_argument("--inv-update-steps", type=int, default=100)
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    parser.add_argument("--eigh-sizes", type=_positive_ints, default=[64, 128, 256, 512],
                        help=f"factor sizes timed for the eigh fit (2..{MAX_EIGH_SIZE})")
    parser.add_argument("--plot", default="scaling.png", help="PNG path ('' for none)")


def _plot(rows, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_total, ax_comm) = plt.subplots(1, 2, figsize=(11, 4))
    for strategy in ("COMM-OPT", "HYBRID-OPT", "MEM-OPT"):
        pts = [p for p in rows if p.strategy == strategy]
        if not pts:
            continue
        xs = [p.workers for p in pts]
        ax_total.plot(xs, [p.total * 1e3 for p in pts], marker="o", label=strategy)
        ax_comm.plot(xs, [p.comm * 1e3 for p in pts], marker="o", label=strategy)
    for ax, name in ((ax_total, "K-FAC time per step (ms)"), (ax_comm, "communication per step (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("workers")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _check_args(args) -> None:
    """Refuse values the model cannot use before the kernels are timed (seconds of work)."""
    if max(args.workers) > MAX_WORKERS:
        raise ValueError(f"--workers must be in 1..{MAX_WORKERS}; got {max(args.workers)}")
    bad = [s for s in args.eigh_sizes if not 2 <= s <= MAX_EIGH_SIZE]
    if bad:
        raise ValueError(f"--eigh-sizes must be in 2..{MAX_EIGH_SIZE}; got {bad[0]}")
    if len(set(args.eigh_sizes)) < 2:
        raise ValueError("--eigh-sizes needs two different sizes to fit t(n) = c3 n^3 + c0")
    finite = lambda v: v is None or math.isfinite(v)  # noqa: E731
    for flag, value, ok, expected in (
            ("--alpha", args.alpha, finite(args.alpha) and (args.alpha is None or args.alpha >= 0),
             "a finite number of seconds >= 0"),
            ("--bandwidth", args.bandwidth,
             finite(args.bandwidth) and (args.bandwidth is None or args.bandwidth > 0),
             "a finite number of bytes/s > 0"),
            ("--factor-update-steps", args.factor_update_steps, args.factor_update_steps >= 1,
             "an integer >= 1"),
            ("--inv-update-steps", args.inv_update_steps, args.inv_update_steps >= 1,
             "an integer >= 1"),
            ("--bucket-cap-mb", args.bucket_cap_mb,
             math.isfinite(args.bucket_cap_mb) and args.bucket_cap_mb > 0,
             "a finite number > 0")):
        if not ok:
            raise ValueError(f"{flag} must be {expected}; got {value}")
    if args.plot:
        check_output_path("--plot", args.plot)


def run(args) -> int:
    _check_args(args)
    net = scaling.NETWORKS[args.network]
    if args.alpha is not None or args.bandwidth is not None:
        net = scaling.Network(net.name + " (overridden)",
                              net.alpha if args.alpha is None else args.alpha,
                              net.bandwidth if args.bandwidth is None else args.bandwidth)
    kernels, samples = scaling.measure_kernels(args.eigh_sizes)
    shapes = scaling.resnet50_factor_shapes()
    rows = []
    for n in args.workers:
        for fraction in scaling.strategy_fractions(n).values():
            rows.append(scaling.predict_step(
                shapes, n, fraction, kernels, net, factor_update_steps=args.factor_update_steps,
                inv_update_steps=args.inv_update_steps, bucket_cap_mb=args.bucket_cap_mb))
    order = {"COMM-OPT": 0, "HYBRID-OPT": 1, "MEM-OPT": 2}
    rows.sort(key=lambda p: (p.workers, order[p.strategy]))

    print(f"Predicted ResNet-50 K-FAC time per step (slowest worker, amortised: factors every "
          f"{args.factor_update_steps}, eigh every {args.inv_update_steps} steps)")
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; kernels measured "
          f"on {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"network {net.name}: alpha {net.alpha * 1e6:g} us, "
          f"{net.bandwidth / 1e9:g} GB/s")
    fit = ", ".join(f"n={n}: {t * 1e3:.2f} ms" for n, t in samples)
    print(f"eigh fit t(n) = {kernels.eigh_c3:.3g} n^3 + {kernels.eigh_c0:.3g} s ({fit}); "
          f"GEMM {kernels.gemm_flops_per_s / 1e9:.1f} GFLOP/s")
    print("command: kfac-ext bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else ["scaling"]))
    print()
    print("| workers | strategy | grad workers/layer | total ms | compute ms (eigh + precond) "
          "| comm ms (factors + eigen + grads) | MB received/step |")
    print("|---:|---|---:|---:|---|---|---:|")
    for p in rows:
        print(f"| {p.workers} | {p.strategy} | {p.grad_workers} | {p.total * 1e3:.1f} "
              f"| {p.compute * 1e3:.1f} ({p.eigen_compute * 1e3:.1f} + {p.precond_compute * 1e3:.1f}) "
              f"| {p.comm * 1e3:.2f} ({p.factor_comm * 1e3:.2f} + {p.eigen_comm * 1e3:.2f} + "
              f"{p.grad_comm * 1e3:.2f}) | {p.bytes_per_step / 1e6:.1f} |")
    if args.plot:
        _plot(rows, args.plot, f"ResNet-50 K-FAC, {net.name}")
        print(f"\nplot: {args.plot}")
    return 0
