"""A profile of the machine at hand, timed robustly on a busy machine.

On one CPU thread the clock is that thread's CPU time, which leaves out the time
slices other processes take; what load still adds only ever adds time: on this shared
2-core VM the CPU runs at two speeds, a quiet one and about half of it for seconds at a
time while neighbours load it (a pure Python loop slows by the same factor). So every
quantity is estimated from the quiet spells, and the estimator says when it found none:

- samples are taken round robin (a neighbour's burst lands on every quantity alike), in
  windows of rounds; a window's estimate is its smallest median of a few consecutive
  samples (``min_of_medians``), and a quantity's estimate is the best window's, confirmed
  when a second window agrees within 5 % (``stable_estimate``);
- more windows are timed until every quantity is confirmed, with a cap on windows and
  on time (``sample_until_stable``); an estimate still unconfirmed at the cap is reported
  as such (``Measurement.unconfirmed``, the profile's source), not passed off as a rate;
- the eigendecomposition's per-call latency is timed directly, a burst of calls on a
  4 x 4 matrix, not read off a fit's intercept; the rate is the cubic term above it
  (``fit_eigh_rate``: least squares on time, so the largest sizes set it);
- an eigendecomposition never takes less time for a larger matrix: a size whose estimate
  is not above every smaller size's (the 4 x 4 latency included) is rejected
  (``monotone``).

The same estimator gives the per-op host cost (``op_overhead_estimate``). Repeatability
at load: docs/distributed.md, "Profiling this machine" (2026-12-07, load 6-10, the
default 30-90 s: the latency and per-op cost within 8 % in every set of five, the GEMM
and eigh rates within 20 % in one set of four, because this VM's quiet speed itself
moves by ~30 % from minute to minute; 120-150 s profiles at load 3-6: every rate within
20 % in two sets of three, and in the third over the confirmed runs).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
import statistics
import time
import types
from collections.abc import Callable, Sequence

import torch

from kfac_ext.scaling.profiles import EIGH_FLOPS_PER_N3, DeviceProfile

__all__ = [
    "Estimate",
    "Measurement",
    "fit_eigh_rate",
    "window_estimates",
    "stable_estimate",
    "sample_until_stable",
    "op_overhead_estimate",
    "expected_max_excess",
    "hook_cost_estimate",
    "quietest_window",
    "local_relative",
    "monotone",
    "fit_eigh",
    "measure_profile",
    "measure_op_overhead",
    "min_of_medians",
]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One quantity's quiet-window estimate from ``stable_estimate``, seconds."""

    value: float  # the best window's min of medians: the cost in a quiet window
    median: float  # the median of all samples: the loaded figure
    confirmed: bool  # a second window agreed with the best within the tolerance
    windows: int  # complete windows timed
    agreement: float  # second-best window's estimate / the best (inf with one window)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A device profile measured on this machine, with the samples kept and rejected and their spread."""

    profile: DeviceProfile
    samples: tuple[tuple[int, float, float], ...]  # (n, estimate s, median s), sizes kept
    rejected: tuple[int, ...]  # sizes dropped as not monotone
    gemm_spread: float  # the GEMM's median / estimate (loaded over quiet)
    eigh_spread: float  # largest median / estimate over the kept sizes
    unconfirmed: tuple[str, ...] = ()  # quantities whose quiet window was not confirmed
    windows: int = 0  # windows of rounds timed

    @property
    def confirmed(self) -> bool:
        return not self.unconfirmed

    def as_dict(self) -> dict:
        return {
            "profile": dataclasses.asdict(self.profile),
            "samples": list(self.samples),
            "rejected": list(self.rejected),
            "gemm_spread": self.gemm_spread,
            "eigh_spread": self.eigh_spread,
            "confirmed": self.confirmed,
            "unconfirmed": list(self.unconfirmed),
            "windows": self.windows,
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


def fit_eigh_rate(samples: Sequence[tuple[int, float]], latency: float) -> float:
    """The flop rate of t = latency + 9 n^3 / rate with the latency given (measured on its
    own): least squares on time, so the largest sizes, where the cubic term dominates, set it."""
    if not samples:
        raise ValueError("fit_eigh_rate needs at least one size")
    if not 0 <= latency < math.inf:
        raise ValueError(f"latency must be finite seconds >= 0, got {latency!r}")
    cubes = [EIGH_FLOPS_PER_N3 * n**3 for n, _ in samples]
    inv_rate = sum(c * (t - latency) for c, (_, t) in zip(cubes, samples)) / sum(c * c for c in cubes)
    if not inv_rate > 0:
        raise ValueError(f"no positive rate: every eigendecomposition took about the latency ({samples}, {latency})")
    return 1.0 / inv_rate


def window_estimates(samples: Sequence[float], window: int, group: int = 5) -> list[float]:
    """``min_of_medians`` of each complete window of ``window`` consecutive samples."""
    if window < 1 or group < 1:
        raise ValueError(f"window and group must be >= 1, got {window} and {group}")
    return [min_of_medians(samples[i : i + window], group) for i in range(0, len(samples) - window + 1, window)]


def stable_estimate(
    samples: Sequence[float], window: int, group: int = 5, tol: float = 0.05, contrast: float | None = None
) -> Estimate:
    """The quiet-window cost of ``samples`` and whether it is confirmed.

    The samples are cut into windows of ``window`` consecutive ones (a trailing part
    window is left out) and each window gets its ``min_of_medians``. The estimate is the
    best (smallest) window's; it is confirmed when a second window, disjoint in time from
    it, agrees within ``tol`` (its estimate at most (1 + tol) x the best). On this VM a
    window that met a quiet spell of the CPU reads its quiet speed and one that met none
    reads anything up to about twice it, so two windows agreeing at the best is evidence
    of the quiet speed; a best window alone (a lucky or a mistimed spell) is not, and a
    run that met no quiet spell rarely has two windows agreeing at the bottom, but a run
    inside one long loaded spell can. Where the quiet/loaded contrast of a quantity is
    known (the per-op cost: ~0.5), ``contrast`` asks more: the best window at most
    ``contrast`` x the median of all samples (a quiet spell seen), or
    every window within ``tol`` of the best (an unloaded run, no contrast to see). The
    median of all samples is kept beside it as the loaded figure."""
    if not 0 <= tol < math.inf:
        raise ValueError(f"tol must be a finite fraction >= 0, got {tol!r}")
    if len(samples) < window:
        raise ValueError(f"stable_estimate needs one complete window: {len(samples)} samples < window {window}")
    ests = sorted(window_estimates(samples, window, group))
    agreement = ests[1] / ests[0] if len(ests) > 1 and ests[0] > 0 else math.inf
    median = statistics.median(samples)
    confirmed = agreement <= 1 + tol
    if contrast is not None:
        confirmed = confirmed and (ests[0] <= contrast * median or ests[-1] <= (1 + tol) * ests[0])
    return Estimate(ests[0], median, confirmed, len(ests), agreement)


def sample_until_stable(
    time_round: Callable[[], dict],
    groups: dict,
    window_rounds: int,
    min_windows: int = 2,
    max_windows: int = 8,
    tol: float = 0.05,
    max_s: float = math.inf,
    clock: Callable[[], float] = time.perf_counter,
    min_s: float = 0.0,
    contrast: dict | None = None,
) -> tuple[dict, int]:
    """Time rounds until every quantity's estimate is confirmed, or a cap is met.

    ``time_round()`` times one round and returns {key: [samples]} (the same number for a
    key every round); ``groups`` the ``min_of_medians`` group of each key. After
    ``min_windows`` windows of ``window_rounds`` rounds, and after each window from then
    on, every key gets its ``stable_estimate``; the rounds stop when all are confirmed and
    ``min_s`` seconds of ``clock`` have passed (a loaded spell of this VM can last tens of
    seconds, and two windows inside one agree with each other: the floor makes a run meet
    more spells), at ``max_windows`` windows, or once ``max_s`` seconds have passed
    (checked at window ends). Returns ({key: Estimate}, rounds timed): an unconfirmed Estimate says the
    run could not confirm a quiet window for it, and its value is then only a bound.
    ``contrast`` maps keys to ``stable_estimate``'s ``contrast``."""
    if window_rounds < 1 or min_windows < 1 or max_windows < min_windows:
        raise ValueError(
            f"need window_rounds >= 1 and 1 <= min_windows <= max_windows, got "
            f"{window_rounds}, {min_windows} and {max_windows}"
        )
    times: dict = {key: [] for key in groups}
    per_round: dict = {}
    start, rounds = clock(), 0
    while True:
        for _ in range(window_rounds):
            for key, got in time_round().items():
                times[key].extend(got)
                per_round[key] = len(got)
            rounds += 1
        windows = rounds // window_rounds
        if windows < min_windows:
            continue
        est = {
            k: stable_estimate(times[k], window_rounds * per_round[k], groups[k], tol, (contrast or {}).get(k))
            for k in groups
        }
        elapsed = clock() - start
        if (all(e.confirmed for e in est.values()) and elapsed >= min_s) or windows >= max_windows or elapsed >= max_s:
            return est, rounds


def _timed(fn: Callable[[], object], sync: Callable[[], None], clock: Callable[[], float]) -> float:
    t0 = clock()
    fn()
    sync()
    return clock() - t0


def measure_profile(
    sizes: Sequence[int] = (64, 128, 256, 512),
    repeats: int = 5,
    gemm_size: int = 512,
    device: str = "cpu",
    name: str | None = None,
    memory_bytes: float | None = None,
    latency_size: int | None = None,
    latency_calls: int = 20,
    min_windows: int = 4,
    max_windows: int = 400,
    tol: float = 0.05,
    min_s: float = 30.0,
    max_s: float = 90.0,
) -> Measurement:
    """Time eigh at ``sizes``, eigh of a tiny matrix and a GEMM on ``device``, round
    robin, in windows of ``repeats`` rounds until every estimate is confirmed
    (``sample_until_stable``; at least ``min_windows`` windows and ``min_s`` seconds, at
    most ``max_windows`` windows or ``max_s`` seconds); reject sizes not monotone in n; the per-call latency is the tiny
    eigh's own cost (a burst of ``latency_calls`` at n = ``latency_size``, by default 4 or
    the smallest size less one), the rate the
    cubic term above it. ``memory_bytes`` defaults to the device's (the GPU's, or this
    machine's RAM)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if len(set(sizes)) < 2 or min(sizes) < 2:
        raise ValueError(f"sizes needs two different sizes >= 2, got {list(sizes)}")
    if latency_size is None:
        latency_size = min(4, min(sizes) - 1)
    if not 1 <= latency_size < min(sizes) or latency_calls < 1:
        raise ValueError(
            f"latency_size must be >= 1 and below the smallest size {min(sizes)}, and latency_calls >= 1, "
            f"got {latency_size} and {latency_calls}"
        )
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
    for n in [latency_size, *sizes]:
        x = torch.randn(2 * n, n, generator=gen).to(dev)
        factors[n] = x.T @ x / (2 * n)
    u = torch.randn(gemm_size, gemm_size, generator=gen).to(dev)
    tiny = factors[latency_size]

    def latency_burst() -> None:
        for _ in range(latency_calls):
            torch.linalg.eigh(tiny)

    jobs: dict = {n: (lambda f=factors[n]: torch.linalg.eigh(f)) for n in sizes}
    jobs["gemm"] = lambda: u @ u
    jobs["latency"] = latency_burst
    for fn in jobs.values():  # warm-up: workspace queries, thread start, kernel load
        fn()
    sync()
    # Round robin: a burst of load from a neighbour lands on every size alike. The GEMM
    # runs five times a round (group 5: min of medians), the latency burst five times
    # (group 5), an eigendecomposition once (group 1: the fastest; repeated back to back,
    # a small one runs from a warm cache).
    calls = {key: 5 if key in ("gemm", "latency") else 1 for key in jobs}
    scale = {key: 1.0 / latency_calls if key == "latency" else 1.0 for key in jobs}

    def time_round() -> dict:
        return {key: [_timed(fn, sync, clock) * scale[key] for _ in range(calls[key])] for key, fn in jobs.items()}

    est, rounds = sample_until_stable(
        time_round, calls, repeats, min_windows, max_windows, tol, max_s, time.perf_counter, min_s
    )
    latency = est["latency"].value
    kept, rejected = monotone([(latency_size, latency)] + [(n, est[n].value) for n in sizes])
    kept = [(n, t) for n, t in kept if n != latency_size]
    if latency_size in rejected or len(kept) < 1:
        raise RuntimeError(
            f"eigh times not monotone in n (n={latency_size}: {latency:.3g} s, "
            f"{[(n, est[n].value) for n in sizes]}); the machine is too busy, try more repeats"
        )
    eigh_rate = fit_eigh_rate(kept, latency)
    rate = 2.0 * gemm_size**3 / est["gemm"].value
    label = name or (torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
    unconfirmed = tuple(str(k) for k, e in est.items() if not e.confirmed and k not in rejected)
    profile = DeviceProfile(
        label,
        rate,
        eigh_rate,
        latency,
        memory_bytes,
        f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"eigh n={sizes} and latency at n={latency_size}, {rounds} rounds, GEMM {gemm_size}, "
        f"{torch.get_num_threads()} threads, "
        f"{'thread CPU time' if cpu_clock else 'wall time'}, torch {torch.__version__}"
        + (f"; quiet window NOT confirmed for {', '.join(unconfirmed)}" if unconfirmed else ""),
    )
    samples = tuple((n, t, est[n].median) for n, t in kept)
    return Measurement(
        profile,
        samples,
        tuple(rejected),
        est["gemm"].median / est["gemm"].value,
        max(est[n].median / est[n].value for n, _ in kept),
        unconfirmed,
        rounds // repeats,
    )


def min_of_medians(samples: Sequence[float], group: int = 5) -> float:
    """The smallest median of ``group`` consecutive samples (a trailing short group
    included): the cost in the quiet windows of a busy machine, where one sample alone
    (a lucky or a mistimed one) cannot set it."""
    if not samples or group < 1:
        raise ValueError(f"min_of_medians needs samples and a group >= 1, got {len(samples)} and {group}")
    return min(statistics.median(samples[i : i + group]) for i in range(0, len(samples), group))


# A quiet window's estimate is at most this share of the median of all samples: loaded,
# this VM's CPU runs at about half its quiet speed, so a run that met quiet windows shows
# ~0.5 (0.48-0.58 in the runs of 2026-12-07) and one that met none, or was never loaded,
# ~0.7-1. The per-op estimate's ``contrast`` (``stable_estimate``).
QUIET = 0.65


def op_overhead_estimate(
    ops: int = 100,
    repeats: int = 300,
    group: int = 5,
    min_windows: int = 2,
    max_windows: int = 60,
    tol: float = 0.05,
    max_s: float = 30.0,
    op: Callable[[], object] | None = None,
    min_s: float = 5.0,
    contrast: bool = True,
) -> Estimate:
    """This machine's eager per-op host cost, seconds, as an ``Estimate``: bursts of ``ops``
    multiplications of a one-element CPU tensor that requires grad (the case of
    pytorch/pytorch#41383: Python, dispatcher and autograd, no arithmetic to speak of; one
    fixed shape, warmed up), each burst timed by the thread's CPU time, in windows of
    ``repeats`` bursts until two windows agree and (``contrast``) a quiet spell was seen
    against the loaded median or no window was loaded (``stable_estimate``; on 2026-12-07
    at load 8-10 one run in five confirmed two loaded windows without it, 8.86 us against
    5.4-5.6). ``op`` replaces the multiplication (a callable per op), e.g. to time another
    per-call host cost."""
    if ops < 1 or repeats < 1 or group < 1:
        raise ValueError(f"ops, repeats and group must be >= 1, got {ops}, {repeats} and {group}")
    if op is None:
        x = torch.ones(1, requires_grad=True)
        op = lambda: x * 2.0  # noqa: E731
    for _ in range(200):  # warm-up
        op()

    def burst() -> dict:
        t0 = time.thread_time()
        for _ in range(ops):
            op()
        return {"op": [(time.thread_time() - t0) / ops]}

    est, _ = sample_until_stable(
        burst,
        {"op": min(group, repeats)},
        repeats,
        min_windows,
        max_windows,
        tol,
        max_s,
        time.perf_counter,
        min_s,
        {"op": QUIET if contrast else None},
    )
    return est["op"]


def measure_op_overhead(ops: int = 100, repeats: int = 600, group: int = 5, extend: float = 4.0) -> tuple[float, float]:
    """(estimate, median) of ``op_overhead_estimate`` in seconds: at least two windows of
    ``repeats`` bursts of ``ops`` ops, more (up to 2 + 2 x ``extend`` windows) until two
    windows agree within 5 %. It is today's stack on this CPU, a lower figure than a 2020
    GPU's launch path (docs/distributed.md, "Profiling this machine")."""
    if not 0 <= extend < math.inf:
        raise ValueError(f"extend must be a finite factor >= 0, got {extend!r}")
    e = op_overhead_estimate(ops, repeats, group, 2, 2 + math.ceil(10 * extend), min_s=5.0 if extend else 0.0)
    return e.value, e.median


def expected_max_excess(first: Sequence[float], others: Sequence[float], ranks: int) -> float:
    """E[max(X_0, X_1, ..., X_{ranks-1})] - E[X_0], exactly, for X_0 drawn from the samples
    ``first`` and X_1.. independently from ``others`` (their empirical distributions): what
    a barrier every step costs when each of ``ranks`` ranks does its own share of work
    first (rank 0's share may differ, e.g. a progress bar). 0 on one rank."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if not first or (ranks > 1 and not others):
        raise ValueError("expected_max_excess needs samples for rank 0 and for the other ranks")
    if ranks == 1:
        return 0.0
    a, b = sorted(first), sorted(others)
    expected, previous = 0.0, 0.0
    for v in sorted(set(a) | set(b)):
        cdf = bisect.bisect_right(a, v) / len(a) * (bisect.bisect_right(b, v) / len(b)) ** (ranks - 1)
        expected += v * (cdf - previous)
        previous = cdf
    return expected - statistics.fmean(a)


def quietest_window(samples: Sequence[float], length: int) -> int:
    """Start of the ``length`` consecutive samples with the smallest median (the first such):
    a quiet spell of this VM, whose samples then give the distribution of the work itself."""
    if not 1 <= length <= len(samples):
        raise ValueError(f"length must be in 1..{len(samples)}, got {length}")
    medians = [statistics.median(samples[i : i + length]) for i in range(len(samples) - length + 1)]
    return medians.index(min(medians))


def hook_cost_estimate(
    tensors: int = 95, repeats: int = 100, min_s: float = 10.0, max_s: float = 60.0
) -> tuple[float, Estimate, Estimate]:
    """Host seconds per gradient hook of the Python part of Horovod 0.19.0's
    ``DistributedOptimizer`` hook, measured on this CPU: (per hook, plain backward's
    Estimate, hooked backward's Estimate).

    A backward over ``tensors`` one-element leaves is timed without hooks and with one
    hook per leaf on its gradient accumulator (``p.expand_as(p).grad_fn.next_functions``,
    as v0.19.0 registers them), alternately, by the thread's CPU time (CPU autograd runs
    on the calling thread), each with ``op_overhead_estimate``'s windows. The hook does
    what v0.19.0's Python does per gradient before entering C++ (horovod/torch/__init__.py
    ``_make_hook`` and ``_allreduce_grad_async``, horovod/torch/mpi_ops.py
    ``allreduce_async_``, ``_allreduce_async``, ``_check_function``): the handle and delay
    dict look-ups and asserts, ``p.grad`` and its ``requires_grad``, the no-op compression,
    the op's backwards-compatibility check, ``size()`` for the divisor, the dtype check,
    the function name from ``tensor.type()``, ``hasattr`` on the extension, the contiguity
    check, the name's ``encode()``, the call (here into a no-op builtin, not
    ``DoAllreduce``) and the handle map's store. The C++ side (handle, CUDA event, name,
    enqueue under a lock) is not in it, so it is a lower bound. The difference of the two
    quiet estimates over ``tensors`` is the per-hook cost."""
    if tensors < 1:
        raise ValueError(f"tensors must be >= 1, got {tensors}")
    # two sets of leaves, one hooked: a hook sits on the leaf's gradient accumulator, which
    # every graph through that leaf shares
    params = [torch.ones(1, requires_grad=True) for _ in range(tensors)]
    others = [torch.ones(1, requires_grad=True) for _ in range(tensors)]
    for q in params + others:
        q.grad = torch.zeros(1)
    op_arg, average, AVERAGE = None, None, 1
    stub = types.SimpleNamespace(horovod_torch_allreduce_async_torch_FloatTensor=max)
    handles: dict = {}
    delay = dict.fromkeys(params, 1)
    names = {q: f"allreduce.p{i}" for i, q in enumerate(params)}
    handle_map: dict = {}
    size = lambda: 4  # noqa: E731

    def make_hook(q):
        def hook(*_):
            if q in handles and handles[q][0] is not None and delay[q] <= 0:
                raise AssertionError("more backward passes than backward_passes_per_step")
            assert not q.grad.requires_grad
            assert delay[q] > 0
            delay[q] -= 1
            name, tensor = names.get(q), q.grad
            compressed, ctx = tensor, None  # Compression.none
            op = (AVERAGE if op_arg is None else op_arg) if average is None else average  # backwards compat.
            divisor = size() if op == AVERAGE else 1
            if tensor.dtype == torch.float16:
                raise NotImplementedError
            function = "horovod_torch_allreduce_async_" + compressed.type().replace(".", "_")
            if not hasattr(stub, function) or not compressed.is_contiguous():
                raise ValueError(function)
            handle = getattr(stub, function)(len(handle_map), divisor, len(name.encode()), 0)
            handle_map[handle] = (compressed, compressed)
            handles[q] = (handle, ctx)
            delay[q] = 1  # what synchronize() resets each step

        return hook

    hooked = [q.expand_as(q) for q in params]
    accumulators = [h.grad_fn.next_functions[0][0] for h in hooked]  # kept alive with their hooks
    for q, acc in zip(params, accumulators):
        acc.register_hook(make_hook(q))
    plain = [q.expand_as(q) for q in others]  # the same graph, no hooks

    def backward(outs):
        torch.autograd.backward(outs, [torch.ones(1)] * len(outs), retain_graph=True)
        handles.clear()
        handle_map.clear()

    kw = dict(ops=1, repeats=repeats, group=5, min_s=min_s, max_s=max_s, contrast=False)
    without = op_overhead_estimate(op=lambda: backward(plain), **kw)  # type: ignore[arg-type]
    with_hooks = op_overhead_estimate(op=lambda: backward(hooked), **kw)  # type: ignore[arg-type]
    return (with_hooks.value - without.value) / tensors, without, with_hooks


def local_relative(samples: Sequence[float], half_width: int) -> list[float]:
    """Each sample over the median of its neighbourhood (``half_width`` samples each side,
    clipped at the ends, itself included): what is left of a per-iteration time once this
    VM's speed, which changes in spells of seconds (tens of iterations), is divided out;
    the iteration-to-iteration jitter of the work itself stays."""
    if half_width < 1 or not samples:
        raise ValueError(f"local_relative needs samples and half_width >= 1, got {len(samples)} and {half_width}")
    n = len(samples)
    return [
        samples[k] / statistics.median(samples[max(0, k - half_width) : min(n, k + half_width + 1)]) for k in range(n)
    ]
