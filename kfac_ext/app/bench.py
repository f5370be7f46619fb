"""`kfac-ext bench scaling`: plan a K-FAC run on N ranks before paying for it.

For the model (``--model``: resnet50, resnet32-cifar or MODULE:FACTORY, any
nn.Module; its FLOPs are counted on the meta device) it predicts, per rank count,
the step time of SGD and of K-FAC under COMM-OPT, HYBRID-OPT and MEM-OPT (forward
and backward, gradient all-reduce, factor computation and all-reduce,
eigendecompositions as the makespan solver assigns them, eigenbasis and
preconditioned-gradient exchange), the memory per rank, and recommends a strategy
and update intervals that fit ``--memory-limit-gb``. Device rates come from
``--profile``: v100 (calibrated on a published timing), a100 or h100 (datasheet
peak x efficiencies measured on an H200), cpu (this machine: measured once, 120-150 s,
then reused from a cache file keyed by the CPU model, torch version, threads and the
measurement's settings; ``--reprofile``, ``--profile-cache``, ``--no-profile-cache``), or a
JSON profile file. The model and its validation: docs/distributed.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import math
import os
import sys

import torch

from kfac_ext.app.validation import check_output_path, probe_write
from kfac_ext.scaling import (
    NETWORKS,
    Intervals,
    Network,
    calibrate,
    models,
    plan,
    predict,
    profile_cache,
    profiles,
    strategies,
    workload_of,
)
from kfac_ext.scaling.measure import measure_profile
from kfac_ext.scaling.step import HostCost
from kfac_ext.schedules import growing_interval

# An eigendecomposition of a larger factor takes minutes and gigabytes to time.
MAX_EIGH_SIZE = 4096
# The eigendecomposition assignment of 65536 ranks takes seconds; more is not a plan.
MAX_WORKERS = 2**16
BUILTIN = {"resnet50": (models.resnet50, (3, 224, 224)), "resnet32-cifar": (models.resnet32_cifar, (3, 32, 32))}
PROFILES = ("v100", "a100", "h100", "cpu")
# --profile cpu: 120-150 s profiles repeated within 20 % at load 3-6, 30-90 s ones did not
# (docs/distributed.md, "Profiling this machine", 2026-12-07); measured once, then cached.
PROFILE_SECONDS = 120.0
PROFILE_MAX_SECONDS = 150.0
INPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}


def _positive_ints(text: str) -> list[int]:
    """argparse type: a comma-separated list of integers >= 1."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["scaling"], help="which benchmark")
    parser.add_argument(
        "--model",
        default="resnet50",
        help="resnet50, resnet32-cifar, or MODULE:FACTORY (a callable with no arguments that returns an nn.Module)",
    )
    parser.add_argument(
        "--input-shape",
        type=_positive_ints,
        default=None,
        help="one sample's shape without the batch, e.g. 3,224,224 (needed for MODULE:FACTORY)",
    )
    parser.add_argument(
        "--input-dtype",
        choices=sorted(INPUT_DTYPES),
        default="float32",
        help="dtype of the model's input (int64 for token ids)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="samples per rank and step")
    parser.add_argument(
        "--ranks",
        "--workers",
        dest="ranks",
        type=_positive_ints,
        default=[8, 16, 32, 64],
        help=f"comma-separated rank counts (at most {MAX_WORKERS})",
    )
    parser.add_argument(
        "--profile",
        default="v100",
        help=f"{', '.join(PROFILES)}, or a JSON file written by benchmarks/table_scaling_profile.py --out",
    )
    parser.add_argument(
        "--network",
        choices=sorted(NETWORKS),
        default="ib100",
        help="alpha-beta defaults: ib100 = 100 Gb/s InfiniBand, nvlink = NVSwitch",
    )
    parser.add_argument("--alpha", type=float, default=None, help="override latency (s)")
    parser.add_argument("--bandwidth", type=float, default=None, help="override bandwidth (B/s)")
    parser.add_argument("--factor-update-steps", type=int, default=10)
    parser.add_argument("--inv-update-steps", type=int, default=100)
    parser.add_argument(
        "--interval-growth",
        type=float,
        default=1.0,
        help="both intervals grow by this factor every --growth-every steps "
        "(kfac_ext.schedules.growing_interval; 1: fixed)",
    )
    parser.add_argument("--growth-every", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10000, help="training steps a schedule is averaged over")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    parser.add_argument(
        "--eigh-latency-ms",
        type=float,
        default=None,
        help="override the profile's time per eigendecomposition call (e.g. an older solver)",
    )
    parser.add_argument(
        "--host-ms", type=float, default=0.0, help="time per step nothing else explains (input pipeline)"
    )
    parser.add_argument(
        "--op-us",
        type=float,
        default=0.0,
        help="host time per dispatched op (Python, dispatcher, kernel launch), times the model's "
        "counted ops and 6 per parameter tensor for a non-foreach SGD; e.g. 20 (a V100 launch, "
        "kfac_ext.scaling.calibrate.LAUNCH_LATENCY_V100_S)",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="memory per rank for the recommendation (default: the profile's)",
    )
    parser.add_argument(
        "--max-overhead",
        type=float,
        default=0.25,
        help="K-FAC's step may take this fraction more than SGD's (default 0.25)",
    )
    parser.add_argument(
        "--eigh-sizes",
        type=_positive_ints,
        default=[64, 128, 256, 512],
        help=f"--profile cpu: factor sizes timed (2..{MAX_EIGH_SIZE})",
    )
    parser.add_argument("--repeats", type=int, default=5, help="--profile cpu: rounds per window of timings")
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=PROFILE_SECONDS,
        help="--profile cpu, when measured: time at least this long, and until the estimates are "
        f"confirmed, at most max({PROFILE_MAX_SECONDS:g}, 1.25x) s (default {PROFILE_SECONDS:g}: "
        "profiles this long repeated within 20%% at load 3-6, docs/distributed.md)",
    )
    parser.add_argument(
        "--reprofile",
        action="store_true",
        help="--profile cpu: measure this machine now even if a cached profile fits, and replace it",
    )
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--profile-cache",
        default=None,
        metavar="FILE",
        help="--profile cpu: the cache file to reuse and write (default: "
        "$XDG_CACHE_HOME/kfac_ext/profile-cpu-HASH.json, ~/.cache without XDG_CACHE_HOME; "
        "HASH of the CPU model, torch version, --threads, --eigh-sizes, --repeats, "
        "--profile-seconds and the cache format)",
    )
    cache.add_argument(
        "--no-profile-cache",
        action="store_true",
        help="--profile cpu: measure now; neither read nor write a cache",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="--profile cpu: torch threads while timing (1: the thread's CPU "
        "time is the clock, robust on a shared machine)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    parser.add_argument("--plot", default="", help="write a plot to this path (.png, .pdf, ...)")


def _check_args(args) -> None:
    """Refuse values the model cannot use before any work (building, timing)."""
    if max(args.ranks) > MAX_WORKERS:
        raise ValueError(f"--ranks (--workers) must be in 1..{MAX_WORKERS}; got {max(args.ranks)}")
    bad = [s for s in args.eigh_sizes if not 2 <= s <= MAX_EIGH_SIZE]
    if bad:
        raise ValueError(f"--eigh-sizes must be in 2..{MAX_EIGH_SIZE}; got {bad[0]}")
    if len(set(args.eigh_sizes)) < 2:
        raise ValueError("--eigh-sizes needs two different sizes to fit t(n) = c0 + 9 n^3 / rate")
    finite = lambda v: v is None or math.isfinite(v)  # noqa: E731
    for flag, value, ok, expected in (
        (
            "--alpha",
            args.alpha,
            finite(args.alpha) and (args.alpha is None or args.alpha >= 0),
            "a finite number of seconds >= 0",
        ),
        (
            "--bandwidth",
            args.bandwidth,
            finite(args.bandwidth) and (args.bandwidth is None or args.bandwidth > 0),
            "a finite number of bytes/s > 0",
        ),
        ("--factor-update-steps", args.factor_update_steps, args.factor_update_steps >= 1, "an integer >= 1"),
        ("--inv-update-steps", args.inv_update_steps, args.inv_update_steps >= 1, "an integer >= 1"),
        (
            "--bucket-cap-mb",
            args.bucket_cap_mb,
            math.isfinite(args.bucket_cap_mb) and args.bucket_cap_mb > 0,
            "a finite number > 0",
        ),
        ("--batch-size", args.batch_size, args.batch_size >= 1, "an integer >= 1"),
        ("--host-ms", args.host_ms, math.isfinite(args.host_ms) and args.host_ms >= 0, "a finite number of ms >= 0"),
        ("--op-us", args.op_us, math.isfinite(args.op_us) and args.op_us >= 0, "a finite number of us >= 0"),
        (
            "--eigh-latency-ms",
            args.eigh_latency_ms,
            args.eigh_latency_ms is None or (math.isfinite(args.eigh_latency_ms) and args.eigh_latency_ms >= 0),
            "a finite number of ms >= 0",
        ),
        (
            "--memory-limit-gb",
            args.memory_limit_gb,
            args.memory_limit_gb is None or (math.isfinite(args.memory_limit_gb) and args.memory_limit_gb > 0),
            "a number > 0",
        ),
        (
            "--max-overhead",
            args.max_overhead,
            math.isfinite(args.max_overhead) and args.max_overhead >= 0,
            "a number >= 0",
        ),
        ("--repeats", args.repeats, args.repeats >= 1, "an integer >= 1"),
        (
            "--profile-seconds",
            args.profile_seconds,
            math.isfinite(args.profile_seconds) and 0 <= args.profile_seconds <= 600,
            "seconds in 0..600",
        ),
        (
            "--interval-growth",
            args.interval_growth,
            math.isfinite(args.interval_growth) and args.interval_growth >= 1,
            "a number >= 1",
        ),
        ("--growth-every", args.growth_every, args.growth_every >= 1, "an integer >= 1"),
        ("--steps", args.steps, 1 <= args.steps <= 10**7, "an integer in 1..10^7"),
        ("--threads", args.threads, args.threads >= 1, "an integer >= 1"),
    ):
        if not ok:
            raise ValueError(f"{flag} must be {expected}; got {value}")
    cache_flags = [
        flag
        for flag, given in (
            ("--reprofile", args.reprofile),
            ("--profile-cache", args.profile_cache is not None),
            ("--no-profile-cache", args.no_profile_cache),
        )
        if given
    ]
    if cache_flags and args.profile != "cpu":
        raise ValueError(f"{cache_flags[0]} applies to --profile cpu only (the profile measured on this machine)")
    if args.profile_cache is not None:
        _check_cache_path(args.profile_cache)
    if args.profile not in PROFILES and not os.path.isfile(args.profile):
        raise ValueError(f"--profile must be one of {', '.join(PROFILES)} or a JSON file; got {args.profile!r}")
    if args.model not in BUILTIN:
        if ":" not in args.model:
            raise ValueError(f"--model must be {', '.join(BUILTIN)} or MODULE:FACTORY; got {args.model!r}")
        if args.input_shape is None:
            raise ValueError("--input-shape is needed with --model MODULE:FACTORY")
    if args.plot:
        check_output_path("--plot", args.plot)


def _check_cache_path(path: str) -> None:
    """--profile-cache names a file whose folder can be created and written, before minutes of timing."""
    target = os.path.abspath(path)
    if not path or os.path.isdir(target):
        raise ValueError(f"--profile-cache {path!r}: give a file name, not a folder")
    directory = os.path.dirname(target)
    try:
        probe_write(directory)
    except OSError as exc:
        raise ValueError(f"--profile-cache {path}: cannot write in {directory}: {exc.strerror or exc}") from None


def _factory(spec: str):
    if spec in BUILTIN:
        return BUILTIN[spec][0]
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model: cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model: {module_name!r} has no callable {attr!r}")
    return factory


def _intervals(args, factor: int, inv: int) -> Intervals:
    """Fixed intervals, or both growing by --interval-growth every --growth-every steps."""
    if args.interval_growth == 1:
        return Intervals(factor, inv, args.steps)
    grow = lambda k: growing_interval(k, args.interval_growth, args.growth_every)  # noqa: E731
    return Intervals(
        grow(factor), grow(inv), args.steps, f"{factor}/{inv} x{args.interval_growth:g} per {args.growth_every}"
    )


def _network(args) -> Network:
    net = NETWORKS[args.network]
    if args.alpha is None and args.bandwidth is None:
        return net
    return Network(
        net.name + " (overridden)",
        net.alpha if args.alpha is None else args.alpha,
        net.bandwidth if args.bandwidth is None else args.bandwidth,
    )


def _note(message: str) -> None:
    """A line for the user on stderr (stdout stays the tables, or the one JSON object)."""
    print(f"kfac-ext bench scaling: {message}", file=sys.stderr, flush=True)


def _measure_cpu(args) -> tuple[profiles.DeviceProfile, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        m = measure_profile(
            args.eigh_sizes,
            args.repeats,
            min_s=args.profile_seconds,
            max_s=max(PROFILE_MAX_SECONDS, 1.25 * args.profile_seconds),
        )
    except RuntimeError as exc:  # too few sizes monotone in n: the user can retry
        raise ValueError(f"--profile cpu: {exc} (--repeats, --eigh-sizes)") from None
    finally:
        torch.set_num_threads(threads)
    return m.profile, m.as_dict()


def _cpu_profile(args) -> tuple[profiles.DeviceProfile, dict, dict]:
    """This machine's profile: the cached one when it fits (profile_cache), else measured
    now and cached when its quiet windows were confirmed. Returns (profile, measurement,
    what the cache did)."""
    key = profile_cache.cache_key(args.threads, args.eigh_sizes, args.repeats, args.profile_seconds)
    path = None if args.no_profile_cache else (args.profile_cache or profile_cache.default_path(key))
    info: dict = {"path": path, "hit": False, "written": False, "why_measured": None, "key": key}
    if path is None:
        info["why_measured"] = "--no-profile-cache"
    elif args.reprofile:
        info["why_measured"] = "--reprofile"
    else:
        try:
            profile, measured = profile_cache.load(path, key)
        except profile_cache.CacheMissError as exc:
            info["why_measured"] = str(exc)
            if os.path.exists(path):
                _note(f"profile cache {path}: {exc}; measuring again")
        else:
            info["hit"] = True
            # memory is read, not measured: this machine's, whatever the cached one's
            return dataclasses.replace(profile, memory_bytes=_ram_bytes()), measured, info
    cap = max(PROFILE_MAX_SECONDS, 1.25 * args.profile_seconds)
    _note(
        f"measuring this machine's profile ({args.profile_seconds:g}-{cap:g} s, {args.threads} thread"
        f"{'s' if args.threads > 1 else ''})" + (f"; it will be cached in {path}" if path else "")
    )
    profile, measured = _measure_cpu(args)
    if path is not None:
        if not measured["confirmed"]:
            _note(
                f"not cached: quiet window not confirmed for {', '.join(measured['unconfirmed'])} "
                "(the machine was busy); the next run measures again"
            )
        else:
            try:
                profile_cache.save(path, key, measured)
                info["written"] = True
            except OSError as exc:
                _note(f"could not write the profile cache {path}: {exc.strerror or exc}")
    return profile, measured, info


def _ram_bytes() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _profile(args) -> tuple[profiles.DeviceProfile, dict | None, dict | None]:
    if args.profile == "cpu":
        return _cpu_profile(args)
    if args.profile == "v100":
        return calibrate.gpu_profile("v100", calibrate.V100_CALIBRATION["k"]), None, None
    if args.profile in PROFILES:
        return calibrate.gpu_profile(args.profile), None, None
    return profiles.from_json(args.profile), None, None


def _plot(rows, plans, path: str, title: str, limit: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    sgd = {}
    for name in ("COMM-OPT", "HYBRID-OPT", "MEM-OPT"):
        pts = [p for p in rows if p.strategy == name]
        if pts:
            ax_t.plot([p.ranks for p in pts], [p.kfac * 1e3 for p in pts], marker="o", label=f"K-FAC {name}")
            ax_m.plot([p.ranks for p in pts], [p.memory_total / 1e9 for p in pts], marker="o", label=name)
        for p in pts:
            sgd[p.ranks] = p.sgd
    xs = sorted(sgd)
    ax_t.plot(xs, [sgd[n] * 1e3 for n in xs], "k--", label="SGD")
    chosen = [p.choice for p in plans if p.choice is not None]
    ax_t.scatter(
        [c.ranks for c in chosen],
        [c.kfac * 1e3 for c in chosen],
        s=120,
        facecolors="none",
        edgecolors="red",
        label="recommended (own intervals)",
    )
    ax_m.axhline(limit / 1e9, color="red", linestyle=":", label="memory limit")
    for ax, label in ((ax_t, "time per step (ms)"), (ax_m, "memory per rank (GB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    _check_args(args)
    net = _network(args)
    factory = _factory(args.model)
    shape = args.input_shape or BUILTIN[args.model][1]
    try:
        work = workload_of(factory, shape, name=args.model, input_dtype=INPUT_DTYPES[args.input_dtype])
    except (RuntimeError, TypeError) as exc:  # the model rejects the shape, or needs arguments
        raise ValueError(
            f"--model {args.model} with --input-shape {','.join(map(str, shape))}: {' '.join(str(exc).split())[:300]}"
        ) from None
    profile, measured, cache = _profile(args)
    if args.eigh_latency_ms is not None:
        profile = dataclasses.replace(profile, eigh_latency_s=args.eigh_latency_ms / 1e3)
    limit = profile.memory_bytes if args.memory_limit_gb is None else args.memory_limit_gb * 1e9
    intervals = _intervals(args, args.factor_update_steps, args.inv_update_steps)
    common = dict(
        batch=args.batch_size,
        bucket_cap_mb=args.bucket_cap_mb,
        host_s=args.host_ms / 1e3,
        host_cost=HostCost(per_op_s=args.op_us / 1e6),
    )
    rows = [
        predict(work, n, profile, net, grad_workers=g, intervals=intervals, **common)
        for n in args.ranks
        for g in strategies(n).values()
    ]
    choices = sorted({1, 10, 50, args.factor_update_steps})
    inv_choices = sorted({10, 100, 1000, args.inv_update_steps})
    plans = [
        plan(
            work,
            n,
            profile,
            net,
            memory_limit=limit,
            max_overhead=args.max_overhead,
            factor_choices=choices,
            inv_choices=inv_choices,
            make_intervals=lambda f, i: _intervals(args, f, i),
            **common,
        )
        for n in args.ranks
    ]
    if args.plot:
        _plot(rows, plans, args.plot, f"{args.model}, batch {args.batch_size}/rank, {profile.name}, {net.name}", limit)
    command = "kfac-ext bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else ["scaling"])
    if args.json:
        print(
            json.dumps(
                {
                    "command": command,
                    "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
                    "model": {
                        "name": work.name,
                        "input_shape": list(shape),
                        "forward_flops": work.forward_flops,
                        "backward_flops": work.backward_flops,
                        "params": work.params,
                        "kfac_layers": len(work.layers),
                        "activation_bytes_per_sample": work.activation_bytes,
                        "forward_ops": work.forward_ops,
                        "backward_ops": work.backward_ops,
                        "param_tensors": work.param_tensors,
                    },
                    "op_us": args.op_us,
                    "profile": _finite(dataclasses.asdict(profile)),
                    "measured": measured,
                    "profile_cache": cache,
                    "network": dataclasses.asdict(net),
                    "batch_size": args.batch_size,
                    "intervals": {
                        "factor": args.factor_update_steps,
                        "inv": args.inv_update_steps,
                        "growth": args.interval_growth,
                        "growth_every": args.growth_every,
                        "steps": args.steps,
                    },
                    "memory_limit_bytes": limit,
                    "max_overhead": args.max_overhead,
                    "rows": [r.as_dict() for r in rows],
                    "plans": [p.as_dict() for p in plans],
                    "plot": args.plot or None,
                },
                allow_nan=False,
            )
        )
        return 0
    _print_tables(args, work, profile, net, measured, cache, rows, plans, limit, command)
    return 0


def _finite(d: dict) -> dict:
    """JSON has no infinity: an unbounded quantity (a profile without a memory size) is null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def _print_tables(args, work, profile, net, measured, cache, rows, plans, limit, command) -> None:
    print(
        f"{work.name}: {work.forward_flops * args.batch_size / 1e9:.1f} GFLOP forward, "
        f"{len(work.layers)} K-FAC layers, {work.params / 1e6:.2f} M parameters; batch "
        f"{args.batch_size} per rank; factors every {args.factor_update_steps}, "
        f"eigendecompositions every {args.inv_update_steps} steps"
        + (
            ""
            if args.interval_growth == 1
            else f", both x{args.interval_growth:g} every {args.growth_every} steps, averaged over {args.steps}"
        )
    )
    print(
        f"profile {profile.name}: dense {profile.flops_per_s / 1e12:.3g} TFLOP/s, eigh "
        f"{profile.eigh_latency_s * 1e3:.3g} ms + 9n^3 at {profile.eigh_flops_per_s / 1e12:.3g} "
        f"TFLOP/s, {profile.memory_bytes / 1e9:.3g} GB ({profile.source})"
    )
    if measured:
        fastest = [(n, round(t * 1e3, 3)) for n, t, _ in measured["samples"]]
        print(
            f"measured: eigh in quiet windows (n, ms) {fastest}, rejected {measured['rejected']}, "
            f"{measured['windows']} windows of {args.repeats} rounds, median / estimate: GEMM "
            f"{measured['gemm_spread']:.2f}x, eigh {measured['eigh_spread']:.2f}x"
            + ("" if measured["confirmed"] else f"; NOT confirmed: {', '.join(measured['unconfirmed'])}")
        )
    if cache:
        if cache["hit"]:
            state = "reused (--reprofile to measure again)"
        elif cache["written"]:
            state = f"measured now ({cache['why_measured']}), written"
        else:
            state = f"measured now ({cache['why_measured']}), not written"
        print(f"profile cache: {cache['path'] or 'none'}: {state}")
    print(
        f"network {net.name}: alpha {net.alpha * 1e6:g} us, {net.bandwidth / 1e9:g} GB/s; "
        f"host time {args.host_ms:g} ms/step, {args.op_us:g} us per op "
        f"({HostCost().ops(work)} ops a step: {work.forward_ops} forward, {work.backward_ops} backward, "
        f"6 x {work.param_tensors} optimizer)"
    )
    print(f"command: {command}")
    print()
    print(
        "| ranks | strategy | g | SGD ms | K-FAC ms | factors ms (compute + comm) "
        "| eigh ms (compute + comm) | precond ms | grads ms | memory GB/rank |"
    )
    print("|---:|---|---:|---:|---:|---|---|---:|---:|---:|")
    for p in rows:
        print(
            f"| {p.ranks} | {p.strategy} | {p.grad_workers} | {p.sgd * 1e3:.1f} "
            f"| {p.kfac * 1e3:.1f} | {p.factor_compute * 1e3:.1f} + {p.factor_comm * 1e3:.1f} "
            f"| {p.eigen_compute * 1e3:.1f} + {p.eigen_comm * 1e3:.2f} "
            f"| {p.precondition * 1e3:.1f} | {p.grad_comm * 1e3:.2f} "
            f"| {p.memory_total / 1e9:.2f} |"
        )
    print()
    print(f"Recommended (memory limit {limit / 1e9:.3g} GB/rank, K-FAC within {args.max_overhead:.0%} of SGD):")
    print()
    print("| ranks | strategy | factor/eigh every | K-FAC ms | x SGD | memory GB/rank | why |")
    print("|---:|---|---|---:|---:|---:|---|")
    for pl in plans:
        c = pl.choice
        if c is None:
            print(f"| {pl.ranks} | - | - | - | - | - | {pl.reason} |")
        else:
            print(
                f"| {pl.ranks} | {c.strategy}, grad_worker_fraction="
                f"{c.grad_workers}/{pl.ranks} | {c.intervals} "
                f"| {c.kfac * 1e3:.1f} | {c.kfac / c.sgd:.2f} | {c.memory_total / 1e9:.2f} "
                f"| {pl.reason} |"
            )
    if args.plot:
        print(f"\nplot: {args.plot}")
