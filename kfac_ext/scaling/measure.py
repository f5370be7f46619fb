"""A profile of the machine at hand, timed robustly on a busy machine.

Each size is timed ``repeats`` times, round robin over the sizes, and the median
of its faster half kept: a neighbour's burst only ever adds time, so neither one
slow sample nor a busy minute moves it much. On one CPU thread the clock is that
thread's CPU time, which leaves out the time slices other processes took. An eigendecomposition cannot take less time
for a larger matrix, so a size whose median is below that of a smaller size is
rejected as disturbed (counted in ``rejected``) before the fit of
``t(n) = latency + 9 n^3 / rate`` (least squares on relative error). The dense
rate comes the same way from repeated square GEMMs. The spreads (max/min of the
repeats) say how noisy the machine was.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Sequence

import torch

from kfac_ext.scaling.profiles import EIGH_FLOPS_PER_N3, DeviceProfile

__all__ = ["Measurement", "monotone", "fit_eigh", "measure_profile"]


@dataclasses.dataclass(frozen=True)
class Measurement:
    profile: DeviceProfile
    samples: tuple[tuple[int, float], ...]  # (n, median seconds) of the sizes kept
    rejected: tuple[int, ...]               # sizes dropped as not monotone
    gemm_spread: float                      # max/min of the GEMM repeats
    eigh_spread: float                      # largest max/min over the kept sizes' repeats

    def as_dict(self) -> dict:
        return {"profile": dataclasses.asdict(self.profile), "samples": list(self.samples),
                "rejected": list(self.rejected), "gemm_spread": self.gemm_spread,
                "eigh_spread": self.eigh_spread}


def monotone(samples: Sequence[tuple[int, float]]) -> tuple[list[tuple[int, float]], list[int]]:
    """Keep, in increasing n, each sample slower than every smaller size kept; the rest are
    rejected (a larger eigendecomposition is never faster)."""
    kept, rejected = [], []
    for n, t in sorted(samples):
        if kept and t <= kept[-1][1]:
            rejected.append(n)
        else:
            kept.append((n, t))
    return kept, rejected


def fit_eigh(samples: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(latency s, flop rate) of t = latency + 9 n^3 / rate, least squares on t relative
    error; latency clamped to >= 0 (a pure cubic through the largest size then)."""
    if len(samples) < 2:
        raise ValueError(f"fit_eigh needs two sizes, got {len(samples)}")
    a = torch.tensor([[EIGH_FLOPS_PER_N3 * n ** 3 / t, 1.0 / t] for n, t in samples],
                     dtype=torch.float64)
    inv_rate, latency = torch.linalg.lstsq(a, torch.ones(len(samples), 1, dtype=torch.float64)
                                           ).solution.squeeze(1).tolist()
    if latency < 0 or inv_rate <= 0:
        n, t = max(samples)
        return 0.0, EIGH_FLOPS_PER_N3 * n ** 3 / t
    return latency, 1.0 / inv_rate


def _faster_half_median(times: Sequence[float]) -> float:
    """The median of the faster half (the lower quartile): load from other processes only
    ever adds time, so the slow half says more about the neighbours than about us."""
    ordered = sorted(times)
    return statistics.median(ordered[: max(1, (len(ordered) + 1) // 2)])


def _timed(fn: Callable[[], object], sync: Callable[[], None], clock: Callable[[], float]) -> float:
    t0 = clock()
    fn()
    sync()
    return clock() - t0


def measure_profile(sizes: Sequence[int] = (64, 128, 256, 512), repeats: int = 7,
                    gemm_size: int = 512, device: str = "cpu", name: str | None = None,
                    memory_bytes: float = float("inf")) -> Measurement:
    """Time eigh at ``sizes`` and a GEMM on ``device``; medians, monotone rejection, fit."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if len(set(sizes)) < 2 or min(sizes) < 2:
        raise ValueError(f"sizes needs two different sizes >= 2, got {list(sizes)}")
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # On one CPU thread the work runs on this thread, so its CPU time is the work's time
    # and excludes the slices the scheduler gave to other processes; otherwise wall time.
    cpu_clock = dev.type == "cpu" and torch.get_num_threads() == 1
    clock = time.thread_time if cpu_clock else time.perf_counter
    gen = torch.Generator().manual_seed(0)
    sizes = sorted(set(sizes))
    factors = {}
    for n in sizes:
        x = torch.randn(2 * n, n, generator=gen).to(dev)
        factors[n] = x.T @ x / (2 * n)
    u = torch.randn(gemm_size, gemm_size, generator=gen).to(dev)
    jobs = {n: (lambda f=factors[n]: torch.linalg.eigh(f)) for n in sizes}
    jobs["gemm"] = lambda: u @ u
    for fn in jobs.values():  # warm-up: workspace queries, thread start, kernel load
        fn()
    sync()
    # Round robin: a burst of load from a neighbour lands on every size alike, so it
    # moves the fitted rate less than it would if one size were timed after another.
    times: dict = {key: [] for key in jobs}
    for _ in range(repeats):
        for key, fn in jobs.items():
            for _ in range(5 if key == "gemm" else 1):
                times[key].append(_timed(fn, sync, clock))
    medians = [(n, _faster_half_median(times[n])) for n in sizes]
    kept, rejected = monotone(medians)
    if len(kept) < 2:
        raise RuntimeError(f"only {len(kept)} eigh size(s) were monotone in n "
                           f"({medians}); the machine is too busy to fit, try more repeats")
    latency, eigh_rate = fit_eigh(kept)
    gemm = times["gemm"]
    rate = 2.0 * gemm_size ** 3 / _faster_half_median(gemm)
    label = name or (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
    profile = DeviceProfile(label, rate, eigh_rate, latency, 0.0, memory_bytes,
                            f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
                            f"eigh n={sorted(set(sizes))} x{repeats}, GEMM {gemm_size}, "
                            f"{torch.get_num_threads()} threads, "
                            f"{'thread CPU time' if cpu_clock else 'wall time'}, torch {torch.__version__}")
    return Measurement(profile, tuple(kept), tuple(rejected), max(gemm) / min(gemm),
                       max(max(times[n]) / min(times[n]) for n, _ in kept))
