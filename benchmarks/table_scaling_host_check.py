"""The host term of the scaling model against this CPU: op count x cost per op.

For two models whose step is nearly all host work on one CPU thread (no arithmetic to
speak of), the SGD step (zero_grad, forward, sum, backward, a non-foreach SGD with
momentum and weight decay) is timed by the thread's CPU time, fastest and median of
``--repeats``, and set against ``HostCost.ops(workload)`` x this machine's eager cost per
op (``measure_op_overhead``: a multiply of a one-element tensor that requires grad):

- 32 x (Linear(8, 8), ReLU), batch 1: linear algebra and elementwise ops only;
- ResNet-32 on 8 x 8 inputs, batch 2: its 31 convolutions and 31 batch norms, whose
  host cost per call is well above an elementwise op's on a CPU.

On a CPU nothing overlaps, so a ratio near 1 says the op count times one cost per op
is the host work; above 1, the ops cost more each than the probe op. Not a GPU figure.

    python benchmarks/table_scaling_host_check.py [--repeats 31]
"""

import argparse
import os
import statistics
import sys
import time

import torch
from _common import machine_line
from torch import nn

from kfac_ext.scaling.measure import measure_op_overhead
from kfac_ext.scaling.models import resnet32_cifar
from kfac_ext.scaling.step import HostCost
from kfac_ext.scaling.workload import workload_of


def _mlp() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(32):
        layers += [nn.Linear(8, 8), nn.ReLU()]
    return nn.Sequential(*layers)


def _step_times(factory, shape, batch: int, repeats: int) -> list[float]:
    torch.manual_seed(0)
    model = factory()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=False)
    x = torch.randn(batch, *shape)

    def step():
        opt.zero_grad(set_to_none=False)
        model(x).sum().backward()
        opt.step()

    for _ in range(5):  # momentum buffers and grads exist from here on, as in training
        step()
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        step()
        times.append(time.thread_time() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{machine_line()}, load average {os.getloadavg()[0]:.1f}, 1 thread; `python {' '.join(sys.argv)}`\n")
    print("| model | ops a step | step ms: fastest | median | per op us: fastest | median | ratio (fastest) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    cases = (
        ("32 x Linear(8, 8) + ReLU, batch 1", _mlp, (8,), 1),
        ("ResNet-32, 8 x 8, batch 2", resnet32_cifar, (3, 8, 8), 2),
    )
    for name, factory, shape, batch in cases:
        ops = HostCost().ops(workload_of(factory, shape))
        times = _step_times(factory, shape, batch, args.repeats)
        fast, median = measure_op_overhead()
        print(
            f"| {name} | {ops} | {min(times) * 1e3:.2f} | {statistics.median(times) * 1e3:.2f} "
            f"| {fast * 1e6:.2f} | {median * 1e6:.2f} | {min(times) / (ops * fast):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
