"""Latency at scale on the bundled workloads: certified answers in seconds where the
bound meets the search, and on every file a valid placement whose value recomputes."""
import pathlib
import random

import pytest

from _small_graphs import random_graph
from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency import latency_of
from kfac_ext.placement.latency_bound import bound_paths, latency_bound
from kfac_ext.placement.latency_search import FastLatency, chain_order, improve, iterated_search, path_split
from kfac_ext.placement.milp import solve_milp
from kfac_ext.placement.objective import Placement

WORKLOADS = pathlib.Path(__file__).resolve().parents[2] / "workloads" / "latency-inputs"
needs_workloads = pytest.mark.skipif(not WORKLOADS.is_dir(), reason=f"no workloads at {WORKLOADS}")


@needs_workloads
@pytest.mark.parametrize("name,gap", [("LayerGraphs/bert24_inference.json", 1e-6),
                                      ("LayerGraphs/gnmt_inference.json", 1e-6),
                                      ("OperatorGraphs/bert_l-3_inference.json", 0.01)])
def test_certified_within_gap(name, gap):
    g = Graph.from_json(WORKLOADS / name)
    sol = solve_milp(g, objective="latency", time_limit=8)  # bert_l-3 searches to the limit
    assert sol.value == pytest.approx(latency_of(g, sol.placement), rel=1e-12)
    assert min(latency_bound(g), sol.value) - 1e-9 <= sol.lower_bound <= sol.value
    assert sol.stats["gap"] <= gap
    assert sol.solve_seconds < 8 + 2  # the limit, plus building and scoring


def test_fast_latency_matches_latency_of():
    for seed in range(20):
        g = random_graph(500 + seed, n_nodes=8, k=3, l=2, colours=seed % 2 == 0)
        rng = random.Random(seed)
        acc, cpus = [[] for _ in range(3)], [[] for _ in range(2)]
        for members in g.colocation_groups():  # a random placement the model allows
            on_accel = all(g.node(i).accel_ok for i in members) and rng.random() < 0.7
            (acc[rng.randrange(3)] if on_accel else cpus[rng.randrange(2)]).extend(members)
        p = Placement(acc, cpus)
        ev = FastLatency(g)
        dev = ev.devices_of(p)
        assert ev(dev) == pytest.approx(latency_of(g, p, check_memory=False), rel=1e-12)
        assert sorted(map(sorted, ev.placement(dev).accelerators)) == sorted(map(sorted, acc))


@pytest.mark.parametrize("seed", range(8))
def test_search_and_path_split_keep_placements_valid(seed):
    g = random_graph(700 + seed, n_nodes=9, k=3, l=1, colours=seed % 2 == 0, tight_memory=True)
    starts = [path_split(g, path) for path in bound_paths(g)]
    everything = Placement([[] for _ in range(3)], [g.ids])
    for start in [p for p in starts if p is not None] + [everything]:
        before = latency_of(g, start)  # raises on an invalid placement
        better, value, stats = improve(g, start, time_limit=5)
        assert value == pytest.approx(latency_of(g, better))  # valid: memory, colours
        assert value <= before + 1e-12
        assert value >= latency_bound(g) - 1e-9
        again, again_value, more = iterated_search(g, better, value, time_limit=0.3, seed=seed)
        assert again_value == pytest.approx(latency_of(g, again)) and again_value <= value
        assert more["tries"] > 0
    assert sorted(chain_order(g)) == sorted(g.ids)
