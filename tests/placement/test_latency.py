"""Latency objective: the schedule by hand, brute force vs the latency MILP, bounds."""
import pathlib

import pytest

from _small_graphs import all_placements, brute_force, node, random_graph
from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency import latency_lower_bound, latency_of, latency_schedule
from kfac_ext.placement.milp import MilpError, solve_milp
from kfac_ext.placement.objective import Placement, PlacementError


def triangle(k=1, l=1):
    # 1 -> 2 -> 3 and 1 -> 3
    nodes = [node(1, 1.0, 10.0, 0.5), node(2, 2.0, 20.0, 0.25), node(3, 3.0, 30.0, 0.0)]
    return Graph(nodes, [(1, 2), (2, 3), (1, 3)], k, l, 100.0)


def test_schedule_by_hand():
    g = triangle()
    p = Placement([[1, 3]], [[2]])
    sched = latency_schedule(g, p)
    # 1 on the accelerator [0, 1]; its output to the host (+0.5): 2 on the CPU [1.5, 21.5];
    # 2's output back to the accelerator (+0.25): 3 at 21.75 for 3 -> 24.75
    assert (sched[1].start, sched[1].finish) == (0.0, 1.0)
    assert (sched[2].start, sched[2].finish) == (1.5, 21.5)
    assert sched[3].start == pytest.approx(21.75) and sched[3].finish == pytest.approx(24.75)
    assert latency_of(g, p) == pytest.approx(24.75)
    # accelerator -> accelerator goes through the host: two copies
    g2 = triangle(k=2, l=0)
    assert latency_of(g2, Placement([[1, 3], [2]], [])) == pytest.approx(1 + 1.0 + 2 + 0.5 + 3)
    # all on one accelerator: no transfers at all
    assert latency_of(g, Placement([[1, 2, 3]], [[]])) == pytest.approx(6.0)


def test_one_device_runs_one_node_at_a_time():
    # two independent branches a, b feeding c
    nodes = [node(1, 4.0, 4.0, 0.0), node(2, 3.0, 3.0, 0.0), node(3, 1.0, 1.0, 0.0)]
    g = Graph(nodes, [(1, 3), (2, 3)], 2, 0, 100.0)
    assert latency_of(g, Placement([[1, 2, 3], []])) == pytest.approx(8.0)  # serial
    assert latency_of(g, Placement([[1, 3], [2]])) == pytest.approx(5.0)  # parallel
    with pytest.raises(PlacementError):
        latency_of(g, Placement([[1, 2], []]))  # node 3 unplaced


@pytest.mark.parametrize("seed", range(10))
def test_milp_equals_brute_force(seed):
    g = random_graph(200 + seed, n_nodes=5, k=2, l=1, colours=seed % 3 == 0,
                     tight_memory=seed % 2 == 0)
    sol = solve_milp(g, objective="latency", time_limit=30)
    assert sol.objective == "latency" and sol.optimal
    assert sol.value == pytest.approx(brute_force(g, latency_of), rel=1e-9, abs=1e-9)
    assert sol.value == pytest.approx(latency_of(g, sol.placement))
    assert sol.lower_bound <= sol.value + 1e-9
    for p in all_placements(g):  # the path bound holds for every valid placement
        try:
            assert latency_lower_bound(g) <= latency_of(g, p) + 1e-9
        except PlacementError:
            pass


def test_milp_keeps_a_better_warm_start():
    g = random_graph(300, n_nodes=6, k=2, l=1)
    best_by_brute_force = brute_force(g, latency_of)
    best = min((p for p in all_placements(g) if _valid(g, p)), key=lambda p: latency_of(g, p))
    sol = solve_milp(g, objective="latency", time_limit=0.05, warm_start=best)
    assert sol.value == pytest.approx(best_by_brute_force)


def _valid(g, p):
    try:
        latency_of(g, p)
        return True
    except PlacementError:
        return False


WORKLOADS = pathlib.Path(__file__).resolve().parents[2] / "workloads" / "latency-inputs"


@pytest.mark.skipif(not WORKLOADS.is_dir(), reason=f"no workloads at {WORKLOADS}")
def test_real_workload_short_time_limit():
    g = Graph.from_json(WORKLOADS / "LayerGraphs" / "bert24_inference.json")
    sol = solve_milp(g, objective="latency", time_limit=3.0)
    assert sol.value <= sol.stats["warm_start_value"] + 1e-9
    assert latency_lower_bound(g) <= sol.lower_bound + 1e-9 <= sol.value + 2e-9
    assert sol.value == pytest.approx(latency_of(g, sol.placement))


def test_too_wide_for_the_program():
    # ten independent nodes: 45 unordered pairs
    g = Graph([node(i, 1.0, 2.0, 0.0) for i in range(1, 11)], [], 2, 1, 100.0)
    with pytest.raises(MilpError, match="max_pairs"):
        solve_milp(g, objective="latency", max_pairs=10)


@pytest.mark.parametrize("seed", range(6))
def test_chain_split_is_optimal_on_chains(seed):
    # on a chain with an accelerator per node to spare, the chain DP's cost is the
    # exact latency and contiguous segments lose nothing: it must match brute force
    import random

    from kfac_ext.placement.latency import chain_split

    rng = random.Random(seed)
    n = 5
    nodes = [node(i, rng.uniform(0.5, 3), rng.uniform(1, 8), rng.uniform(0, 2) if i < n else 0.0,
                  size=float(rng.randint(1, 5))) for i in range(1, n + 1)]
    g = Graph(nodes, [(i, i + 1) for i in range(1, n)], n, 1, 6.0)
    p = chain_split(g)
    assert latency_of(g, p) == pytest.approx(brute_force(g, latency_of), rel=1e-12)
