"""The step model against a step measured on this machine (one rank, one thread).

Profiles this CPU (kfac_ext/scaling/measure.py), predicts the SGD step and the
K-FAC step with factors and eigendecompositions every step of a wide MLP
(1024-2048-2048-10, batch 256), and times both with kfac_ext's preconditioner.
The clock is the thread's CPU time (the machine is shared); min and median of the
repeats. The eigh rate is fitted on n <= 512 and extrapolated to the MLP's 2048.

    python benchmarks/table_scaling_cpu_check.py
"""

import statistics
import sys
import time

import torch
from _common import machine_line
from torch import nn

import kfac_ext
from kfac_ext.scaling import NETWORKS, Intervals, predict, workload_of
from kfac_ext.scaling.measure import measure_profile


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10))


def _times(fn, n: int) -> tuple[float, float]:
    fn()  # warm-up (and, for K-FAC, the first factors)
    out = []
    for _ in range(n):
        t0 = time.thread_time()
        fn()
        out.append(time.thread_time() - t0)
    return min(out), statistics.median(out)


def main() -> int:
    torch.set_num_threads(1)
    batch = 256
    profile = measure_profile().profile
    step = predict(workload_of(mlp, (1024,)), 1, profile, NETWORKS["ib100"], batch=batch, intervals=Intervals(1, 1))
    torch.manual_seed(0)
    model = mlp()
    x, y = torch.randn(batch, 1024), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def sgd():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    sgd_t = _times(sgd, 7)  # before the preconditioner's hooks exist
    pre = kfac_ext.KFACPreconditioner(model, factor_update_steps=1, inv_update_steps=1)

    def kfac():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        pre.step()
        opt.step()

    kfac_t = _times(kfac, 3)
    print(f"{machine_line()}; `python {' '.join(sys.argv)}`")
    print(
        f"profile: GEMM {profile.flops_per_s / 1e9:.1f} GFLOP/s, eigh "
        f"{profile.eigh_latency_s * 1e3:.2f} ms + 9n^3 at {profile.eigh_flops_per_s / 1e9:.1f}"
        " GFLOP/s (1 thread)\n"
    )
    print("| step, MLP 1024-2048-2048-10, batch 256 | predicted s | measured s (min, median) | predicted / min |")
    print("|---|---:|---:|---:|")
    for name, pred, (lo, med) in (("SGD", step.sgd, sgd_t), ("K-FAC, factors + eigh every step", step.kfac, kfac_t)):
        print(f"| {name} | {pred:.3f} | {lo:.3f}, {med:.3f} | {pred / lo:.2f} |")
    print(
        f"\nprediction's parts: factors {step.factor_compute:.3f} s, eigh "
        f"{step.eigen_compute:.3f} s, preconditioning {step.precondition:.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
