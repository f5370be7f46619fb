"""A profile of the machine at hand, timed robustly on a busy machine.

Each eigendecomposition size and a square GEMM are timed ``repeats`` times, round
robin (a neighbour's burst lands on every size alike). On one CPU thread the clock
is that thread's CPU time, which leaves out the time slices other processes take;
what load still adds only ever adds time: on this shared 2-core VM the CPU runs at
two speeds, a quiet one and about half of it for seconds at a time while neighbours
load it (a pure Python loop slows by the same factor). So each size's estimate is
its fastest sample, the GEMM's the fastest of each round's median of five
(``min_of_medians``), and the median is kept beside them as the loaded figure; the
rounds (120 by default, ~10 s) are enough that a run at load <= ~4 meets quiet
windows (at load 8-9 some runs meet none, and nothing recovers the quiet speed). An
eigendecomposition never takes less time for a larger matrix: a size whose estimate
is not above every smaller size's is rejected (``rejected``) before the fit of
``t(n) = latency + 9 n^3 / rate`` (least squares on relative error).

On this 2-core machine at load 3.5-3.7 (2026-12-07 17:18 UTC,
``python benchmarks/table_scaling_profile.py``), five profiles gave GEMM rates, eigh
rates and eigh latencies within 4 %, 4 % and 17 % of each other (78.9-82.0 and
41.2-43.0 GFLOP/s, 0.42-0.49 ms); with 15 rounds and the fastest GEMM, the former
method, 32 %, 9 % and 21 % (16:58, load 3.1), and with 45 rounds at load 4.4, 25 %,
28 % and 33 % (docs/distributed.md, "Profiling this machine").
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from kfac_ext.scaling.profiles import EIGH_FLOPS_PER_N3, DeviceProfile

__all__ = [
    "Measurement",
    "monotone",
    "fit_eigh",
    "measure_profile",
    "measure_op_overhead",
    "min_of_medians",
    "quiet_seen",
]


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A device profile measured on this machine, with the samples kept and rejected and their spread."""

    profile: DeviceProfile
    samples: tuple[tuple[int, float, float], ...]  # (n, fastest s, median s), sizes kept
    rejected: tuple[int, ...]  # sizes dropped as not monotone
    gemm_spread: float  # max/min of the GEMM repeats
    eigh_spread: float  # largest max/min over the kept sizes' repeats

    def as_dict(self) -> dict:
        return {
            "profile": dataclasses.asdict(self.profile),
            "samples": list(self.samples),
            "rejected": list(self.rejected),
            "gemm_spread": self.gemm_spread,
            "eigh_spread": self.eigh_spread,
        }


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
    a = torch.tensor([[EIGH_FLOPS_PER_N3 * n**3 / t, 1.0 / t] for n, t in samples], dtype=torch.float64)
    inv_rate, latency = (
        torch.linalg.lstsq(a, torch.ones(len(samples), 1, dtype=torch.float64)).solution.squeeze(1).tolist()
    )
    if latency < 0 or inv_rate <= 0:
        n, t = max(samples)
        return 0.0, EIGH_FLOPS_PER_N3 * n**3 / t
    return latency, 1.0 / inv_rate


def _timed(fn: Callable[[], object], sync: Callable[[], None], clock: Callable[[], float]) -> float:
    t0 = clock()
    fn()
    sync()
    return clock() - t0


def measure_profile(
    sizes: Sequence[int] = (64, 128, 256, 512),
    repeats: int = 120,
    gemm_size: int = 512,
    device: str = "cpu",
    name: str | None = None,
    memory_bytes: float | None = None,
) -> Measurement:
    """Time eigh at ``sizes`` and a GEMM on ``device``: fastest samples, monotone rejection,
    fit. ``memory_bytes`` defaults to the device's (the GPU's, or this machine's RAM)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if len(set(sizes)) < 2 or min(sizes) < 2:
        raise ValueError(f"sizes needs two different sizes >= 2, got {list(sizes)}")
    dev = torch.device(device)
    if memory_bytes is None:
        memory_bytes = float(
            torch.cuda.get_device_properties(dev).total_memory
            if dev.type == "cuda"
            else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        )
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
    # The GEMM runs five times a round, its estimate the smallest of the rounds' medians
    # (``min_of_medians``); an eigendecomposition once (repeated back to back, a small one
    # runs from a warm cache: its median of five fitted half the latency of single calls).
    calls = {key: 5 if key == "gemm" else 1 for key in jobs}
    times: dict = {key: [] for key in jobs}
    for _ in range(repeats):
        for key, fn in jobs.items():
            for _ in range(calls[key]):
                times[key].append(_timed(fn, sync, clock))
    best = [(n, min_of_medians(times[n], calls[n])) for n in sizes]
    kept, rejected = monotone(best)
    if len(kept) < 2:
        raise RuntimeError(
            f"only {len(kept)} eigh size(s) were monotone in n "
            f"({best}); the machine is too busy to fit, try more repeats"
        )
    latency, eigh_rate = fit_eigh(kept)
    gemm = times["gemm"]
    rate = 2.0 * gemm_size**3 / min_of_medians(gemm, calls["gemm"])
    label = name or (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
    profile = DeviceProfile(
        label,
        rate,
        eigh_rate,
        latency,
        memory_bytes,
        f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"eigh n={sorted(set(sizes))} x{repeats}, GEMM {gemm_size}, "
        f"{torch.get_num_threads()} threads, "
        f"{'thread CPU time' if cpu_clock else 'wall time'}, torch {torch.__version__}",
    )
    samples = tuple((n, t, statistics.median(times[n])) for n, t in kept)
    return Measurement(
        profile,
        samples,
        tuple(rejected),
        max(gemm) / min(gemm),
        max(max(times[n]) / min(times[n]) for n, _ in kept),
    )


def min_of_medians(samples: Sequence[float], group: int = 5) -> float:
    """The smallest median of ``group`` consecutive samples (a trailing short group
    included): the cost in the quiet windows of a busy machine, where one sample alone
    (a lucky or a mistimed one) cannot set it."""
    if not samples or group < 1:
        raise ValueError(f"min_of_medians needs samples and a group >= 1, got {len(samples)} and {group}")
    return min(statistics.median(samples[i : i + group]) for i in range(0, len(samples), group))


QUIET = 0.65  # a quiet window's estimate is at most this share of the median


def quiet_seen(samples: Sequence[float], group: int = 5) -> bool:
    """Whether ``samples`` met a quiet window of this VM: their ``min_of_medians`` is at most
    ``QUIET`` of their median. Loaded, the CPU runs at about half its quiet speed, so a run
    that met quiet windows shows ~0.5 (0.48-0.58 in the runs of 2026-12-07); one that met
    none, or that was never loaded, shows ~0.7-1 (an unloaded run only costs the extension)."""
    return min_of_medians(samples, group) <= QUIET * statistics.median(samples)


def measure_op_overhead(
    ops: int = 100, repeats: int = 3000, group: int = 5, extend: float = 3.0
) -> tuple[float, float]:
    """This machine's eager per-op host cost, seconds: (min of medians, median) over
    ``repeats`` bursts of ``ops`` multiplications of a one-element CPU tensor that requires
    grad (the case of pytorch/pytorch#41383: Python, dispatcher and autograd, no arithmetic
    to speak of; one fixed shape, warmed up), each burst timed by the thread's CPU time.

    On this shared 2-core VM the thread's CPU time still runs at two speeds: a quiet CPU,
    and about half that speed for seconds at a time while neighbours load it (a pure
    Python loop slows by the same factor, so it is the CPU, not the op). Bursts are short
    (``ops`` x ~5 us) and many (~2-4 s in all); the estimate is the smallest median of
    ``group`` consecutive bursts (``min_of_medians``), and the median of all bursts is the
    loaded figure. While the bursts show no quiet window (``quiet_seen``) more are timed,
    for at most ``extend`` times the first ones' time. Five runs at load 3.6-4.2
    (2026-12-07 17:13 UTC) gave 5.17-5.57 us (8 %), five more inside
    ``benchmarks/table_scaling_profile.py`` at 3.5-3.7 5.11-5.22 us (2 %); the medians
    9-11 us; the former estimator, the fastest of 15 runs of 2000 ops, 5-12 us.
    It is today's stack on this CPU, a lower figure than a 2020 GPU's launch path."""
    if ops < 1 or repeats < 1 or group < 1:
        raise ValueError(f"ops, repeats and group must be >= 1, got {ops}, {repeats} and {group}")
    if not 0 <= extend < math.inf:
        raise ValueError(f"extend must be a finite factor >= 0, got {extend!r}")
    x = torch.ones(1, requires_grad=True)
    for _ in range(200):  # warm-up
        x * 2.0
    per_op: list[float] = []

    def bursts(count: int) -> None:
        for _ in range(count):
            t0 = time.thread_time()
            for _ in range(ops):
                x * 2.0
            per_op.append((time.thread_time() - t0) / ops)

    group = min(group, repeats)
    start = time.perf_counter()
    bursts(repeats)
    deadline = time.perf_counter() + extend * (time.perf_counter() - start)
    while not quiet_seen(per_op, group) and time.perf_counter() < deadline:
        bursts(max(1, repeats // 10))
    return min_of_medians(per_op, group), statistics.median(per_op)
