"""Exact latency (branch and bound, the authors' IP on HiGHS) against brute force in the
paper's model: random graphs and windows of the bundled workloads, 1-3 accelerators,
binding memory caps, colour classes, CPU-only nodes."""

import math
import pathlib

import pytest
from _latency_brute import brute_force_latency, window
from _small_graphs import random_graph

from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency.exact import branch_and_bound
from kfac_ext.placement.latency.ip import solve_ip
from kfac_ext.placement.latency.model import Split, latency_of

WORKLOADS = pathlib.Path(__file__).resolve().parents[2] / "workloads" / "latency-inputs"
needs_workloads = pytest.mark.skipif(not WORKLOADS.is_dir(), reason=f"no workloads at {WORKLOADS}")


def small(seed):
    return random_graph(seed, n_nodes=4 + seed % 4, k=1 + seed % 3, colours=seed % 2 == 0, tight_memory=seed % 3 != 2)


@pytest.mark.parametrize("seed", range(24))
def test_branch_and_bound_is_the_brute_force_optimum(seed):
    g = small(seed)
    best = brute_force_latency(g)
    r = branch_and_bound(g, time_limit=30)
    assert r.optimal and r.value == pytest.approx(best)
    assert latency_of(g, r.split) == pytest.approx(r.value)
    assert r.bound == pytest.approx(best)


@pytest.mark.parametrize("seed", range(12))
def test_ip_is_the_brute_force_optimum(seed):
    g = small(seed)
    r = solve_ip(g, Split.of([], g.ids), time_limit=30)
    assert r.optimal and r.value == pytest.approx(brute_force_latency(g), abs=1e-6)
    assert latency_of(g, r.split) == pytest.approx(r.value)


@pytest.mark.parametrize("seed", range(6))
def test_ip_with_two_calls_per_accelerator(seed):
    g = random_graph(seed, n_nodes=5, k=1 + seed % 2, colours=seed % 2 == 0, tight_memory=True)
    best = brute_force_latency(g, subgraphs=2)
    r = solve_ip(g, Split.of([], g.ids), time_limit=30, subgraphs=2)
    assert r.optimal and r.value == pytest.approx(best, abs=1e-6)
    assert latency_of(g, r.split, subgraphs=2) == pytest.approx(best)
    assert best <= brute_force_latency(g) + 1e-9  # more calls can only help


def test_stopped_search_reports_a_valid_bound():
    g = random_graph(3, n_nodes=11, k=3, tight_memory=True)
    optimum = branch_and_bound(g, time_limit=60).value
    r = branch_and_bound(g, time_limit=0.0)
    assert not r.optimal and r.bound <= optimum + 1e-9
    assert r.split is None or latency_of(g, r.split) == pytest.approx(r.value)


def test_answer_does_not_depend_on_the_file_order():
    g = random_graph(8, n_nodes=7, k=2, tight_memory=True)
    h = Graph(list(reversed(g.nodes)), g.edges, 2, 1, g.memory_cap)
    assert branch_and_bound(g, 30).value == pytest.approx(branch_and_bound(h, 30).value)


@needs_workloads
@pytest.mark.parametrize(
    "name,start,k,share",
    [
        ("LayerGraphs/bert24_inference.json", 0, 2, 0.6),
        ("LayerGraphs/gnmt_inference.json", 10, 3, 0.4),
        ("LayerGraphs/inceptionv3_inference.json", 20, 2, 0.5),
        ("OperatorGraphs/bert_l-3_inference.json", 30, 2, 0.7),
    ],
)
def test_windows_of_the_workloads(name, start, k, share):
    g = window(Graph.from_json(WORKLOADS / name), start, 7, k, share)
    best = brute_force_latency(g)
    r = branch_and_bound(g, time_limit=60)
    assert r.optimal and r.value == pytest.approx(best) and math.isfinite(best)
    assert solve_ip(g, r.split, time_limit=60).value == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("q", [1, 2])
def test_ip_warm_start_satisfies_every_row(q):
    """HiGHS drops a warm start that breaks a row: ours must satisfy all of them, the
    accelerator-ordering rows included (the start is relabelled to match)."""
    from kfac_ext.placement.latency.ip import _LatencyIp
    from kfac_ext.placement.latency.model import evaluate
    from kfac_ext.placement.latency.starts import interval_split, orders

    for seed in range(8):
        g = random_graph(seed, n_nodes=7, k=3, colours=seed % 2 == 0, tight_memory=True)
        for order in orders(g, 3):
            split = interval_split(g, order)
            ip = _LatencyIp(g, q, evaluate(g, split, q).latency, 0.0)
            values, prog = ip.values_of(split), ip.prog
            for r in range(len(prog.row_lower)):
                activity = sum(prog.value[t] * values[prog.index[t]] for t in range(prog.starts[r], prog.starts[r + 1]))
                assert prog.row_lower[r] - 1e-6 <= activity <= prog.row_upper[r] + 1e-6
            assert all(lo - 1e-9 <= x <= hi + 1e-9 for x, lo, hi in zip(values, prog.lower, prog.upper))


def test_solve_latency_checks_its_arguments_and_keeps_the_cpu_pool():
    from kfac_ext.placement.latency import solve_latency

    g = random_graph(1, n_nodes=5)
    for bad in ({"time_limit": 0}, {"time_limit": float("nan")}, {"subgraphs": 0}, {"subgraphs": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            solve_latency(g, **bad)
    no_cpus = Graph(g.nodes, g.edges, g.num_accelerators, 0, g.memory_cap)
    assert solve_latency(no_cpus, time_limit=10).value == pytest.approx(brute_force_latency(g))
