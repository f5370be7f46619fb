"""Hyperparameters that are a number or a schedule (a callable of the step).

Every K-FAC hyperparameter may be given as a plain number or as a callable
``f(step) -> number``. :class:`Hyperparameter` holds one, checks it when it is
built (a number is checked at once, a callable on its value at step 0) and on
every evaluation, and raises ``ValueError`` naming the argument otherwise, so a
schedule that drifts out of range fails loudly at the step where it does.

:class:`IntervalTracker` decides whether a step is an update step when the
interval itself may change ("dynamic update decoupling"): a step updates when
at least ``interval(step)`` steps have passed since the previous update. With a
constant interval ``k`` and a start at step 0 this is ``step % k == 0``.

:func:`growing_interval` builds the usual growing schedule.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

Number = int | float
# A hyperparameter's value: a number, or a callable of the step returning one.
NumberOrSchedule = Number | Callable[[int], Number]


def _is_number(value) -> bool:
    kind = type(value)
    if kind is float or kind is int:  # the common case, without the ABC check (~1 us)
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# Validators: return None when the value is acceptable, else what was expected.
def positive_int(value) -> Optional[str]:
    """An int >= 1 (not a bool)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return None
    return "a positive integer"


def non_negative(value) -> Optional[str]:
    """A finite number >= 0."""
    if _is_number(value) and math.isfinite(value) and value >= 0:
        return None
    return "a finite number >= 0"


def positive(value) -> Optional[str]:
    """A finite number > 0."""
    if _is_number(value) and math.isfinite(value) and value > 0:
        return None
    return "a finite number > 0"


def decay(value) -> Optional[str]:
    """A number in [0, 1)."""
    if _is_number(value) and 0 <= value < 1:
        return None
    return "a number in [0, 1)"


def positive_or_none(value) -> Optional[str]:
    """None, or a finite number > 0."""
    return None if value is None else positive(value)


_UNSET = object()


class Hyperparameter:
    """A named hyperparameter: a number or a callable of the step, validated."""

    def __init__(self, name: str, value: NumberOrSchedule,
                 validator: Callable[[object], Optional[str]]):
        self.name = name
        self.validator = validator
        self.value = value

    @property
    def value(self) -> NumberOrSchedule:
        return self._value

    @value.setter
    def value(self, value: NumberOrSchedule) -> None:
        # Fail at once: a constant is checked now (and never again: it cannot
        # change without passing here), a schedule at step 0 and on every call.
        self._value = value
        self._constant = _UNSET
        checked = self(0)
        if not callable(value):
            self._constant = checked

    def __call__(self, step: int):
        if self._constant is not _UNSET:
            return self._constant
        value = self._value(step) if callable(self._value) else self._value
        expected = self.validator(value)
        if expected is not None:
            where = f" (schedule value at step {step})" if callable(self.value) else ""
            raise ValueError(f"{self.name} must be {expected}, got {value!r}{where}")
        return value

    def __repr__(self) -> str:
        return f"{self.name}={'<schedule>' if callable(self.value) else self.value!r}"


class IntervalTracker:
    """Decides update steps for an interval that may change with the step.

    A step ``s`` is an update step when nothing was updated yet, or when
    ``s - last >= interval(s)``. ``mark(s)`` records that step ``s`` updated.
    """

    def __init__(self, interval: Hyperparameter):
        self.interval = interval
        self.last: Optional[int] = None

    def is_due(self, step: int) -> bool:
        interval = self.interval(step)
        return self.last is None or step - self.last >= interval

    def mark(self, step: int) -> None:
        self.last = step

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.last = state["last"]


def growing_interval(start: int, factor: float = 2.0, every: int = 1000,
                     maximum: Optional[int] = None) -> Callable[[int], int]:
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
