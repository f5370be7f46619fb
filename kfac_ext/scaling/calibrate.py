"""GPU profiles from datasheet peaks, and the V100's calibration on one published row.

The starting point is what this project measured on a GPU (one H200, torch 2.11,
2026-11-28; benchmarks/RESULTS.md "GPU" and docs/results/2026-11-archive.md):
- dense work at 45 % of the FP32 peak: ``eigen_precondition`` of ResNet-50's 54
  layers (312 GFLOP) in 10.47 ms and ``conv2d_act_factor`` of its 64-channel 3x3
  layer (66.6 GFLOP) in 2.19 ms are 29.8 and 30.4 TFLOP/s of 66.9;
- ``torch.linalg.eigh`` at 10 % of it: n = 4608 in 127.9 ms is 9 n^3 / t = 6.9 TFLOP/s;
- 0.95 ms per eigh call, all latency: 12 calls at n = 64 took 11.44 ms.

``gpu_profile(name)`` applies those fractions to another GPU's peak. ``calibrate``
scales both rates by one factor k so that the model's K-FAC overhead matches one
published row, holding the row's software stack's latency per eigendecomposition
fixed (``SYMEIG_2020_LATENCY_S``, a published measurement; without one the H200's
latency over k), and takes the rest of that row's SGD step, beyond the FLOPs and the
gradient all-reduce and the host work the model counts (``HOST_2020``), as the run's
host time (input pipeline). Two numbers from one row: nothing else is fitted.
"""

from __future__ import annotations

import dataclasses

from kfac_ext.scaling.network import Network
from kfac_ext.scaling.profiles import PEAKS, DeviceProfile
from kfac_ext.scaling.published import Row
from kfac_ext.scaling.step import HostCost, Intervals, predict
from kfac_ext.scaling.workload import Workload

__all__ = [
    "MEASURED",
    "SYMEIG_2020_LATENCY_S",
    "gpu_profile",
    "Calibration",
    "calibrate",
    "KFAC_LW",
    "HOST_2020",
    "LAUNCH_LATENCY_V100_S",
    "PYTORCH_OP_OVERHEAD_2020_S",
    "HOROVOD_CYCLE_2020_S",
    "HOROVOD_POLL_2020_S",
    "V100_CALIBRATION",
    "CIFAR_INPUT_S",
    "CIFAR_STRAGGLER_S",
    "HOROVOD_HOOK_PY_S",
    "HOROVOD_FUSION_COPY_2020_S",
    "FUSION_COPY_FIGURES_S",
]

# Fractions of the FP32 peak measured on an H200 (module docstring).
MEASURED = {"dense": 0.45, "eigh": 0.103, "eigh_latency_s": 0.95e-3}

# The latency of one eigendecomposition call in the stack the published rows ran
# (2020: torch.symeig on CUDA, which went through MAGMA's syevd, a hybrid CPU/GPU
# routine; pytorch/pytorch#4634). Measured, not fitted: pytorch/pytorch#10172
# (2018-08, gpleiss) times `symeig` of one 32x32 CUDA matrix at 19.1 ms +- 0.84 ms
# per call (%timeit, 7 runs x 100 loops), against 40.8 us on the CPU. The GPU is not
# named there; the one other figure found, #22573 (2019-07, torch 1.2, GTX TITAN X),
# is 0.9 s for one batched call on 500 2x2 matrices, 1.8 ms per matrix inside one call
# (a loop of MAGMA calls sharing one copy). kfac-pytorch of 2020 called symeig once
# per factor, which is #10172's case. It is a property of that software stack, not of
# the V100's rates, so k does not scale it (docs/distributed.md, validation).
SYMEIG_2020_LATENCY_S = 19.1e-3

# Host time per op of the published runs' stack (PyTorch 1.x on a V100), two sourced figures:
# - LAUNCH_LATENCY_V100_S: NVIDIA's developer blog "Understanding the Visualization of
#   Overhead and Latency in NVIDIA Nsight Systems" traces one PyTorch element-wise op on a
#   Tesla V100-SXM: about 20 us from the start of the launch API call to the start of the
#   kernel. Used per op: a ResNet-32 kernel at batch 128 is shorter than that, so each op
#   of the dependent chain waits for its own launch.
# - PYTORCH_OP_OVERHEAD_2020_S: pytorch/pytorch#41383 (2020-07) times `y = 2 * x` on a
#   one-element CPU tensor with requires_grad at 6.8 s per million, ~7 us per op (5 us
#   without autograd): the framework's own per-op cost, no launch. A lower figure.
# Neither is fitted; benchmarks/table_scaling_validation.py shows both, and this machine's
# measured per-op cost (kfac_ext.scaling.measure.measure_op_overhead).
LAUNCH_LATENCY_V100_S = 20e-6
PYTORCH_OP_OVERHEAD_2020_S = 7e-6

# Horovod as the published runs had it: kfac-lw's docs/longhorn_gpu_install.md installs
# horovod==0.19.0 (2020-01). Its source (horovod/horovod at v0.19.0) sets what a blocking
# collective costs the training loop:
# - common/operations.cc, RunLoopOnce: the background thread starts a cycle (negotiate,
#   then run what every rank has enqueued) no sooner than HOROVOD_CYCLE_TIME after the
#   previous cycle's start, 5 ms by default (BackgroundThreadLoop: SetCycleTimeMs(5);
#   horovod#2468, v0.21.0, 2020-12, made it 1 ms);
# - torch/mpi_ops_v2.cc, WaitAndClear (behind hvd.allreduce and synchronize(handle)):
#   the caller polls its handle and sleeps 1 ms between polls.
# So a blocking collective enqueued at an unknown phase of the cycle waits half a cycle
# for the next one and is noticed half a poll late: 2.5 + 0.5 ms on average (the tiny
# metric all-reduce's own run time left out). One enqueued as soon as the previous one
# returned (that one ran in cycle k, so the next starts a whole cycle after it) returns a
# whole cycle after its enqueue on average: it waits C - (run + poll residual), then runs
# and is noticed a poll residual late, the two residuals alike in distribution
# (tests/app/test_scaling_model.py simulates the loop and checks both).
# The published scripts' loop (examples/pytorch_cifar10_resnet.py as recorded, and the
# ImageNet one) updates two Metrics in a row, each hvd.allreduce of a CPU scalar: the
# first after other work, the second chained. On N > 1, hvd.DistributedOptimizer (hooks
# only when size() > 1) blocks in step() on the gradients, after backward (unknown phase),
# and v0.19.0 averages in the completion callback: torch/mpi_ops_v2.cc DoAllreduce's
# callback runs output.div_(size) before marking each handle done, one gradient after
# another on the finalizer thread (the caller's p.grad.set_ overlaps it): one op per
# gradient tensor in series with the step.
HOROVOD_CYCLE_2020_S = 5e-3
HOROVOD_POLL_2020_S = 1e-3

# The Python part of v0.19.0's gradient hook (horovod/torch/__init__.py _make_hook and
# _allreduce_grad_async, horovod/torch/mpi_ops.py allreduce_async_, _allreduce_async,
# _check_function): fired once per parameter tensor during backward, on N > 1, on the
# thread that issues backward's ops. Measured on this CPU, not fitted:
# `python benchmarks/table_scaling_hook_check.py` (measure.hook_cost_estimate: a backward
# over 95 one-element leaves with and without the hook's Python, thread CPU time, quiet
# windows): five runs at load 8.4-10.5 (2026-12-07 23:00 UTC), 8.4-12.0 us, median 11.7
# (runs 1 and 5 not confirmed; the three confirmed 8.4, 11.8, 12.0). Today's Python and
# torch on x86, and without the C++ side (DoAllreduce: handle, CUDA event, name, enqueue
# under a lock): a lower bound. Hidden under the FLOPs where forward + backward are not
# host-bound (ResNet-50 at batch 32); on ResNet-32's 95 tensors, 1.1 ms on 4 GPUs.
HOROVOD_HOOK_PY_S = 11.7e-6

# v0.19.0's fusion-buffer copies: with more than one gradient in a response, the background
# thread issues one cudaMemcpyAsync (device to device) per gradient into the fusion buffer,
# the ncclAllReduce, and one per gradient back out (common/ops/nccl_operations.cc
# NCCLAllreduce::Execute, cuda_operations.cc MemcpyEntryIn/OutFusionBuffer; horovod#2435,
# v0.21, 2020-11, replaced them by one batched kernel "to reduce latency"), 190 calls for
# ResNet-32's 95 tensors (HostCost.fusion_copy_time). No per-call host cost of that call on
# the runs' stack (CUDA 10, V100, POWER9, 2020) was found, so the model carries 0. Figures
# found (2026-12-08, h27i), none the runs' stack, in FUSION_COPY_FIGURES_S: DualPath
# (arXiv 2602.21548, 2026, sec. 5.2): "submitting a single copy operation via
# cudaMemcpyAsync incurs a latency overhead of approximately 5-7 us" (many small
# KV-cache chunks, a 2026 stack); an nvprof API summary of a PyTorch run on a Volta GPU
# (ryujaehun/pytorch-gpu-benchmark#6, 2019-12, profiler on): cudaMemcpyAsync 3.4 us at
# least (its 69.6 us mean mixes in blocking host copies), cudaMemsetAsync (asynchronous,
# no host data, the nearest kind of call) 12.7 us on average, cudaLaunchKernel 10.4 us; a
# ROCm trace (ROCm/tensorflow-upstream#664, 2019) of back-to-back hipMemcpyDtoDAsync calls
# 11.5-12.8 thousand stamp units apart (the unit unstated). At the largest, 12.7 us, the
# 4-GPU CIFAR step would gain 2.2 ms and still be 0.5 ms short of 1/1.5 of the published
# (benchmarks/table_scaling_validation.py).
HOROVOD_FUSION_COPY_2020_S = 0.0
FUSION_COPY_FIGURES_S = {
    "DualPath 2026, low": 5e-6,
    "DualPath 2026, high": 7e-6,
    "Volta nvprof 2019, cudaLaunchKernel mean": 10.4e-6,
    "Volta nvprof 2019, cudaMemsetAsync mean": 12.7e-6,
}

HOST_2020 = HostCost(
    per_op_s=LAUNCH_LATENCY_V100_S,
    optimizer_ops_per_tensor=6,
    sync_s=HOROVOD_CYCLE_2020_S / 2 + HOROVOD_POLL_2020_S / 2,
    syncs=1,
    chained_sync_s=HOROVOD_CYCLE_2020_S,
    chained_syncs=1,
    grad_ops_per_tensor=1,
    grad_hook_s=HOROVOD_HOOK_PY_S,
    fusion_copy_s=HOROVOD_FUSION_COPY_2020_S,
    source="20 us per op (NVIDIA Nsight Systems blog, V100-SXM launch latency); Horovod 0.19.0: "
    "5 ms cycle, 1 ms poll: 3 ms for a blocking collective after other work (a metric; the "
    "gradients on N > 1), 5 ms for the metric right after it; on N > 1 one div_ per gradient and "
    "its hook's Python (measured on this CPU, benchmarks/table_scaling_hook_check.py)",
)

# The CIFAR rows' input pipeline: the published script (gpauloski/kfac_pytorch
# examples/pytorch_cifar10_resnet.py at 493f693, 2020-03-02, the commit that records the
# CIFAR rows) loads every batch in the training process (DataLoader num_workers=0,
# torch.set_num_threads(1)): 128 PIL images padded, cropped, flipped, made tensors and
# normalised, in turn with the step, which ends blocked on the GPU (the metrics' .cpu()),
# and rank 0 redraws a tqdm bar every step. Measured on this CPU, not Longhorn's POWER9:
# `python benchmarks/table_scaling_input_check.py` (five runs of 300 iterations, thread CPU
# time, min of medians of 3; 2026-12-07 17:02 UTC, load 5.6-6.2): 22.0-25.3 ms per
# iteration, median of the runs 23.6 ms (the loaded medians 30-35 ms). A measurement, not
# a fit; the ImageNet runs loaded with 4 worker processes (overlapped with the step), so
# their input time is inside the fitted host time.
CIFAR_INPUT_S = 23.6e-3

# On N > 1 GPUs every rank of the CIFAR runs builds its own batch in-process, and the two
# metrics' blocking all-reduces end every step (a barrier), so a step waits for the slowest
# rank's input: E[max over N ranks] - E[rank 0] (rank 0 alone redraws the tqdm bar; the
# others still format its postfix). The term is in the model (validation.check_rows) but
# NOT measured: on this VM at load 5-10 (2026-12-07 23:05-23:20 UTC,
# `python benchmarks/table_scaling_straggler_check.py` and the same samples re-cut) the
# per-iteration distribution cannot be told from the VM's speed changes, which come at
# every time scale: divided by a local median of +-1..+-20 neighbours the relative sd
# falls 21 % -> 9 % and the 4-rank excess 5 -> 1.7 ms without levelling off; pooled quiet
# windows give 0.6-6.3 ms by window and tolerance; the one clean quiet stretch (10 pairs
# at 25.9 ms, sd 0.95 ms) gives 0.9 ms. None is a measurement of the work's own jitter, so
# 0 is kept (docs/distributed.md, validation; the validation script shows 0.9 and 4.5 ms).
CIFAR_STRAGGLER_S = {4: 0.0}

# kfac-pytorch's layer-wise K-FAC of 2020 (the published rows): factors every step,
# eigendecompositions every 10, full factors all-reduced, (Q, d) all-reduced, COMM-OPT.
KFAC_LW = {"intervals": Intervals(1, 10), "packed_factors": False, "eigen_allreduce": True}

# calibrate(resnet50-32 row, ResNet-50, ib100) gives these (with the 2020 stack's
# eigendecomposition latency and HOST_2020); tests/app/test_scaling_model.py re-fits them, so a
# change to the model that moves them fails there.
V100_CALIBRATION = {"k": 1.8341, "host_s": 0.3010}


def gpu_profile(name: str, k: float = 1.0, eigh_latency_s: float | None = None) -> DeviceProfile:
    """The measured fractions (times k) applied to the datasheet peak of ``name``; the
    eigendecomposition latency is the H200-measured one over k, or ``eigh_latency_s``
    (a software stack's own, e.g. ``SYMEIG_2020_LATENCY_S``)."""
    if name not in PEAKS:
        raise ValueError(f"profile must be one of {sorted(PEAKS)}, got {name!r}")
    if not k > 0:
        raise ValueError(f"k must be > 0, got {k!r}")
    peak = PEAKS[name]
    latency = MEASURED["eigh_latency_s"] / k if eigh_latency_s is None else eigh_latency_s
    source = peak.source
    if eigh_latency_s is not None:
        source += f"; eigendecomposition latency {eigh_latency_s * 1e3:.3g} ms per call given"
    return DeviceProfile(
        name,
        k * MEASURED["dense"] * peak.fp32_flops_per_s,
        k * MEASURED["eigh"] * peak.fp32_flops_per_s,
        latency,
        peak.memory_bytes,
        source,
    )


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A device profile fitted on one published row: its rate factor k and host time per step."""

    row: str
    k: float
    host_s: float
    profile: DeviceProfile


def _overhead(work: Workload, row: Row, profile: DeviceProfile, net: Network) -> float:
    return predict(work, row.gpus, profile, net, batch=row.batch, **KFAC_LW).kfac_overhead  # no host term in it


def calibrate(
    row: Row,
    work: Workload,
    net: Network,
    name: str = "v100",
    eigh_latency_s: float | None = SYMEIG_2020_LATENCY_S,
    host_cost: HostCost = HOST_2020,
) -> Calibration:
    """Bisect k (log scale) until the predicted K-FAC overhead is the row's (its first
    K-FAC run); then the host time that closes the SGD step. ``eigh_latency_s``: the
    latency per eigendecomposition of the row's software stack (default: 2020's
    symeig), held fixed while k moves; None scales the H200-measured one by 1/k.
    ``host_cost``: the host work the model counts (default: 2020's), taken out of the
    SGD step before the rest becomes the host time."""
    target = row.overhead_s[0]
    lo, hi = 1e-3, 1e3
    prof = lambda k: gpu_profile(name, k, eigh_latency_s)  # noqa: E731
    if not _overhead(work, row, prof(hi), net) < target < _overhead(work, row, prof(lo), net):
        raise ValueError(
            f"row {row.key}: no k in [{lo}, {hi}] reaches its overhead "
            f"{target * 1e3:.1f} ms (communication alone may exceed it)"
        )
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        if _overhead(work, row, prof(mid), net) > target:
            lo = mid
        else:
            hi = mid
    k = (lo * hi) ** 0.5
    profile = prof(k)
    step = predict(work, row.gpus, profile, net, batch=row.batch, host_cost=host_cost, **KFAC_LW)
    host = max(0.0, row.sgd_s - step.sgd)
    return Calibration(row.key, k, host, profile)
