"""Hyperparameters that are a number or a schedule (a callable of the step).

Every K-FAC hyperparameter may be given as a plain number or as a callable
``f(step) -> number``. :class:`Hyperparameter` holds one, checks it when it is
built (a number is checked at once, a callable on its value at step 0) and on
every evaluation, and raises ``ValueError`` naming the argument otherwise, so a
schedule that drifts out of range fails loudly at the step where it does.

:class:`IntervalTracker` decides whether a step is an update step: ``step %
interval(step) == 0`` (kfac-pytorch's rule), for a constant interval, one that a
``LambdaParamScheduler`` rescales, and a schedule alike. The rule depends on the
step alone, so a resumed run, or one whose interval changed mid-run, updates on
the steps kfac-pytorch's would. The price: right after an interval changes, the
gap to the next update may be shorter than either interval (7 -> 8 at step 15:
updates at 14 and 16).

:func:`number_values` and :func:`checked_values` read and (all checked first) set
the hyperparameters that are numbers: what a checkpoint carries and what
:class:`kfac_ext.scheduler.LambdaParamScheduler` rescales.

:func:`growing_interval` builds the usual growing schedule.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

Number = int | float
# A hyperparameter's value: a number, or a callable of the step returning one.
NumberOrSchedule = Number | Callable[[int], Number]


def _is_number(value: object) -> bool:
    kind = type(value)
    if kind is float or kind is int:  # the common case, without the ABC check (~1 us)
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# Validators (of any value a user gives): return None when the value is acceptable, else
# what was expected.
def positive_int(value: Any) -> str | None:
    """An int >= 1 (not a bool)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1:
        return None
    return "a positive integer"


def non_negative(value: Any) -> str | None:
    """A finite number >= 0."""
    if _is_number(value) and math.isfinite(value) and value >= 0:
        return None
    return "a finite number >= 0"


def positive(value: Any) -> str | None:
    """A finite number > 0."""
    if _is_number(value) and math.isfinite(value) and value > 0:
        return None
    return "a finite number > 0"


def decay(value: Any) -> str | None:
    """A number in [0, 1)."""
    if _is_number(value) and 0 <= value < 1:
        return None
    return "a number in [0, 1)"


def positive_or_none(value: Any) -> str | None:
    """None, or a finite number > 0."""
    return None if value is None else positive(value)


_UNSET = object()


class Hyperparameter:
    """A named hyperparameter: a number or a callable of the step, validated."""

    def __init__(
        self,
        name: str,
        value: NumberOrSchedule | None,  # None where the validator allows it
        validator: Callable[[object], str | None],
    ):
        self.name = name
        self.validator = validator
        self.value = value

    @property
    def value(self) -> NumberOrSchedule | None:
        return self._value

    @value.setter
    def value(self, value: NumberOrSchedule | None) -> None:
        # Fail at once: a constant is checked now (and never again: it cannot
        # change without passing here), a schedule at step 0 and on every call.
        self._value = value
        self._constant = _UNSET
        checked = self(0)
        if not callable(value):
            self._constant = checked

    def __call__(self, step: int) -> Any:  # the validated value (None where allowed)
        if self._constant is not _UNSET:
            return self._constant
        value = self._value(step) if callable(self._value) else self._value
        expected = self.validator(value)
        if expected is not None:
            where = f" (schedule value at step {step})" if callable(self.value) else ""
            raise ValueError(f"{self.name} must be {expected}, got {value!r}{where}")
        return value

    def __repr__(self) -> str:
        return f"{self.name}={'<schedule>' if callable(self.value) else repr(self.value)}"

    # kfac-pytorch's preconditioner.damping (and the rest) is the current number: a
    # constant here converts and formats as that number; a schedule needs the step.
    def _number(self):
        if callable(self.value):
            raise TypeError(f"{self.name} is a schedule: call it with the step, {self.name}(preconditioner.steps)")
        return self.value

    def __float__(self) -> float:
        return float(self._number())

    def __int__(self) -> int:
        return int(self._number())

    def __format__(self, spec: str) -> str:
        return format(repr(self) if callable(self.value) else self.value, spec)


class IntervalTracker:
    """Decides update steps for an interval that may change with the step.

    A step ``s`` is an update step when ``s % interval(s) == 0``, or when nothing
    was updated yet (``last`` is None: a fresh start, or a loaded checkpoint whose
    second-order data must be recomputed). ``mark(s)`` records that step ``s``
    updated.
    """

    def __init__(self, interval: Hyperparameter):
        self.interval = interval
        self.last: int | None = None

    def is_due(self, step: int) -> bool:
        interval = self.interval(step)  # evaluated always: a bad schedule value fails here
        return self.last is None or step % interval == 0

    def mark(self, step: int) -> None:
        self.last = step

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.last = state["last"]


def number_values(hyperparameters: Iterable[Hyperparameter]) -> dict:
    """name -> value of each hyperparameter given as a number (a schedule needs no
    saving: it is a function of the step)."""
    return {h.name: h.value for h in hyperparameters if not callable(h.value)}


def checked_values(hyperparameters: Iterable[Hyperparameter], values: dict, *, schedules: str = "refuse") -> list:
    """``[(hyperparameter, new value)]`` for ``values`` (name -> number), every one
    validated before the caller assigns any. A name that is no hyperparameter is a
    ``ValueError``; so is a value its validator refuses. A hyperparameter that is a
    schedule here is refused (``schedules='refuse'``: replacing a callable of the
    step by a number would drop it silently) or left out (``'skip'``: a checkpoint
    of a run that had a number, resumed with a schedule, keeps the schedule)."""
    if not isinstance(values, dict):
        raise ValueError(f"hyperparameter values must be a dict of name -> number; got {type(values).__name__}")
    by_name = {h.name: h for h in hyperparameters}
    out = []
    for name, value in values.items():
        h = by_name.get(name)
        if h is None:
            raise ValueError(f"{name!r} is not a hyperparameter (one of {sorted(by_name)})")
        if callable(h.value):
            if schedules == "skip":
                continue
            raise ValueError(
                f"{name} is a schedule (a callable of the step); it cannot be "
                "set to a number (give a number at construction to change it later)"
            )
        expected = h.validator(value)
        if expected is not None:
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        out.append((h, value))
    return out


def growing_interval(
    start: int, factor: float = 2.0, every: int = 1000, maximum: int | None = None
) -> Callable[[int], int]:
    """Interval schedule ``start * factor**(step // every)``, capped at ``maximum``.

    For dynamic update decoupling: refresh factors/eigenbases often early in
    training and less often as the curvature settles.
    """
    for name, value, check in (("start", start, positive_int), ("every", every, positive_int)):
        expected = check(value)
        if expected is not None:
            raise ValueError(f"{name} must be {expected}, got {value!r}")
    if not (_is_number(factor) and factor >= 1):
        raise ValueError(f"factor must be a number >= 1, got {factor!r}")
    if maximum is not None and positive_int(maximum) is not None:
        raise ValueError(f"maximum must be a positive integer or None, got {maximum!r}")

    def interval(step: int) -> int:
        value = int(start * factor ** (step // every))
        return min(value, maximum) if maximum is not None else value

    return interval
