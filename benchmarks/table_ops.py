"""The kfac_ext CPU ops against the unfused torch compositions they replace.

Each row times one op (kfac_ext.ops) and what a user would otherwise write
(kfac_ext.reference: addmm, a loop of torch.linalg.eigh, four matmuls and a
division, triu_indices gathers, (P*G).sum()), on factor and gradient shapes
of ResNet-20/CIFAR (batch 128) and ResNet-50/ImageNet (batch 32), float32.
Repetitions are interleaved (ours, torch, ours, ...) so that both sides see
the same machine load; times and their ratio are the best of them (other
processes' interference only adds time). The FLOP and byte rates are measured
before and after the cases; the higher one is used, so "% of floor" errs low.

"% of floor" compares our time with the least work the op must do: FLOPs
(one triangle for covariance updates, four GEMMs for preconditioning) at the
torch.mm rate measured in this run, or bytes moved at the torch.clone rate
measured in this run for the memory-bound ops. Eigendecompositions are
LAPACK-bound, with no simple floor: "-".

    python benchmarks/table_ops.py            # all shapes
    python benchmarks/table_ops.py --quick    # ResNet-20 shapes only
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _common import rand, resnet20_grad_shapes, spd
from _machine import describe_machine

from kfac_ext import ops
from kfac_ext import reference as ref

DTYPE = torch.float32
ITEM = 4  # bytes per float32


@dataclass
class Case:
    op: str
    shape: str
    ours: Callable[[], object]
    torch: Callable[[], object]
    flops: float = 0.0  # least FLOPs the op must perform (0: memory-bound or n/a)
    bytes: float = 0.0  # least bytes it must move (used when flops == 0)
    reps: int = 5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------- shapes ----


def resnet50_layers():
    """A representative subset of ResNet-50's (out, in) (1x1 and 3x3 convs, fc)."""
    return (
        [(64, 576)] * 3
        + [(256, 64)] * 3
        + [(128, 1152)] * 4
        + [(512, 128)] * 4
        + [(256, 2304)] * 2
        + [(2048, 512)]
        + [(1000, 2049)]
    )


def cov_cases(quick):
    # (label, rows, d): Linear-style A factors with the bias column, rows = batch (x positions).
    shapes = [("R20 fc", 128, 64), ("R20 A 16ch", 2048, 144), ("R20 A 32ch", 2048, 288), ("R20 A 64ch", 2048, 576)]
    if not quick:
        shapes += [
            ("R50 A 64ch", 2048, 576),
            ("R50 A 128ch", 2048, 1152),
            ("R50 A 256ch", 2048, 2304),
            ("R50 fc", 256, 2048),
            ("R50 A 512ch", 1024, 4608),
        ]
    for label, rows, d in shapes:
        x = rand(rows, d, seed=d)
        factor = torch.eye(d + 1, dtype=DTYPE)
        yield Case(
            "cov_update_",
            f"{label}: X {rows}x{d} +1",
            lambda f=factor, x=x: ops.cov_update_(f, x, 0.05, 0.95, append_ones=True),
            lambda f=factor, x=x: ref.cov_update(f, x, 0.05, 0.95, append_ones=True),
            flops=rows * (d + 1) * (d + 2),
            reps=3 if d >= 2304 else 7,
        )


def channel_cases(quick):
    # (label, N, C, H*W): Conv2d output gradients, G factors.
    shapes = [("R20 16@32x32", 128, 16, 1024), ("R20 32@16x16", 128, 32, 256), ("R20 64@8x8", 128, 64, 64)]
    if not quick:
        shapes += [
            ("R50 256@56x56", 32, 256, 3136),
            ("R50 512@28x28", 32, 512, 784),
            ("R50 1024@14x14", 32, 1024, 196),
            ("R50 2048@7x7", 32, 2048, 49),
        ]
    for label, n, c, length in shapes:
        x = rand(n, c, length, seed=c)
        factor = torch.eye(c, dtype=DTYPE)
        yield Case(
            "channel_cov_update_",
            f"{label}: {n}x{c}x{length}",
            lambda f=factor, x=x: ops.channel_cov_update_(f, x, 0.05, 0.95),
            lambda f=factor, x=x: ref.channel_cov_update(f, x, 0.05, 0.95),
            flops=n * length * c * (c + 1),
            reps=3 if c >= 1024 else 7,
        )


def eigh_cases(quick):
    def sizes_of(layers):
        return [i for _, i in layers] + [o for o, _ in layers]

    groups = [("R20 all A+G factors", sizes_of(resnet20_grad_shapes()))]
    if not quick:
        groups += [("R50 576/1152 A, 64..512 G", [576] * 3 + [1152] * 2 + [64] * 3 + [128] * 4 + [256] * 2 + [512] * 4)]
    for label, sizes in groups:
        factors = [spd(n, seed=i) for i, n in enumerate(sizes)]
        yield Case(
            "batched_eigh",
            f"{label} ({len(sizes)}, max {max(sizes)})",
            lambda fs=factors: ops.batched_eigh(fs),
            lambda fs=factors: ref.batched_eigh(fs),
            reps=3,
        )


def _layers(shapes):
    grads, qa, da, qg, dg = [], [], [], [], []
    for i, (out, inp) in enumerate(shapes):
        grads.append(rand(out, inp, seed=i))
        qa.append(torch.linalg.qr(rand(inp, inp, seed=1000 + i))[0])
        qg.append(torch.linalg.qr(rand(out, out, seed=2000 + i))[0])
        da.append(torch.rand(inp, generator=_gen(i), dtype=DTYPE))
        dg.append(torch.rand(out, generator=_gen(i + 1), dtype=DTYPE))
    return grads, qa, da, qg, dg


def precondition_cases(quick):
    groups = [("R20 all layers", resnet20_grad_shapes()), ("R20 64x576 x5", [(64, 576)] * 5)]
    if not quick:
        groups += [("R50 subset", resnet50_layers()), ("R50 512x4608", [(512, 4608)])]
    for label, shapes in groups:
        layers = _layers(shapes)
        flops = sum(4 * o * i * (o + i) for o, i in shapes)
        yield Case(
            "eigen_precondition",
            f"{label} ({len(shapes)} layers)",
            lambda L=layers: ops.eigen_precondition(*L, 0.003),
            lambda L=layers: ref.eigen_precondition(*L, 0.003),
            flops=flops,
            reps=3 if flops > 5e10 else 7,
        )


def triu_cases(quick):
    groups = [("R20 A+G factors", [i for _, i in resnet20_grad_shapes()] + [o for o, _ in resnet20_grad_shapes()])]
    if not quick:
        groups += [("R50 subset A+G", [i for _, i in resnet50_layers()] + [o for o, _ in resnet50_layers()])]
    for label, sizes in groups:
        mats = [spd(n, seed=i) if n <= 600 else rand(n, n, seed=i) for i, n in enumerate(sizes)]
        packed_len = sum(n * (n + 1) // 2 for n in sizes)
        packed = ops.pack_triu(mats)
        targets = [torch.empty_like(m) for m in mats]
        yield Case(
            "pack_triu",
            f"{label} ({len(sizes)}, {packed_len} entries)",
            lambda m=mats: ops.pack_triu(m),
            lambda m=mats: ref.pack_triu(m),
            bytes=2 * packed_len * ITEM,
        )
        yield Case(
            "unpack_triu_",
            f"{label} ({len(sizes)}, {packed_len} entries)",
            lambda p=packed, t=targets: ops.unpack_triu_(p, t, 0.5),
            lambda p=packed, m=mats: ref.unpack_triu(p, m, 0.5),
            bytes=(packed_len + sum(n * n for n in sizes)) * ITEM,
        )


def kl_cases(quick):
    groups = [("R20 grads", resnet20_grad_shapes())]
    if not quick:
        groups += [("R50 subset grads", resnet50_layers())]
    for label, shapes in groups:
        precond = [rand(o, i, seed=i) for o, i in shapes]
        grads = [rand(o, i, seed=o) for o, i in shapes]
        elems = sum(o * i for o, i in shapes)
        yield Case(
            "kl_clip_sum",
            f"{label} ({len(shapes)} layers, {elems} entries)",
            lambda p=precond, g=grads: ops.kl_clip_sum(p, g),
            lambda p=precond, g=grads: sum((a * b).sum() for a, b in zip(p, g)),
            bytes=2 * elems * ITEM,
        )


def all_cases(quick):
    for make in (cov_cases, channel_cases, eigh_cases, precondition_cases, triu_cases, kl_cases):
        yield from make(quick)


# --------------------------------------------------------------- timing ----


def interleaved(fa, fb, reps):
    """Best times of fa and fb over reps alternating runs (fa, fb, fa, fb, ...).

    Alternation makes both sides see the same machine; the best time is the
    estimate least moved by other processes (their interference only adds).
    """
    fa(), fb()  # warm-up (allocations, thread pools)
    ta = tb = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fa()
        t1 = time.perf_counter()
        fb()
        t2 = time.perf_counter()
        ta, tb = min(ta, t1 - t0), min(tb, t2 - t1)
    return ta, tb


def mm_rate(n=1024, reps=10):
    """FLOP/s of a float32 n x n torch.mm on this machine, now."""
    a, b, c = rand(n, n, seed=1), rand(n, n, seed=2), torch.empty(n, n, dtype=DTYPE)
    t, _ = interleaved(lambda: torch.mm(a, b, out=c), lambda: None, reps)
    return 2 * n**3 / t


def copy_rate(n=1 << 23, reps=10):
    """Bytes/s of a 32 MiB float32 copy_ (read + write) into allocated memory."""
    x, y = rand(n, seed=3), torch.empty(n, dtype=DTYPE)
    t, _ = interleaved(lambda: y.copy_(x), lambda: None, reps)
    return 2 * n * ITEM / t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-20 shapes only")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's default)")
    parser.add_argument(
        "--reps", type=float, default=1.0, help="multiply every case's repetitions (more: steadier ratios)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    flop_rate, byte_rate = mm_rate(), copy_rate()
    rows = []
    for case in all_cases(args.quick):
        # Cheap cases get more repetitions (about 0.3 s per side): a best-of
        # over many runs is what survives a busy shared machine.
        t0 = time.perf_counter()
        case.torch()
        single = time.perf_counter() - t0
        reps = max(round(case.reps * args.reps), min(50, int(0.3 * args.reps / max(single, 1e-6))))
        ours, theirs = interleaved(case.ours, case.torch, max(3, reps))
        rows.append((case, ours, theirs))
    flop_rate, byte_rate = max(flop_rate, mm_rate()), max(byte_rate, copy_rate())

    print(
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
        f"machine: {describe_machine()}; torch {torch.__version__}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )
    print(f"command: python benchmarks/table_ops.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(
        f"measured floors: torch.mm {flop_rate / 1e9:.0f} GFLOP/s (float32, 1024^3), "
        f"copy {byte_rate / 1e9:.1f} GB/s (32 MiB)\n"
    )
    print("| op | shape | ours ms | torch ms | speed-up | % of floor |")
    print("|---|---|---:|---:|---:|---:|")
    for case, ours, theirs in rows:
        if case.flops:
            floor = f"{100 * case.flops / flop_rate / ours:.0f}% (FLOP)"
        elif case.bytes:
            floor = f"{100 * case.bytes / byte_rate / ours:.0f}% (bytes)"
        else:
            floor = "-"
        print(
            f"| {case.op} | {case.shape} | {ours * 1e3:.2f} | {theirs * 1e3:.2f} | {theirs / ours:.2f}x | {floor} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
