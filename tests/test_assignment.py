"""The eigendecomposition assignment: valid, balanced, deterministic."""

import random

import pytest
from _brute_force import brute_force_makespan

from kfac_ext.assignment import assign_work, eigen_cost, lpt_assignment, makespan_lower_bound


def random_costs(rng, n):
    # ResNet-like factor sizes: the n^3 spread makes a few tasks dominate.
    return [eigen_cost(rng.choice([3, 17, 64, 147, 257, 577, 1153])) * rng.uniform(0.5, 1.5) for _ in range(n)]


@pytest.mark.parametrize("method", ["auto", "lpt"])
@pytest.mark.parametrize("seed", range(20))
def test_balanced_within_largest_task_of_lower_bound(seed, method):
    rng = random.Random(seed)
    n_workers = rng.choice([2, 3, 4, 8, 16])
    costs = random_costs(rng, rng.randint(1, 60))
    a = assign_work(costs, n_workers, method=method)
    assert len(a.owner) == len(costs)
    assert all(0 <= w < n_workers for w in a.owner)
    # loads are the sums of the owned costs
    for w in range(n_workers):
        assert a.loads[w] == pytest.approx(sum(costs[i] for i in a.tasks_of(w)))
    bound = makespan_lower_bound(costs, n_workers)
    assert a.makespan <= bound + max(costs) + 1e-12


@pytest.mark.parametrize("seed", range(25))
def test_no_worse_than_optimum_plus_largest_and_lpt_ratio(seed):
    rng = random.Random(100 + seed)
    n_workers = rng.choice([2, 3, 4])
    costs = [rng.uniform(0.1, 10.0) for _ in range(rng.randint(2, 8))]
    opt = brute_force_makespan(costs, n_workers)
    a = assign_work(costs, n_workers)
    assert a.makespan <= opt + max(costs) + 1e-12
    # Graham's bound for LPT: at most (4/3 - 1/(3m)) times the optimum.
    lpt = lpt_assignment(costs, n_workers)
    assert lpt.makespan <= (4 / 3 - 1 / (3 * n_workers)) * opt + 1e-9
    assert a.makespan <= lpt.makespan + 1e-12


def test_deterministic_and_ties_broken_by_index():
    costs = [1.0, 1.0, 1.0, 1.0]
    a = lpt_assignment(costs, 2)
    assert a.owner == (0, 1, 0, 1)
    assert assign_work(costs * 3, 4).owner == assign_work(costs * 3, 4).owner


def test_more_workers_than_tasks_leaves_idle_workers():
    a = assign_work([5.0, 3.0], 4)
    assert sorted(a.owner) == [0, 1] and a.makespan == 5.0
    assert assign_work([], 3).makespan == 0.0


def test_cost_model_grows_cubically_and_drops_broadcast_without_receivers():
    assert eigen_cost(200) / eigen_cost(100) == pytest.approx(8.0, rel=0.05)
    assert eigen_cost(100, receivers=0) < eigen_cost(100)


@pytest.mark.parametrize(
    "bad_costs, bad_workers, match",
    [
        ([1.0, -2.0], 2, r"costs\[1\]"),
        ([float("nan")], 2, r"costs\[0\]"),
        ([1.0], 0, "n_workers"),
    ],
)
def test_bad_input_names_the_argument(bad_costs, bad_workers, match):
    with pytest.raises(ValueError, match=match):
        assign_work(bad_costs, bad_workers)
    with pytest.raises(ValueError, match="method"):
        assign_work([1.0], 2, method="fastest")


def test_uses_the_exact_solver_where_lpt_is_not_optimal():
    costs = [3.0, 3.0, 2.0, 2.0, 2.0]  # LPT: {3,2,2} vs {3,2} -> 7; optimum {3,3} vs {2,2,2} -> 6
    assert lpt_assignment(costs, 2).makespan == 7.0
    a = assign_work(costs, 2)
    assert a.method == "optimal" and a.makespan == 6.0 == brute_force_makespan(costs, 2)
    assert assign_work(costs, 2, method="lpt").makespan == 7.0


def test_bad_time_limit_names_the_argument():
    for bad in (-1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="time_limit"):
            assign_work([1.0, 2.0, 3.0], 2, time_limit=bad)


def test_search_stopped_by_its_time_limit_says_so_and_keeps_a_valid_bound():
    rng = random.Random(0)
    costs = [rng.uniform(1.0, 2.0) for _ in range(41)]  # distinct sizes: no quick proof
    a = assign_work(costs, 4, time_limit=0.05)
    assert a.method == "best-found" and not a.optimal
    assert makespan_lower_bound(costs, 4) <= a.lower_bound < a.makespan
    assert 0 < a.gap < 0.05
    assert a.makespan <= lpt_assignment(costs, 4).makespan
