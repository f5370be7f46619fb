"""This machine's measured profile, kept on disk and reused: measured once, planned with often.

A profile of this CPU takes minutes to measure robustly (``measure.measure_profile``;
docs/distributed.md, "Profiling this machine": 120-150 s profiles repeat within 20 % at
load 3-6 where 30-90 s ones did not), and it describes the machine and the software, not
the run, so ``kfac-ext bench scaling --profile cpu`` keeps it in a cache file and reuses it.

A cached profile is valid for exactly what it was measured on and with, its ``key``:
the CPU model, the torch version (its BLAS/LAPACK and kernels), the torch threads while
timing, the measurement's settings (eigendecomposition sizes, rounds per window, the
time floor) and ``FORMAT``, the version of this file's layout and of the estimator that
filled it (bump it when ``measure_profile`` changes what it measures). The default file
is named by the key's hash under ``$XDG_CACHE_HOME/kfac_ext`` (``~/.cache/kfac_ext``
when unset or not absolute, as the XDG spec asks), so profiles of other settings sit
beside it; a file the user names may hold any key, and one that does not match is not
used. Only a measurement whose quiet windows were all confirmed is written: an
unconfirmed one is a bound, not a rate to reuse for weeks.

``load`` raises ``CacheMissError`` with a one-line reason (absent, unreadable, not JSON, not
a profile, another key); ``save`` writes atomically (a temporary file renamed over the
old one), so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
from collections.abc import Sequence

import torch

from kfac_ext.scaling.profiles import DeviceProfile

__all__ = ["FORMAT", "CacheMissError", "cpu_model", "cache_key", "default_path", "load", "save"]

# The cache file's layout and the estimator behind it (measure_profile as of h27g:
# windows confirmed within 5 %, latency timed directly at 4 x 4, thread CPU time).
FORMAT = 1


class CacheMissError(Exception):
    """The cache holds no usable profile for this key; ``str()`` is the one-line reason."""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's ``model name`` on Linux), else what
    ``platform`` knows (the processor, or the architecture)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cache_key(threads: int, sizes: Sequence[int], repeats: int, min_seconds: float, cpu: str | None = None) -> dict:
    """What a cached CPU profile is valid for: a JSON-able dict, compared whole."""
    return {
        "format": FORMAT,
        "device": "cpu",
        "cpu_model": cpu_model() if cpu is None else cpu,
        "torch": torch.__version__,
        "threads": int(threads),
        "eigh_sizes": sorted({int(n) for n in sizes}),
        "repeats": int(repeats),
        "min_seconds": float(min_seconds),
    }


def cache_dir() -> str:
    """``$XDG_CACHE_HOME/kfac_ext``, or ``~/.cache/kfac_ext`` when it is unset or relative."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kfac_ext")


def default_path(key: dict) -> str:
    """The default cache file of ``key``: named by a hash of the key, under ``cache_dir()``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"profile-cpu-{digest}.json")


def _differences(want: dict, got: object) -> str:
    if not isinstance(got, dict):
        return "no key"
    diff = [f"{k} {got.get(k)!r}, not {want[k]!r}" for k in want if got.get(k) != want[k]]
    return "; ".join(diff) or "another key"


def load(path: str, key: dict) -> tuple[DeviceProfile, dict]:
    """(profile, measurement dict as ``Measurement.as_dict``) cached at ``path`` for ``key``;
    ``CacheMissError`` with the reason when there is none to use."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CacheMissError("no cached profile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CacheMissError(f"unreadable ({type(exc).__name__}: {exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CacheMissError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("measured"), dict):
        raise CacheMissError("not a kfac_ext profile cache (no 'measured' object)")
    if data.get("key") != key:
        raise CacheMissError(f"measured for another machine or settings ({_differences(key, data.get('key'))})")
    measured = data["measured"]
    fields = {f.name for f in dataclasses.fields(DeviceProfile)}
    raw = measured.get("profile")
    if not isinstance(raw, dict) or not {"name", "flops_per_s", "eigh_flops_per_s"} <= raw.keys():
        raise CacheMissError("the cached profile lacks its rates")
    try:
        profile = DeviceProfile(**{k: v for k, v in raw.items() if k in fields and v is not None})
    except (TypeError, ValueError) as exc:
        raise CacheMissError(f"the cached profile is invalid ({exc})") from None
    if measured.get("confirmed") is not True:
        raise CacheMissError("the cached profile was not confirmed")
    return profile, measured


def save(path: str, key: dict, measured: dict) -> None:
    """Write ``measured`` (``Measurement.as_dict()``) for ``key`` to ``path`` atomically,
    creating its folder; ``OSError`` when it cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    profile = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in measured["profile"].items()}
    text = json.dumps({"key": key, "measured": {**measured, "profile": profile}}, indent=1, allow_nan=False)
    tmp = f"{os.path.abspath(path)}.{os.getpid()}.tmp"  # same folder, so the rename is atomic
    try:
        with open(tmp, "w", encoding="utf-8") as f:  # the user's umask, as any file they write
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
