"""The CUDA ops and the K-FAC step on a GPU against what a user would otherwise run.

One markdown table. Each row times one kfac_ext op (or a full K-FAC training
iteration) and the plain torch composition it replaces (kfac_ext.reference:
unfold + GEMM, a loop of torch.linalg.eigh, four matmuls and a division,
...), and CuPy where it has an equivalent (cupy.linalg.eigh, cupy matmul),
on ResNet-50 layer shapes at batch 32 (ImageNet, 224x224) and the CIFAR
ResNet-20 at batch 128, float32. Every op's result is also checked against
the float64 CPU reference: the "err" columns give the largest relative error
of ours and of the torch composition (eigenvalues for eigh).

Timing: CUDA events around each call after a warm-up, repetitions
interleaved (ours, torch, CuPy, ours, ...), best of reps.

    python benchmarks/table_gpu.py             # the full table (GPU)
    python benchmarks/table_gpu.py --quick     # ResNet-20 shapes only
    python benchmarks/table_gpu.py --device cpu --quick   # smoke test of this script
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _common import rand, rel_err, resnet20_grad_shapes, resnet50_factor_sizes, resnet50_grad_shapes, spd
from _machine import describe_machine
from torch import nn

import kfac_ext
from kfac_ext import ops
from kfac_ext import reference as ref
from kfac_ext.app.models import resnet_cifar

try:  # CuPy is compared where present; never required.
    import cupy
except Exception:  # noqa: BLE001  (ImportError, or a CuPy without a usable GPU)
    cupy = None

DTYPE = torch.float32


@dataclass
class Case:
    op: str
    shape: str
    ours: Callable[[], object]
    torch: Callable[[], object]
    cupy: Callable[[], object] | None = None
    # Accuracy check: (result of ours, result of torch) -> (err ours, err torch), or None.
    check: Callable[[], tuple] | None = None
    reps: int = 5
    # The same work without what is being compared (a plain SGD iteration for
    # the K-FAC rows): timed in the same interleaved loop, so that the table
    # can also give the ratio of the K-FAC overheads alone.
    baseline: Callable[[], object] | None = None


def _errs(ours_fn, torch_fn, exact_fn):
    """Closure computing (err ours, err torch) against the float64 CPU reference."""

    def run():
        exact = exact_fn()
        return rel_err(ours_fn(), exact), rel_err(torch_fn(), exact)

    return run


def _to_cupy(t):
    return cupy.from_dlpack(t)


# ---------------------------------------------------------------- cases ----


def cov_cases(device, quick):
    # Linear-style A factor with the bias column: ResNet-50's fc at batch 32,
    # and 1x1-conv-like inputs flattened to rows (32 * positions).
    shapes = [("R20 fc", 128, 64)]
    if not quick:
        shapes += [
            ("R50 fc A", 32, 2048),
            ("R50 1x1 256ch @14x14", 32 * 196, 256),
            ("R50 1x1 1024ch @7x7", 32 * 49, 1024),
        ]
    for label, rows, d in shapes:
        x = rand(rows, d, seed=d, device=device)
        factor = torch.eye(d + 1, dtype=DTYPE, device=device)
        x64, f64 = x.double().cpu(), factor.double().cpu()

        def ours(f=factor, x=x):
            out = f.clone()
            ops.cov_update_(out, x, 0.05, 0.95, append_ones=True)
            return out

        def theirs(f=factor, x=x):
            return ref.cov_update(f, x, 0.05, 0.95, append_ones=True)

        cp = None
        if cupy is not None and device == "cuda":

            def cp(f=factor, x=x):
                xc, fc = _to_cupy(x), _to_cupy(f)
                xo = cupy.concatenate([xc, cupy.ones((xc.shape[0], 1), dtype=xc.dtype)], axis=1)
                return 0.95 * fc + 0.05 * (xo.T @ xo)

        yield Case(
            "cov_update_",
            f"{label}: X {rows}x{d} +1",
            ours,
            theirs,
            cp,
            _errs(ours, theirs, lambda x=x64, f=f64: ref.cov_update(f, x, 0.05, 0.95, True)),
        )


def channel_cases(device, quick):
    shapes = [("R20 16@32x32", 128, 16, 1024), ("R20 64@8x8", 128, 64, 64)]
    if not quick:
        shapes += [
            ("R50 256@56x56", 32, 256, 3136),
            ("R50 512@28x28", 32, 512, 784),
            ("R50 1024@14x14", 32, 1024, 196),
            ("R50 2048@7x7", 32, 2048, 49),
        ]
    for label, n, c, length in shapes:
        x = rand(n, c, length, seed=c, device=device)
        factor = torch.eye(c, dtype=DTYPE, device=device)

        def ours(f=factor, x=x):
            out = f.clone()
            ops.channel_cov_update_(out, x, 0.05, 0.95)
            return out

        def theirs(f=factor, x=x):
            return ref.channel_cov_update(f, x, 0.05, 0.95)

        cp = None
        if cupy is not None and device == "cuda":

            def cp(f=factor, x=x):
                xc = _to_cupy(x)
                rows = cupy.ascontiguousarray(xc.transpose(0, 2, 1)).reshape(-1, xc.shape[1])
                return 0.95 * _to_cupy(f) + 0.05 * (rows.T @ rows)

        yield Case(
            "channel_cov_update_",
            f"{label}: {n}x{c}x{length}",
            ours,
            theirs,
            cp,
            _errs(
                ours,
                theirs,
                lambda x=x, f=factor: ref.channel_cov_update(f.double().cpu(), x.double().cpu(), 0.05, 0.95),
            ),
            reps=3 if c >= 1024 else 5,
        )


def conv_cases(device, quick):
    # (label, N, C, H, kernel, stride, padding)
    shapes = [
        ("R20 16@32x32", 128, 16, 32, 3, 1, 1),
        ("R20 32@16x16", 128, 32, 16, 3, 1, 1),
        ("R20 64@8x8", 128, 64, 8, 3, 1, 1),
    ]
    if not quick:
        shapes += [
            ("R50 conv1 3@224", 32, 3, 224, 7, 2, 3),
            ("R50 64@56x56", 32, 64, 56, 3, 1, 1),
            ("R50 128@28x28", 32, 128, 28, 3, 1, 1),
            ("R50 256@14x14", 32, 256, 14, 3, 1, 1),
            ("R50 512@7x7", 32, 512, 7, 3, 1, 1),
        ]
    for label, n, c, h, k, s, p in shapes:
        x = rand(n, c, h, h, seed=c, device=device)
        args = ((k, k), (s, s), (p, p), (1, 1), False)

        def ours(x=x, args=args):
            return ops.conv2d_act_factor(x, *args)

        def theirs(x=x, args=args):
            return ref.conv2d_act_factor(x, *args)

        cp = None  # CuPy has no conv patch covariance; unfold + matmul is the torch column
        yield Case(
            "conv2d_act_factor",
            f"{label} k{k} s{s}: D={c * k * k}",
            ours,
            theirs,
            cp,
            _errs(ours, theirs, lambda x=x, args=args: ref.conv2d_act_factor(x.double().cpu(), *args)),
            reps=3,
        )


def eigh_cases(device, quick):
    groups = [("R20 all A+G", [i for _, i in resnet20_grad_shapes()] + [o for o, _ in resnet20_grad_shapes()])]
    if not quick:
        groups += [("R50 all A+G", resnet50_factor_sizes())]
    for label, sizes in groups:
        factors = [spd(n, seed=i, device=device) for i, n in enumerate(sizes)]

        def ours(fs=factors):
            return ops.batched_eigh(fs)[0]

        def theirs(fs=factors):
            return ref.batched_eigh(fs)[0]

        cp = None
        if cupy is not None and device == "cuda":

            def cp(fs=factors):
                return [cupy.linalg.eigh(_to_cupy(f))[0] for f in fs]

        def check(fs=factors):
            worst_ours = worst_torch = 0.0
            for f, d_ours, d_torch in zip(fs, ours(fs), theirs(fs)):
                exact = torch.linalg.eigvalsh(f.double().cpu())
                worst_ours = max(worst_ours, rel_err(d_ours, exact))
                worst_torch = max(worst_torch, rel_err(d_torch, exact))
            return worst_ours, worst_torch

        yield Case("batched_eigh", f"{label} ({len(sizes)} factors, max {max(sizes)})", ours, theirs, cp, check, reps=3)


def _layers(shapes, device):
    grads, qa, da, qg, dg = [], [], [], [], []
    for i, (out, inp) in enumerate(shapes):
        grads.append(rand(out, inp, seed=i, device=device))
        qa.append(torch.linalg.qr(rand(inp, inp, seed=1000 + i, device=device))[0])
        qg.append(torch.linalg.qr(rand(out, out, seed=2000 + i, device=device))[0])
        da.append(rand(inp, seed=3000 + i, device=device).abs())
        dg.append(rand(out, seed=4000 + i, device=device).abs())
    return grads, qa, da, qg, dg


def precondition_cases(device, quick):
    groups = [("R20 all layers", resnet20_grad_shapes())]
    if not quick:
        groups += [("R50 all layers", resnet50_grad_shapes())]
    for label, shapes in groups:
        layers = _layers(shapes, device)

        def ours(L=layers):
            return ops.eigen_precondition(*L, 0.003)

        def theirs(L=layers):
            return ref.eigen_precondition(*L, 0.003)

        cp = None
        if cupy is not None and device == "cuda":

            def cp(L=layers):
                out = []
                for g, qa, da, qg, dg in zip(*[[_to_cupy(t) for t in lst] for lst in L]):
                    v = qg.T @ g @ qa
                    v /= cupy.outer(dg, da) + 0.003
                    out.append(qg @ v @ qa.T)
                return out

        def check(L=layers):
            exact = ref.eigen_precondition(*[[t.double().cpu() for t in lst] for lst in L], 0.003)
            return (
                max(rel_err(a, e) for a, e in zip(ours(L), exact)),
                max(rel_err(a, e) for a, e in zip(theirs(L), exact)),
            )

        yield Case("eigen_precondition", f"{label} ({len(shapes)} layers)", ours, theirs, cp, check, reps=5)


def comm_cases(device, quick):
    shapes = resnet20_grad_shapes() if quick else resnet50_grad_shapes()
    label = "R20" if quick else "R50"
    sizes = [i for _, i in shapes] + [o for o, _ in shapes]
    mats = [
        spd(n, seed=i, device=device) if n <= 256 else rand(n, n, seed=i, device=device) for i, n in enumerate(sizes)
    ]
    packed = ops.pack_triu(mats)
    targets = [torch.empty_like(m) for m in mats]
    yield Case(
        "pack_triu",
        f"{label} A+G ({len(sizes)} factors, {packed.numel()} entries)",
        lambda: ops.pack_triu(mats),
        lambda: ref.pack_triu(mats),
        None,
        lambda: (
            rel_err(ops.pack_triu(mats), ref.pack_triu([m.double().cpu() for m in mats])),
            rel_err(ref.pack_triu(mats), ref.pack_triu([m.double().cpu() for m in mats])),
        ),
    )

    def unpack_ours():
        ops.unpack_triu_(packed, targets, 0.5)
        return targets

    yield Case(
        "unpack_triu_",
        f"{label} A+G ({len(sizes)} factors)",
        unpack_ours,
        lambda: ref.unpack_triu(packed, mats, 0.5),
        None,
        lambda: (
            max(
                rel_err(a, e)
                for a, e in zip(
                    unpack_ours(), ref.unpack_triu(packed.double().cpu(), [m.double().cpu() for m in mats], 0.5)
                )
            ),
            0.0,
        ),
    )
    precond = [rand(o, i, seed=i, device=device) for o, i in shapes]
    grads = [rand(o, i, seed=o + 7, device=device) for o, i in shapes]

    def kl_torch():
        return sum((p * g).sum() for p, g in zip(precond, grads))

    yield Case(
        "kl_clip_sum",
        f"{label} grads ({len(shapes)} layers)",
        lambda: ops.kl_clip_sum(precond, grads),
        kl_torch,
        (lambda: sum(cupy.vdot(_to_cupy(p), _to_cupy(g)) for p, g in zip(precond, grads)))
        if cupy is not None and device == "cuda"
        else None,
        lambda: (
            rel_err(
                ops.kl_clip_sum(precond, grads),
                ref.kl_clip_sum([p.double().cpu() for p in precond], [g.double().cpu() for g in grads]),
            ),
            rel_err(
                kl_torch(), ref.kl_clip_sum([p.double().cpu() for p in precond], [g.double().cpu() for g in grads])
            ),
        ),
    )


# ------------------------------------------------- the K-FAC iteration ----


class Bottleneck(nn.Module):
    def __init__(self, c_in, mid, stride):
        super().__init__()
        out = 4 * mid
        self.body = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1 or c_in != out
            else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def resnet50(num_classes=1000):
    """ResNet-50 (torchvision v1.5 layout) without torchvision, which the GPU hosts may lack."""
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(Bottleneck(c_in, mid, stride if b == 0 else 1))
            c_in = 4 * mid
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, num_classes)]
    return nn.Sequential(*layers)


def _plain_ops():
    """kfac_ext.ops replaced by plain torch compositions (the references)."""

    def cov_update_(factor, x, alpha, beta, append_ones=False):
        factor.copy_(ref.cov_update(factor, x, alpha, beta, append_ones))

    def channel_cov_update_(factor, x, alpha, beta):
        factor.copy_(ref.channel_cov_update(factor, x, alpha, beta))

    def kl_clip_sum(precond, grads):
        return sum((p.double() * g.double()).sum() for p, g in zip(precond, grads))

    return {
        "cov_update_": cov_update_,
        "channel_cov_update_": channel_cov_update_,
        "conv2d_act_factor": ref.conv2d_act_factor,
        "batched_eigh": ref.batched_eigh,
        "eigen_precondition": ref.eigen_precondition,
        "kl_clip_sum": kl_clip_sum,
    }


@contextlib.contextmanager
def _patched(replacements):
    saved = {name: getattr(ops, name) for name in replacements}
    try:
        for name, fn in replacements.items():
            setattr(ops, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(ops, name, fn)


def step_cases(device, quick):
    models = [("ResNet-20 CIFAR, batch 128", lambda: resnet_cifar(20), (128, 3, 32, 32), 10)]
    if not quick:
        models.append(("ResNet-50 ImageNet, batch 32", resnet50, (32, 3, 224, 224), 1000))
    for label, build, shape, classes in models:
        torch.manual_seed(0)
        model = build().to(device)
        sgd_model = copy.deepcopy(model)  # no hooks: the iteration K-FAC adds to
        x = torch.randn(*shape, device=device)
        y = torch.randint(0, classes, (shape[0],), device=device)
        pre = kfac_ext.KFACPreconditioner(model, factor_update_steps=1, inv_update_steps=1)
        loss_fn = nn.CrossEntropyLoss()

        def sgd_iteration():
            sgd_model.zero_grad(set_to_none=True)
            loss_fn(sgd_model(x), y).backward()
            return [p.grad for p in sgd_model.parameters() if p.grad is not None]

        def iteration():
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            pre.step()
            return [p.grad for p in model.parameters() if p.grad is not None]

        def plain_iteration():
            with _patched(_plain_ops()):
                return iteration()

        def check(model=model):
            # Fresh copies from one state: one iteration each, ours vs plain.
            grads = []
            for patch in ({}, _plain_ops()):
                m = copy.deepcopy(model)
                p = kfac_ext.KFACPreconditioner(m, factor_update_steps=1, inv_update_steps=1)
                with _patched(patch):
                    m.zero_grad(set_to_none=True)
                    loss_fn(m(x), y).backward()
                    p.step()
                grads.append([q.grad.double() for q in m.parameters() if q.grad is not None])
            return max(rel_err(a, b) for a, b in zip(*grads)), 0.0

        yield Case(
            "K-FAC iteration (fwd+bwd+step)",
            f"{label}, factors+eigh every step",
            iteration,
            plain_iteration,
            None,
            check,
            reps=3,
            baseline=sgd_iteration,
        )


# --------------------------------------------------------------- timing ----


def _timer(device):
    if device == "cuda":

        def time_it(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            if cupy is not None:
                cupy.cuda.Device().synchronize()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
    else:

        def time_it(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    return time_it


def measure(case, time_it):
    """Best seconds of each side over case.reps interleaved runs (after a warm-up)."""
    sides = [case.ours, case.torch] + ([case.cupy] if case.cupy else [])
    sides += [case.baseline] if case.baseline else []
    for fn in sides:
        fn()
    best = [float("inf")] * len(sides)
    for _ in range(case.reps):
        for k, fn in enumerate(sides):
            best[k] = min(best[k], time_it(fn))
    return best


def _machine(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return describe_machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="ResNet-20 shapes only")
    parser.add_argument("--no-step", action="store_true", help="skip the K-FAC iteration rows")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        # Not an error: `make bench` runs every table, GPU or not.
        print(
            "table_gpu: skipped: no CUDA device (on a GPU host: bash benchmarks/gpu_check.sh; "
            "here: --device cpu --quick is a smoke test of the script)"
        )
        return 0
    makers = [cov_cases, channel_cases, conv_cases, eigh_cases, precondition_cases, comm_cases]
    if not args.no_step:
        makers.append(step_cases)
    time_it = _timer(args.device)
    rows = []
    for make in makers:
        for case in make(args.device, args.quick):
            times = measure(case, time_it)
            errs = case.check() if case.check else None
            rows.append((case, times, errs))
            print(f"  measured {case.op}: {case.shape}", file=sys.stderr)

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"{now}; {_machine(args.device)}; torch {torch.__version__}"
        f" (CUDA {torch.version.cuda}); CuPy {cupy.__version__ if cupy else 'absent'}"
    )
    print(f"command: python benchmarks/table_gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print()
    print("| op | shape | ours ms | torch ms | × torch | CuPy ms | × CuPy | err ours | err torch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for case, times, errs in rows:
        ours, theirs = times[0], times[1]
        cp = times[2] if case.cupy else None
        cp_ms = f"{cp * 1e3:.3f}" if cp else "-"
        cp_x = f"{cp / ours:.2f}" if cp else "-"
        e_ours, e_torch = (f"{errs[0]:.1e}", f"{errs[1]:.1e}") if errs else ("-", "-")
        print(
            f"| {case.op} | {case.shape} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | "
            f"{theirs / ours:.2f} | {cp_ms} | {cp_x} | {e_ours} | {e_torch} |"
        )
    print()
    print(
        "× = their time / ours (> 1: ours faster). err = largest relative error against the "
        "float64 CPU reference (eigh: eigenvalues; K-FAC iteration: preconditioned gradients "
        "of one iteration from the same state, ours vs the plain-torch iteration)."
    )
    for case, times, _ in rows:
        if case.baseline:
            base = times[-1]
            ours, theirs = times[0] - base, times[1] - base
            print(
                f"\nK-FAC overhead over a plain fwd+bwd ({base * 1e3:.1f} ms), {case.shape}: "
                f"ours {ours * 1e3:.1f} ms, plain torch {theirs * 1e3:.1f} ms, "
                f"× torch {theirs / ours:.2f}"
                if ours > 0
                else f"\nK-FAC overhead, {case.shape}: not measurable (ours ≤ baseline)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
