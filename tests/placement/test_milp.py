"""Non-contiguous throughput MILP (HiGHS): brute force on tiny graphs, never worse than the DP."""

import pathlib

import pytest
from _small_graphs import brute_force, random_graph

from kfac_ext.placement.dp import ideal_dp
from kfac_ext.placement.graph import Graph
from kfac_ext.placement.milp import solve_milp
from kfac_ext.placement.objective import Placement, throughput_loads

WORKLOADS = pathlib.Path(__file__).resolve().parents[2] / "workloads" / "throughput-inputs"
needs_workloads = pytest.mark.skipif(not WORKLOADS.is_dir(), reason=f"no workloads at {WORKLOADS}")


def max_load(graph, placement):
    return throughput_loads(graph, placement)[0]


@pytest.mark.parametrize("seed", range(12))
def test_equals_brute_force_and_beats_dp(seed):
    g = random_graph(seed, n_nodes=6, k=2, l=seed % 2, colours=seed % 3 == 0, tight_memory=seed % 4 == 1)
    sol = solve_milp(g, time_limit=30)
    assert sol.optimal
    assert sol.value == pytest.approx(brute_force(g, max_load), rel=1e-9, abs=1e-9)
    assert sol.value <= ideal_dp(g).value + 1e-9
    # the reported loads recompute from the graph alone
    value, acc, cpu = throughput_loads(g, sol.placement)
    assert sol.value == pytest.approx(value) and sol.accel_loads == pytest.approx(acc)
    assert sol.lower_bound <= sol.value + 1e-9
    assert sol.to_json()["objective"] == "throughput" and sol.method == "milp"


def test_three_accelerators_symmetry_breaking_keeps_optimum():
    g = random_graph(101, n_nodes=6, k=3, l=0)
    sol = solve_milp(g, time_limit=30)
    assert sol.optimal
    assert sol.value == pytest.approx(brute_force(g, max_load), rel=1e-9)


def test_never_worse_than_given_warm_start():
    g = random_graph(7, n_nodes=6, k=2, l=1)
    start = ideal_dp(g)
    sol = solve_milp(g, time_limit=0.05, warm_start=start)  # too short to prove anything
    assert sol.value <= start.value + 1e-12
    assert sol.stats["warm_start_value"] == pytest.approx(start.value)
    # a deliberately poor placement as start is improved on (or kept)
    everything = Placement([[n.id for n in g.nodes], []], [[]])
    poor = max_load(g, everything)
    sol = solve_milp(g, time_limit=30, warm_start=everything)
    assert sol.value <= poor and sol.optimal


@needs_workloads
@pytest.mark.parametrize("name", ["LayerGraphs/bert24_inference.json", "OperatorGraphs/bert_l-3_inference.json"])
def test_real_workload_short_time_limit(name):
    g = Graph.from_json(WORKLOADS / name)
    dp = ideal_dp(g)
    sol = solve_milp(g, time_limit=3.0)
    assert sol.value <= dp.value * (1 + 1e-12)
    assert 0.0 <= sol.lower_bound <= sol.value
    assert 0.0 <= sol.stats["gap"] <= 1.0
    assert sol.stats["warm_start_value"] == pytest.approx(dp.value)
    assert sol.value == pytest.approx(throughput_loads(g, sol.placement)[0])


def test_bad_arguments():
    g = random_graph(0)
    with pytest.raises(ValueError, match="time_limit"):
        solve_milp(g, time_limit=0)
