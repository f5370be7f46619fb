"""K-FAC work assignment: the exact makespan solver on identical workers."""

import random

import pytest
from _brute_force import brute_force_makespan

from kfac_ext.app.scaling import resnet50_factor_shapes
from kfac_ext.assignment import lpt_assignment, optimal_makespan_assignment


def check_consistent(costs, n_workers, res):
    assert len(res.owner) == len(costs)
    assert all(0 <= w < n_workers for w in res.owner)
    loads = [0.0] * n_workers
    for c, w in zip(costs, res.owner):
        loads[w] += c
    assert res.loads == pytest.approx(loads, rel=1e-12, abs=1e-9)
    assert res.makespan == pytest.approx(max(loads), rel=1e-12)
    assert res.lower_bound <= res.makespan * (1 + 1e-12)
    assert res.lower_bound >= max(costs) * (1 - 1e-12)
    assert res.lower_bound >= sum(costs) / n_workers * (1 - 1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_exact_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 8)
    n_workers = rng.randint(1, 4)
    if seed % 2:  # few distinct sizes, like factor sizes
        pool = [rng.randint(1, 9) ** 3 for _ in range(3)]
        costs = [float(rng.choice(pool)) for _ in range(n)]
    else:
        costs = [rng.uniform(0.0, 10.0) for _ in range(n)]
    res = optimal_makespan_assignment(costs, n_workers, time_limit=10.0)
    check_consistent(costs, n_workers, res)
    assert res.optimal
    assert res.makespan == pytest.approx(brute_force_makespan(costs, n_workers), rel=1e-12)


def test_lpt_is_not_always_optimal_but_search_is():
    # classic LPT counterexample: LPT gives 7 (5+2 | 4+3 ... ), optimum is 6
    costs = [3.0, 3.0, 2.0, 2.0, 2.0]
    lpt = lpt_assignment(costs, 2).makespan
    res = optimal_makespan_assignment(costs, 2)
    assert lpt == 7.0
    assert res.optimal and res.makespan == 6.0


@pytest.mark.parametrize("n_workers", [2, 3, 4, 5, 8, 16, 32, 64])
def test_resnet50_factor_sizes(n_workers):
    # The 108 factor sizes, A then G per layer (test_scaling checks the shapes themselves).
    sizes = [n for _, a, g in resnet50_factor_shapes() for n in (a, g)]
    assert len(sizes) == 108
    costs = [float(n) ** 3 + 8.0 * n * n for n in sizes]  # eigh flops + bytes to broadcast
    res = optimal_makespan_assignment(costs, n_workers, time_limit=1.0)
    check_consistent(costs, n_workers, res)
    assert res.makespan <= lpt_assignment(costs, n_workers).makespan
    if n_workers >= 5:  # the three 4608x4608 factors dominate: bound max(cost) is met
        assert res.optimal and res.makespan == max(costs)
    # optimal, or the reported bound is within a hair (the tail items are tiny)
    assert res.optimal or res.gap < 1e-5


def test_more_workers_than_tasks():
    res = optimal_makespan_assignment([5.0, 1.0, 3.0], 7)
    assert res.optimal and res.makespan == 5.0 and sorted(res.owner) == sorted(set(res.owner))


def test_empty_and_zero_costs():
    res = optimal_makespan_assignment([], 3)
    assert res.owner == () and res.makespan == 0.0 and res.optimal
    res = optimal_makespan_assignment([0.0, 0.0], 2)
    assert res.makespan == 0.0 and res.optimal


@pytest.mark.parametrize(
    "costs, n_workers, match",
    [
        ([1.0, -2.0], 2, r"costs\[1\]"),
        ([1.0, float("nan")], 2, r"costs\[1\]"),
        ([1.0], 0, "n_workers"),
        ([1.0], 2.5, "n_workers"),
    ],
)
def test_bad_input(costs, n_workers, match):
    with pytest.raises(ValueError, match=match):
        optimal_makespan_assignment(costs, n_workers)
