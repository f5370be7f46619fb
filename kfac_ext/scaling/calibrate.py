"""GPU profiles from datasheet peaks, and the V100's calibration on one published row.

The starting point is what this project measured on a GPU (one H200, torch 2.11,
2026-11-28; benchmarks/RESULTS.md "GPU" and docs/results/2026-11-archive.md):
- dense work at 45 % of the FP32 peak: ``eigen_precondition`` of ResNet-50's 54
  layers (312 GFLOP) in 10.47 ms and ``conv2d_act_factor`` of its 64-channel 3x3
  layer (66.6 GFLOP) in 2.19 ms are 29.8 and 30.4 TFLOP/s of 66.9;
- ``torch.linalg.eigh`` at 10 % of it: n = 4608 in 127.9 ms is 9 n^3 / t = 6.9 TFLOP/s;
- 0.95 ms per eigh call, all latency: 12 calls at n = 64 took 11.44 ms.

``gpu_profile(name)`` applies those fractions to another GPU's peak. ``calibrate``
scales both rates by one factor k, and the latency by 1/k, so that the model's K-FAC
overhead matches one published row, and takes the rest of that row's SGD step, beyond
the FLOPs and the gradient all-reduce, as the run's host time (input pipeline,
framework). Two numbers from one row: nothing else is fitted.
"""

from __future__ import annotations

import dataclasses

from kfac_ext.scaling.network import Network
from kfac_ext.scaling.profiles import PEAKS, DeviceProfile
from kfac_ext.scaling.published import Row
from kfac_ext.scaling.step import Intervals, predict
from kfac_ext.scaling.workload import Workload

__all__ = ["MEASURED", "gpu_profile", "Calibration", "calibrate", "KFAC_LW", "V100_CALIBRATION"]

# Fractions of the FP32 peak measured on an H200 (module docstring).
MEASURED = {"dense": 0.45, "eigh": 0.103, "eigh_latency_s": 0.95e-3}

# kfac-pytorch's layer-wise K-FAC of 2020 (the published rows): factors every step,
# eigendecompositions every 10, full factors all-reduced, (Q, d) all-reduced, COMM-OPT.
KFAC_LW = {"intervals": Intervals(1, 10), "packed_factors": False, "eigen_allreduce": True}

# calibrate(resnet50-32 row, ResNet-50, ib100) gives these; tests/app/test_scaling_model.py
# re-fits them, so a change to the model that moves them fails there.
V100_CALIBRATION = {"k": 1.7965, "host_s": 0.3140}


def gpu_profile(name: str, k: float = 1.0) -> DeviceProfile:
    """The measured fractions (times k) applied to the datasheet peak of ``name``."""
    if name not in PEAKS:
        raise ValueError(f"profile must be one of {sorted(PEAKS)}, got {name!r}")
    if not k > 0:
        raise ValueError(f"k must be > 0, got {k!r}")
    peak = PEAKS[name]
    return DeviceProfile(
        name,
        k * MEASURED["dense"] * peak.fp32_flops_per_s,
        k * MEASURED["eigh"] * peak.fp32_flops_per_s,
        MEASURED["eigh_latency_s"] / k,
        peak.memory_bytes,
        peak.source,
    )


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A device profile fitted on one published row: its rate factor k and host time per step."""

    row: str
    k: float
    host_s: float
    profile: DeviceProfile


def _overhead(work: Workload, row: Row, profile: DeviceProfile, net: Network) -> float:
    return predict(work, row.gpus, profile, net, batch=row.batch, **KFAC_LW).kfac_overhead


def calibrate(row: Row, work: Workload, net: Network, name: str = "v100") -> Calibration:
    """Bisect k (log scale) until the predicted K-FAC overhead is the row's (its first
    K-FAC run); then the host time that closes the SGD step."""
    target = row.overhead_s[0]
    lo, hi = 1e-3, 1e3
    if not _overhead(work, row, gpu_profile(name, hi), net) < target < _overhead(work, row, gpu_profile(name, lo), net):
        raise ValueError(
            f"row {row.key}: no k in [{lo}, {hi}] reaches its overhead "
            f"{target * 1e3:.1f} ms (communication alone may exceed it)"
        )
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        if _overhead(work, row, gpu_profile(name, mid), net) > target:
            lo = mid
        else:
            hi = mid
    k = (lo * hi) ** 0.5
    profile = gpu_profile(name, k)
    step = predict(work, row.gpus, profile, net, batch=row.batch, **KFAC_LW)
    host = max(0.0, row.sgd_s - step.sgd)
    return Calibration(row.key, k, host, profile)
