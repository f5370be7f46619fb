"""kfac_ext.schedules: number-or-callable hyperparameters and interval tracking."""

import pytest

from kfac_ext import schedules as sch


def test_hyperparameter_number_and_schedule():
    assert sch.Hyperparameter("damping", 0.1, sch.non_negative)(5) == 0.1
    h = sch.Hyperparameter("damping", lambda s: 0.1 / (1 + s), sch.non_negative)
    assert h(3) == pytest.approx(0.025)
    assert "schedule" in repr(h)


@pytest.mark.parametrize(
    "validator, bad",
    [
        (sch.positive_int, 0),
        (sch.positive_int, 1.5),
        (sch.positive_int, True),
        (sch.non_negative, -1e-9),
        (sch.non_negative, float("nan")),
        (sch.decay, 1.0),
        (sch.positive_or_none, 0.0),
    ],
)
def test_validators_reject(validator, bad):
    with pytest.raises(ValueError, match="x must be"):
        sch.Hyperparameter("x", bad, validator)


def test_interval_tracker_matches_modulo_for_constant_interval():
    t = sch.IntervalTracker(sch.Hyperparameter("k", 3, sch.positive_int))
    due = []
    for s in range(10):
        if t.is_due(s):
            t.mark(s)
            due.append(s)
    assert due == [s for s in range(10) if s % 3 == 0]


def test_growing_interval_and_its_checks():
    f = sch.growing_interval(2, factor=3, every=4, maximum=10)
    assert [f(s) for s in (0, 3, 4, 8, 100)] == [2, 2, 6, 10, 10]
    for kwargs in (dict(start=0), dict(start=1, factor=0.5), dict(start=1, every=0), dict(start=1, maximum=0)):
        with pytest.raises(ValueError):
            sch.growing_interval(**kwargs)
