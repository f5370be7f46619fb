"""Conv2d activation factor: kfac_ext's shift-product kernel vs F.unfold + GEMM.

The baseline is the math kfac-pytorch runs in its forward hook: im2col
(F.unfold), rows scaled by 1/T, then one dense GEMM aᵀa / (N·T). Both sides
get the same NCHW float32 input and return the same (C·kh·kw)² factor; the
table shows the median time of each, the ratio, the FLOPs each performs
(dense GEMM 2·N·T·D² for unfold; the shifted C×C products for ours, from the
same tap-shift classes the kernel forms, over the positions it multiplies)
and the largest relative difference
between the two results.

    python benchmarks/table_conv_act_factor.py            # all shapes
    python benchmarks/table_conv_act_factor.py --quick    # ResNet-20 shapes only
"""

import argparse
import datetime
import os
import sys
import time

import torch
import torch.nn.functional as F
from _machine import describe_machine

import kfac_ext._C  # noqa: F401  (registers torch.ops.kfac_ext.*)

ALGO_ENV = "KFAC_EXT_CONV_FACTOR_ALGO"

# (label, N, C, H=W, stride); all 3x3, padding 1, dilation 1, no bias (as in ResNets).
RESNET20 = [
    ("ResNet-20 16@32x32", 128, 16, 32, 1),
    ("ResNet-20 32@16x16", 128, 32, 16, 1),
    ("ResNet-20 64@8x8", 128, 64, 8, 1),
    ("ResNet-20 16@32x32 s2", 128, 16, 32, 2),
    ("ResNet-20 32@16x16 s2", 128, 32, 16, 2),
]
RESNET50 = [
    ("ResNet-50 64@56x56", 32, 64, 56, 1),
    ("ResNet-50 128@28x28", 32, 128, 28, 1),
    ("ResNet-50 256@14x14", 32, 256, 14, 1),
    ("ResNet-50 512@7x7", 32, 512, 7, 1),
    ("ResNet-50 128@56x56 s2", 32, 128, 56, 2),
]


def unfold_gemm(x, kernel, stride, padding, dilation):
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    n, d, t = cols.shape
    a = cols.transpose(1, 2).reshape(n * t, d) / t
    return a.t() @ (a / (n * t))


def ours(x, kernel, stride, padding, dilation, products="shift"):
    """The op with its shift products forced to `products`: 'shift' (the
    vectorised kernel where the CPU has AVX-512, as in normal use) or
    'shift-blas' (the same algorithm with GEMMs, what the kernel replaced)."""
    os.environ[ALGO_ENV] = products
    try:
        return torch.ops.kfac_ext.conv2d_act_factor(x, kernel, stride, padding, dilation, False)
    finally:
        os.environ.pop(ALGO_ENV)


def _axis_classes(size, k, s, p, d, out):
    """Per axis: {(phase, partner phase, delta): rows of the valid range}, as the kernel forms them."""
    start = [i * d - p for i in range(k)]
    off = [v // s for v in start]
    phase = [v - o * s for v, o in zip(start, off)]
    plen = [max(0, (size - f + s - 1) // s) for f in range(s)]
    classes = {}
    for i in range(k):
        for j in range(k):
            key = (phase[i], phase[j], off[j] - off[i])
            lo = max(0, -key[2])
            classes[key] = max(0, min(plen[key[0]], plen[key[1]] - key[2]) - lo)
    return classes


def ours_flops(n, c, h, w, kernel, stride, padding, dilation):
    """FLOPs of the shift products over their live positions, the pairs of two
    values that can be non-zero: what the vectorised kernel multiplies (GEMM
    products also multiply the zero gaps between image rows). Border bands and
    corners are left out: they are thin."""
    ho = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    rows = _axis_classes(h, kernel[0], stride[0], padding[0], dilation[0], ho)
    cols = _axis_classes(w, kernel[1], stride[1], padding[1], dilation[1], wo)
    seen, flops = set(), 0
    for rk, rlen in rows.items():
        for ck, clen in cols.items():
            mirror = ((rk[1], rk[0], -rk[2]), (ck[1], ck[0], -ck[2]))
            if mirror in seen:
                continue
            seen.add((rk, ck))
            flops += 2 * c * c * rlen * n * clen
    return flops


def best_times(fns, reps):
    """Best-of-reps seconds of each fn, the fns interleaved so that both see the
    same background load (shared machine: the minimum is the least disturbed)."""
    for fn in fns:
        fn()  # warm-up (allocations, MKL init)
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-20 shapes only")
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repetitions, interleaved (best reported); default 5"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both sides (default: torch's own choice)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or 5
    shapes = RESNET20 if args.quick else RESNET20 + RESNET50
    torch.manual_seed(0)

    print(f"Conv2d activation factor, float32, 3x3 pad 1, no bias; best of {reps} interleaved runs after a warm-up.")
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {describe_machine()}; "
        f"torch {torch.__version__}; `python {' '.join(sys.argv)}`\n"
    )
    a = torch.randn(1536, 1536)
    (t_gemm,) = best_times([lambda: a @ a], 3)
    print(
        f"Dense float32 GEMM 1536^3 in this run: {2 * 1536**3 / t_gemm / 1e9:.1f} GFLOP/s "
        "(the rate a compute-bound kernel could reach here).\n"
    )
    print(
        "| shape (N, C@HxW, stride) | unfold+GEMM ms | ours, GEMM products ms | ours ms | speed-up "
        "vs unfold | vs GEMM products | unfold GFLOP | ours GFLOP | ours GFLOP/s | max rel diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, c, hw, s in shapes:
        x = torch.randn(n, c, hw, hw)
        conv = ((3, 3), (s, s), (1, 1), (1, 1))
        t_ref, t_blas, t_ours = best_times(
            [lambda: unfold_gemm(x, *conv), lambda: ours(x, *conv, products="shift-blas"), lambda: ours(x, *conv)], reps
        )
        ref, got = unfold_gemm(x, *conv), ours(x, *conv)
        diff = ((got - ref).abs().max() / ref.abs().max()).item()
        ho = (hw + 2 - 2 - 1) // s + 1
        flops_ref = 2 * n * ho * ho * (9 * c) ** 2
        flops_ours = ours_flops(n, c, hw, hw, *conv)
        print(
            f"| {label}, N={n} | {t_ref * 1e3:.1f} | {t_blas * 1e3:.1f} | {t_ours * 1e3:.1f} "
            f"| {t_ref / t_ours:.2f}x | {t_blas / t_ours:.2f}x "
            f"| {flops_ref / 1e9:.2f} | {flops_ours / 1e9:.2f} | {flops_ours / t_ours / 1e9:.1f} | {diff:.1e} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
