"""The one place the scaling model calls the library's eigendecomposition assignment.

Kept to one function so that a rename in ``kfac_ext.assignment`` (or the
placement engine's makespan solver behind it) is one import to fix.
"""

from __future__ import annotations

from collections.abc import Sequence

from kfac_ext.assignment import assign_work


def assign(costs: Sequence[float], n_workers: int, time_limit: float = 0.2) -> list[int]:
    """The owner (0..n_workers-1) of each task, minimising the slowest worker's summed cost:
    the placement engine's makespan solver when present, never worse than LPT."""
    if not costs:
        return []
    return list(assign_work(list(costs), n_workers, method="auto", time_limit=time_limit).owner)
