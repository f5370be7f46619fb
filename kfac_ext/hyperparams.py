"""kfac-pytorch's ``kfac.hyperparams``: a factor_decay schedule from Martens & Grosse (2015).

Pass ``factor_decay=exp_decay_factor_averaging()``: early factor updates then
weigh the new batch as a plain mean would (β = 1 − 1/k at step k), later ones
with the usual fixed β (``min_value``).
"""

from __future__ import annotations

from collections.abc import Callable


def exp_decay_factor_averaging(min_value: float = 0.95) -> Callable[[int], float]:
    """The schedule ``step -> min(1 - 1/step, min_value)`` (step 0 counts as 1, so
    the first update replaces the identity by the batch's factor)."""
    if not min_value > 0:
        raise ValueError(f"min_value must be > 0, got {min_value!r}")

    def factor_decay(step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step!r}")
        return min(1.0 - 1.0 / max(step, 1), min_value)

    return factor_decay
