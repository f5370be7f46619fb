"""Which strategy and update intervals to use on N ranks under a memory limit.

Candidates: every grad-worker count g (COMM-OPT g = N, MEM-OPT g = 1, HYBRID-OPT
every power of two between that divides N: ``grad_worker_fraction = g / N``, KAISA's
memory/communication knob) times every pair of intervals (factor interval <=
eigendecomposition interval) from the candidate lists. A
candidate is feasible when its memory per rank fits ``memory_limit`` (bytes).
Fresher curvature converges in fewer steps, so among the feasible candidates
whose K-FAC step stays within ``max_overhead`` of the SGD step the plan takes
the most frequent eigendecompositions, then the most frequent factor updates,
then the fastest step. When none stays within the budget it takes the fastest
feasible candidate and says so (``within_budget``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from kfac_ext.scaling.network import Network
from kfac_ext.scaling.profiles import DeviceProfile
from kfac_ext.scaling.step import Intervals, StepTime, predict, strategies
from kfac_ext.scaling.workload import Workload

__all__ = ["Plan", "plan", "grad_worker_counts"]


def grad_worker_counts(ranks: int) -> list[int]:
    """1, N and every power of two dividing N: the grad-worker counts the planner tries."""
    powers = {2**k for k in range(ranks.bit_length()) if ranks % 2**k == 0}
    return sorted(powers | set(strategies(ranks).values()))


@dataclasses.dataclass(frozen=True)
class Plan:
    """The recommendation for one rank count: the fastest strategy that fits the memory limit, and why."""

    ranks: int
    choice: StepTime | None  # None: nothing fits the memory limit
    within_budget: bool
    reason: str

    @property
    def grad_worker_fraction(self) -> float | None:
        """The ``KFACPreconditioner(grad_worker_fraction=...)`` that runs the choice."""
        return None if self.choice is None else self.choice.grad_workers / self.ranks

    def as_dict(self) -> dict:
        return {
            "ranks": self.ranks,
            "within_budget": self.within_budget,
            "reason": self.reason,
            "grad_worker_fraction": self.grad_worker_fraction,
            "choice": None if self.choice is None else self.choice.as_dict(),
        }


def plan(
    work: Workload,
    ranks: int,
    profile: DeviceProfile,
    net: Network,
    *,
    batch: int,
    memory_limit: float,
    max_overhead: float = 0.25,
    factor_choices: Sequence[int] = (1, 10, 50),
    inv_choices: Sequence[int] = (10, 100, 1000),
    make_intervals: Callable[[int, int], Intervals] = Intervals,
    **predict_kwargs,
) -> Plan:
    """``make_intervals(factor, inv)`` turns a candidate pair into ``Intervals`` (a schedule
    that starts there, say)."""
    if not memory_limit > 0:
        raise ValueError(f"memory_limit must be > 0 bytes, got {memory_limit!r}")
    if not max_overhead >= 0:
        raise ValueError(f"max_overhead must be >= 0, got {max_overhead!r}")
    fits, smallest = [], None
    for g in grad_worker_counts(ranks):
        for fi in factor_choices:
            for ii in inv_choices:
                if fi > ii:
                    continue
                step = predict(
                    work,
                    ranks,
                    profile,
                    net,
                    batch=batch,
                    grad_workers=g,
                    intervals=make_intervals(fi, ii),
                    **predict_kwargs,
                )
                if smallest is None or step.memory_total < smallest.memory_total:
                    smallest = step
                if step.memory_total <= memory_limit:
                    fits.append((ii, fi, step))
    if not fits:
        return Plan(
            ranks,
            None,
            False,
            f"nothing fits {memory_limit / 1e9:.3g} GB per rank; the least memory is "
            f"{smallest.memory_total / 1e9:.3g} GB ({smallest.strategy})",
        )
    budget = [(ii, fi, s) for ii, fi, s in fits if s.kfac <= (1 + max_overhead) * s.sgd]
    if budget:
        ii, fi, best = min(budget, key=lambda c: (c[0], c[1], c[2].kfac))
        return Plan(
            ranks,
            best,
            True,
            f"most frequent updates within {max_overhead:.0%} of SGD's step that fit {memory_limit / 1e9:.3g} GB",
        )
    ii, fi, best = min(fits, key=lambda c: c[2].kfac)
    return Plan(
        ranks,
        best,
        False,
        f"no candidate stays within {max_overhead:.0%} of SGD's step; the fastest "
        f"that fits {memory_limit / 1e9:.3g} GB",
    )
