"""Checks and translations of :class:`~kfac_ext.preconditioner.KFACPreconditioner`'s
constructor arguments.

Drop-in for kfac-pytorch (0.4): its constructor takes some options as enums of
``kfac.enums`` (``ComputeMethod``, ``AssignmentStrategy``,
``DistributedStrategy``). They are read here by their member name, so passing
kfac-pytorch's enums works without importing kfac, and so do the strings
kfac-pytorch accepts ('eigen', 'COMPUTE', ...). Every function raises
``ValueError`` naming the argument and what it expected.
"""

from __future__ import annotations

import enum
import logging
import math
import numbers
import re
from collections.abc import Iterable
from typing import Any, Literal, overload

import torch

COMPUTE_METHODS = ("eigen", "inverse")
# compute: each eigendecomposition costs ~n^3 (plus sending its result);
# memory: ~n^2 (what holding its result costs): kfac-pytorch's two heuristics.
ASSIGNMENT_STRATEGIES = ("compute", "memory")
# Factor and second-order dtypes the kernels take (half types: no LAPACK/cuSOLVER).
KERNEL_DTYPES = (torch.float32, torch.float64)


def _member_name(value: object) -> str | None:
    """The lower-case name of an enum member or of a string, else None."""
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, str):
        return value.lower()
    return None


def _choice(arg: str, value: object, choices: tuple[str, ...]) -> str:
    name = _member_name(value)
    if name is None or name not in choices:
        raise ValueError(f"{arg} must be one of {choices} (or kfac-pytorch's enum member of that name); got {value!r}")
    return name


def compute_method(value: Any) -> str:
    """'eigen' or 'inverse' from a string or ``kfac.enums.ComputeMethod``."""
    return _choice("compute_method", value, COMPUTE_METHODS)


def assignment_strategy(value: Any) -> str:
    """'compute' or 'memory' from a string or ``kfac.enums.AssignmentStrategy``."""
    return _choice("assignment_strategy", value, ASSIGNMENT_STRATEGIES)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def grad_worker_fraction(value: Any, world_size: int) -> float:
    """A fraction in (0, 1] from a number or ``kfac.enums.DistributedStrategy``.

    COMM_OPT is 1, HYBRID_OPT 1/2 and MEM_OPT 1/world_size, as in kfac-pytorch.
    kfac-pytorch also reads the number 0 as MEM_OPT; here 0 is refused (a
    fraction of 0 grad workers is a typo as often as a choice).
    """
    strategies = {"comm_opt": 1.0, "hybrid_opt": 0.5, "mem_opt": 1.0 / world_size}
    if isinstance(value, (enum.Enum, str)):
        return strategies[_choice("grad_worker_fraction", value, tuple(strategies))]
    if not (_is_real(value) and math.isfinite(value) and 0 < value <= 1):
        raise ValueError(
            "grad_worker_fraction must be a number in (0, 1] (1 = COMM-OPT, "
            "1/world_size = MEM-OPT) or a DistributedStrategy (COMM_OPT, HYBRID_OPT, "
            f"MEM_OPT); got {value!r}"
        )
    return float(value)


def bucket_cap_mb(value: Any) -> float:
    """A finite size >= 0; 0 sends each factor in an all-reduce of its own (as kfac-pytorch)."""
    if not (_is_real(value) and math.isfinite(value) and value >= 0):
        raise ValueError(
            "allreduce_bucket_cap_mb must be a finite number >= 0 (0: no bucketing, "
            f"one all-reduce per factor); got {value!r}"
        )
    return float(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def accumulation_steps(value: Any) -> int:
    """Micro-batches per optimizer step: an integer >= 1."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1):
        raise ValueError(f"accumulation_steps must be a positive integer, got {value!r}")
    return int(value)


def inv_lag_steps(value: Any) -> int:
    """Steps between snapshotting factors and installing their decomposition: >= 0."""
    if not (_is_int(value) and value >= 0):
        raise ValueError(f"inv_lag_steps must be an integer >= 0, got {value!r}")
    return value


def max_factor_bytes(value: Any) -> int | None:
    """The dense-factor size above which a factor is kept diagonal; None: no limit."""
    if value is not None and not (_is_int(value) and value > 0):
        raise ValueError(f"max_factor_bytes must be a positive integer or None, got {value!r}")
    return value


def kfac_approx(value: Any) -> str:
    """'expand' or 'reduce' (Eschenhagen et al. 2023; docs/design.md §2a)."""
    if value not in ("expand", "reduce"):
        raise ValueError(f"kfac_approx must be 'expand' or 'reduce', got {value!r}")
    return value


def defaults(value: object) -> dict:
    """kfac-pytorch's ``defaults``: a dict (copied) or None."""
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"defaults must be a dict or None; got {type(value).__name__}")
    return dict(value or {})


def flag(arg: str, value: object) -> bool:
    """``value`` when it is a bool; a ValueError naming ``arg`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{arg} must be True or False; got {value!r}")
    return value


def skip_patterns(value: None | str | Iterable[str]) -> list[re.Pattern]:
    """Compiled case-insensitive regexes; None means none."""
    if value is None:
        return []
    patterns = [value] if isinstance(value, str) else value
    try:
        patterns = list(patterns)
    except TypeError:
        raise ValueError(
            f"skip_layers must be a string or a list of strings (regular expressions); got {value!r}"
        ) from None
    compiled = []
    for p in patterns:
        if not isinstance(p, str):
            raise ValueError(f"skip_layers must hold strings (regular expressions); got {p!r}")
        try:
            compiled.append(re.compile(p, re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"skip_layers: {p!r} is not a valid regular expression ({exc})") from None
    return compiled


@overload
def kernel_dtype(arg: str, value: Any, allow_none: Literal[False]) -> torch.dtype: ...
@overload
def kernel_dtype(arg: str, value: Any, allow_none: bool) -> torch.dtype | None: ...
def kernel_dtype(arg: str, value: Any, allow_none: bool) -> torch.dtype | None:
    """float32 or float64 (or None where allowed): the dtypes the factor kernels and the
    eigendecomposition / Cholesky take."""
    if value is None and allow_none:
        return None
    if value not in KERNEL_DTYPES:
        none = " or None" if allow_none else ""
        raise ValueError(
            f"{arg} must be torch.float32 or torch.float64{none} (the factor kernels "
            f"and the eigendecompositions run in these); got {value!r}"
        )
    return value


def loglevel(value: object) -> int:
    """A logging level: an int or a level name such as 'INFO'."""
    if isinstance(value, str) and isinstance(logging.getLevelName(value.upper()), int):
        return logging.getLevelName(value.upper())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= logging.CRITICAL:
        return value
    raise ValueError(
        f"loglevel must be a logging level from 0 to logging.CRITICAL (e.g. logging.INFO or 'INFO'); got {value!r}"
    )


class _ScaleFunction:
    """kfac-pytorch also takes a callable returning the current loss scale as grad_scaler."""

    def __init__(self, scale):
        self._scale = scale

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return float(self._scale())


def grad_scaler(value):
    """A GradScaler (with get_scale()), a callable returning the scale, or None."""
    if value is None or hasattr(value, "get_scale"):
        return value
    if callable(value):
        return _ScaleFunction(value)
    raise ValueError(
        "grad_scaler must be a torch.amp.GradScaler (with get_scale()) or a callable "
        f"returning the current scale; got {type(value).__name__}"
    )
