"""plan_split: the placement the bound's dynamic program describes is valid, and on
ResNet-50's operator graph it certifies a 1 % gap with no search at all."""
import pathlib

import pytest

from _residual_graphs import residual_chain
from _small_graphs import brute_force, random_graph
from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency import latency_of
from kfac_ext.placement.latency_bound import latency_bound
from kfac_ext.placement.latency_bound_plan import plan_split, plan_start

WORKLOADS = pathlib.Path(__file__).resolve().parents[2] / "workloads" / "latency-inputs"


def _graphs():
    for seed in range(30):
        k, l = [(2, 1), (3, 1), (2, 2), (3, 0), (1, 2)][seed % 5]
        yield residual_chain(4000 + seed, n=7, k=k, l=l)
    for seed in range(20):
        yield random_graph(5000 + seed, n_nodes=7, k=3, l=seed % 3, colours=seed % 2 == 0, tight_memory=True)


@pytest.mark.parametrize("g", list(_graphs()))
def test_plan_split_is_a_valid_placement(g):
    placement = plan_split(g)
    if placement is None:
        pytest.skip("the plan does not fit the devices (counted in the next test)")
    value = latency_of(g, placement)  # raises on memory, colours, CPU-only nodes
    assert value >= brute_force(g, latency_of) - 1e-9 >= latency_bound(g) - 2e-9


def test_plan_split_is_found_often_on_small_graphs():
    found = [plan_split(g) is not None for g in _graphs()]
    assert sum(found) >= 0.8 * len(found)


@pytest.mark.skipif(not WORKLOADS.is_dir(), reason=f"no workloads at {WORKLOADS}")
def test_plan_split_certifies_resnet50_operator_graph_within_one_percent():
    g = Graph.from_json(WORKLOADS / "OperatorGraphs" / "resnet50_inference.json")
    value, bound = latency_of(g, plan_split(g)), latency_bound(g)
    assert value <= bound / (1 - 0.01)  # gap = (value - bound) / value <= 1 %


@pytest.mark.parametrize("seed", range(6))
def test_plan_start_polishes_the_plan(seed):
    g = residual_chain(6000 + seed, n=7, k=3, l=1)
    plan = plan_split(g)
    if plan is None:
        pytest.skip("the plan does not fit the devices")
    polished = plan_start(g, time_limit=2.0)
    assert latency_of(g, polished) <= latency_of(g, plan) + 1e-12  # valid, and no worse
