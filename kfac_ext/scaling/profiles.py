"""Device profiles: the rates the step model turns work into time.

A profile holds achieved rates, not peaks: dense FLOPs (convolutions, GEMMs) at
``flops_per_s``; a symmetric eigendecomposition of an n x n factor at
``eigh_latency_s + 9 n^3 / eigh_flops_per_s`` (``EIGH_FLOPS_PER_N3``: tridiagonal
reduction, divide and conquer and back-transformation, about 9 n^3 flops);
``memory_bytes`` per device. ``PEAKS`` holds the datasheet figures of three GPUs.

Where profiles come from: ``kfac_ext.scaling.calibrate.gpu_profile`` (a datasheet
peak times measured efficiencies; the V100 calibrated on a published timing),
``kfac_ext.scaling.measure.measure_profile`` (this machine or a GPU, timed), and
``from_json`` (a profile saved by ``to_json``, e.g. by
``benchmarks/table_scaling_profile.py --out``, which ``benchmarks/gpu_check.sh`` runs).
"""

from __future__ import annotations

import dataclasses
import json

__all__ = ["DeviceProfile", "PEAKS", "EIGH_FLOPS_PER_N3", "from_json", "to_json"]

EIGH_FLOPS_PER_N3 = 9.0


@dataclasses.dataclass(frozen=True)
class Peak:
    fp32_flops_per_s: float
    memory_bytes: float
    source: str


# FP32 peak = FP32 cores x 2 (fused multiply-add) x boost clock, as in each datasheet.
PEAKS = {
    "v100": Peak(
        15.7e12,
        16e9,
        "NVIDIA Tesla V100 SXM2 datasheet: 5120 FP32 cores, 1530 MHz "
        "boost, 15.7 TFLOP/s FP32; 16 GB HBM2 (Longhorn's V100s, SC20)",
    ),
    "a100": Peak(
        19.5e12,
        80e9,
        "NVIDIA A100 SXM4 datasheet: 6912 FP32 cores, 1410 MHz boost, "
        "19.5 TFLOP/s FP32 (156 TF32 tensor, not used: torch's default "
        "allow_tf32=False for matmul); 80 GB HBM2e",
    ),
    "h100": Peak(
        66.9e12,
        80e9,
        "NVIDIA H100 SXM5 datasheet: 16896 FP32 cores, 1980 MHz boost, "
        "67 TFLOP/s FP32 (495 dense TF32 tensor, not used); 80 GB HBM3",
    ),
}


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """A device's rates: dense FLOP/s, eigendecomposition FLOP/s and latency per call, memory."""

    name: str
    flops_per_s: float
    eigh_flops_per_s: float
    eigh_latency_s: float = 0.0
    memory_bytes: float = float("inf")
    source: str = ""

    def __post_init__(self):
        for field in ("flops_per_s", "eigh_flops_per_s"):
            v = getattr(self, field)
            if not v > 0 or v == float("inf"):
                raise ValueError(f"DeviceProfile.{field} must be a finite rate > 0, got {v!r}")
        if not 0 <= self.eigh_latency_s < float("inf"):
            raise ValueError(f"DeviceProfile.eigh_latency_s must be finite seconds >= 0, got {self.eigh_latency_s!r}")
        if not self.memory_bytes > 0:
            raise ValueError(f"DeviceProfile.memory_bytes must be > 0, got {self.memory_bytes!r}")

    def compute_time(self, flops: float) -> float:
        return flops / self.flops_per_s

    def eigh_time(self, n: int) -> float:
        return self.eigh_latency_s + EIGH_FLOPS_PER_N3 * float(n) ** 3 / self.eigh_flops_per_s


def to_json(profile: DeviceProfile, path: str, **extra) -> None:
    """Write ``profile`` (and ``extra`` keys) as JSON; an unbounded memory is written null."""
    data = dataclasses.asdict(profile)
    if data["memory_bytes"] == float("inf"):
        data["memory_bytes"] = None
    with open(path, "w") as f:
        json.dump({**data, **extra}, f, indent=1, allow_nan=False)


def from_json(path: str) -> DeviceProfile:
    """A profile saved by ``to_json`` (extra keys, such as the raw samples, are ignored)."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile is a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(DeviceProfile)}
    missing = {"name", "flops_per_s", "eigh_flops_per_s"} - data.keys()
    if missing:
        raise ValueError(f"{path}: the profile lacks {sorted(missing)}")
    return DeviceProfile(**{k: v for k, v in data.items() if k in names and v is not None})
