"""An alpha-beta model of distributed K-FAC's step time (KAISA strategies).

Per worker and per step, amortised over the update intervals, the K-FAC work
on top of an SGD step is:

- factor all-reduce (every ``factor_update_steps``): the packed upper
  triangles, sum n(n+1)/2 elements, in buckets of ``bucket_cap_mb``; a ring
  all-reduce of S bytes on N workers costs 2(N-1)alpha + 2(N-1)/N * S/B per
  bucket;
- eigendecompositions (every ``inv_update_steps``): the slowest worker's
  share under the same assignment the library uses (``WorkPlan``), timed by
  a fit ``t(n) = c3 n^3 + c0`` to ``torch.linalg.eigh`` measured here;
- eigenbasis broadcast (every ``inv_update_steps``) inside a grad-worker block
  of g ranks: the (Q, d) a worker receives, log2(g) alpha per broadcast;
- preconditioning (every step): 4 GEMMs, 2 g a (g + a) flop per layer the
  worker is a grad worker of, at the measured GEMM rate;
- preconditioned-gradient broadcast (every step, when there are N/g > 1
  blocks): the P of every layer outside the worker's block, log2(N/g) alpha
  each.

Network defaults (``NETWORKS``): 100 Gb/s InfiniBand, alpha = 5 us,
B = 12.5 GB/s; NVLink (NVSwitch fabric, A100-class), alpha = 3 us, B = 300 GB/s
per direction. Both are idealised: no congestion, concurrent broadcasts from
different sources do not share links. Compute rates are measured on this
machine (a CPU here: the *ratios* between strategies are the product).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

import torch

from kfac_ext.distributed import GradWorkerLayout, WorkPlan

__all__ = ["Network", "NETWORKS", "KernelModel", "measure_kernels", "resnet50_factor_shapes",
           "ring_allreduce_time", "broadcast_time", "predict_step", "StepPrediction",
           "strategy_fractions"]


@dataclasses.dataclass(frozen=True)
class Network:
    name: str
    alpha: float      # seconds per message (latency)
    bandwidth: float  # bytes per second per direction


NETWORKS = {
    "ib100": Network("InfiniBand 100 Gb/s", alpha=5e-6, bandwidth=12.5e9),
    "nvlink": Network("NVLink (NVSwitch)", alpha=3e-6, bandwidth=300e9),
}


def ring_allreduce_time(nbytes: float, workers: int, net: Network) -> float:
    if workers <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (workers - 1) * net.alpha + 2 * (workers - 1) / workers * nbytes / net.bandwidth


def broadcast_time(nbytes: float, workers: int, net: Network) -> float:
    """Pipelined tree broadcast: log2(P) latencies, the payload once at link speed."""
    if workers <= 1 or nbytes <= 0:
        return 0.0
    return math.ceil(math.log2(workers)) * net.alpha + nbytes / net.bandwidth


def resnet50_factor_shapes(num_classes: int = 1000) -> list[tuple[str, int, int]]:
    """(name, dim_A, dim_G) of every Conv2d/Linear of torchvision's ResNet-50 (convs bias-free)."""
    layers = [("conv1", 3 * 7 * 7, 64)]
    in_ch = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            layers += [(f"{p}.conv1", in_ch, width), (f"{p}.conv2", width * 9, width),
                       (f"{p}.conv3", width, width * 4)]
            if b == 0:
                layers.append((f"{p}.downsample.0", in_ch, width * 4))
            in_ch = width * 4
    layers.append(("fc", 2048 + 1, num_classes))
    return layers


@dataclasses.dataclass(frozen=True)
class KernelModel:
    """Measured compute rates: eigh(n) = c3 n^3 + c0 seconds; GEMMs at gemm_flops_per_s."""
    eigh_c3: float
    eigh_c0: float
    gemm_flops_per_s: float
    dtype_bytes: int = 4

    def eigh_time(self, n: int) -> float:
        return self.eigh_c3 * n ** 3 + self.eigh_c0

    def precondition_time(self, dim_a: int, dim_g: int) -> float:
        return 2.0 * dim_g * dim_a * (dim_g + dim_a) / self.gemm_flops_per_s


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_kernels(sizes: Sequence[int] = (64, 128, 256, 512), repeats: int = 2,
                    dtype=torch.float32) -> tuple[KernelModel, list[tuple[int, float]]]:
    """Time eigh at ``sizes`` and one GEMM; least-squares fit of c3, c0 (c0 >= 0)."""
    gen = torch.Generator().manual_seed(0)
    samples = []
    for n in sizes:
        x = torch.randn(2 * n, n, generator=gen, dtype=dtype)
        f = x.T @ x / (2 * n)
        torch.linalg.eigh(f)  # warm-up (LAPACK workspace queries, thread start)
        samples.append((n, _best_time(lambda: torch.linalg.eigh(f), repeats)))
    # fit t = c3 n^3 + c0 by least squares on relative error (weights 1/t)
    a = torch.tensor([[n ** 3 / t, 1.0 / t] for n, t in samples], dtype=torch.float64)
    b = torch.ones(len(samples), dtype=torch.float64)
    c3, c0 = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1).tolist()
    if c0 < 0 or c3 <= 0:  # degenerate fit on a noisy machine: pure n^3 through the largest size
        n, t = samples[-1]
        c3, c0 = t / n ** 3, 0.0
    m = 512
    u = torch.randn(m, m, generator=gen, dtype=dtype)
    u @ u
    gemm = _best_time(lambda: u @ u, max(repeats, 3))
    elem = torch.empty((), dtype=dtype).element_size()
    return KernelModel(c3, c0, 2.0 * m ** 3 / gemm, elem), samples


@dataclasses.dataclass(frozen=True)
class StepPrediction:
    workers: int
    strategy: str
    grad_workers: int
    factor_comm: float
    eigen_compute: float
    eigen_comm: float
    precond_compute: float
    grad_comm: float
    bytes_per_step: float  # bytes one worker receives per step, amortised

    @property
    def compute(self) -> float:
        return self.eigen_compute + self.precond_compute

    @property
    def comm(self) -> float:
        return self.factor_comm + self.eigen_comm + self.grad_comm

    @property
    def total(self) -> float:
        return self.compute + self.comm


def strategy_fractions(workers: int) -> dict[str, float]:
    """COMM-OPT (f=1), HYBRID-OPT (g = the power of two nearest sqrt(N)), MEM-OPT (f=1/N)."""
    g = 2 ** round(math.log2(math.sqrt(workers)))
    out = {"COMM-OPT": 1.0, "MEM-OPT": 1.0 / workers}
    if 1 < g < workers:
        out["HYBRID-OPT"] = g / workers
    return out


def predict_step(shapes: Sequence[tuple[str, int, int]], workers: int, fraction: float,
                 kernels: KernelModel, net: Network, *, factor_update_steps: int = 10,
                 inv_update_steps: int = 100, bucket_cap_mb: float = 25.0,
                 colocate_factors: bool = True) -> StepPrediction:
    """Amortised per-step K-FAC time of the slowest worker, split into compute and comm."""
    dims = [(a, g) for _, a, g in shapes]
    layout = GradWorkerLayout(workers, 0, fraction, create_groups=False)
    plan = WorkPlan(dims, layout, colocate_factors=colocate_factors, method="lpt")
    eb = kernels.dtype_bytes

    packed = sum(n * (n + 1) // 2 for a, g in dims for n in (a, g)) * eb
    cap = bucket_cap_mb * 1024 * 1024
    n_buckets = max(1, math.ceil(packed / cap))
    factor_comm = sum(ring_allreduce_time(min(cap, packed - k * cap), workers, net)
                      for k in range(n_buckets))

    eig = [0.0] * workers
    for (a, g), w in zip(dims, plan.layers):
        eig[w.a_owner] += kernels.eigh_time(a)
        eig[w.g_owner] += kernels.eigh_time(g)
    eigen_compute = max(eig)

    # Every rank is alike up to the block it sits in: evaluate the busiest block.
    g_workers = layout.grad_workers
    eigen_comm = grad_comm = precond = 0.0
    recv_bytes = 0.0
    for block in range(layout.n_blocks):
        mine = [i for i, w in enumerate(plan.layers) if w.block == block]
        eig_bytes = sum((n * n + n) * eb for i in mine for n in dims[i])
        ec = (broadcast_time(eig_bytes, g_workers, net) + 2 * len(mine) * net.alpha
              if g_workers > 1 else 0.0)
        others = [i for i in range(len(dims)) if plan.layers[i].block != block]
        p_bytes = sum(dims[i][0] * dims[i][1] * eb for i in others)
        gc = (broadcast_time(p_bytes, layout.n_blocks, net) + len(others) * net.alpha
              if layout.n_blocks > 1 else 0.0)
        pc = sum(kernels.precondition_time(*dims[i]) for i in mine)
        if ec / inv_update_steps + gc + pc > eigen_comm / inv_update_steps + grad_comm + precond:
            eigen_comm, grad_comm, precond = ec, gc, pc
            recv_bytes = (eig_bytes if g_workers > 1 else 0.0) / inv_update_steps + p_bytes
    recv_bytes += 2 * (workers - 1) / workers * packed / factor_update_steps
    return StepPrediction(workers, layout.strategy, g_workers,
                          factor_comm / factor_update_steps, eigen_compute / inv_update_steps,
                          eigen_comm / inv_update_steps, precond, grad_comm, recv_bytes)
