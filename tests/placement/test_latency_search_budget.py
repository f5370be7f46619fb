"""The latency search's work budget: stopped by its count of candidate splits, the answer
depends on the graph and the count only -- two runs with different deadlines (or time
limits) and the same budget give the same split -- and the budget is honoured exactly."""

import math
import pathlib
import time

import pytest
from _latency_brute import window

from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency.model import latency_of
from kfac_ext.placement.latency.search import Budget, improve
from kfac_ext.placement.latency.solve import default_search_moves, solve_latency
from kfac_ext.placement.latency.starts import all_on_cpu

ROOT = pathlib.Path(__file__).resolve().parents[2]
INCEPTION = ROOT / "workloads" / "latency-inputs" / "LayerGraphs" / "inceptionv3_inference.json"

pytestmark = pytest.mark.skipif(not INCEPTION.is_file(), reason="bundled workloads missing")


@pytest.fixture(scope="module")
def graph() -> Graph:
    """Inception-v3's first 100 nodes (stem and two modules) on 6 accelerators: the search
    needs thousands of candidates there, so a budget of a few hundred stops it."""
    return window(Graph.from_json(INCEPTION), 0, 100, 6, 0.3)


def test_same_budget_same_answer_at_any_deadline(graph):
    start = all_on_cpu(graph)
    answers = []
    for seconds in (1e4, 2e4):  # both far away: the count stops the search
        budget = Budget(400, time.perf_counter() + seconds)
        split, value = improve(graph, start, budget.deadline, budget)
        assert budget.spent == 400 and budget.stopped_by == "budget"
        assert value == pytest.approx(latency_of(graph, split), rel=1e-12)
        answers.append((split, value))
    assert answers[0] == answers[1]
    assert answers[0][1] < latency_of(graph, start)  # the budget let it improve


def test_a_bigger_budget_goes_further(graph):
    """The count is what stops it: more moves, a different (here better) answer."""
    start = all_on_cpu(graph)
    values = []
    for moves in (50, 400):
        budget = Budget(moves)
        values.append(improve(graph, start, math.inf, budget)[1])
        assert budget.spent == moves
    assert values[1] < values[0]


def test_zero_budget_returns_the_start(graph):
    start = all_on_cpu(graph)
    budget = Budget(0)
    split, value = improve(graph, start, math.inf, budget)
    assert budget.spent == 0
    assert value == pytest.approx(latency_of(graph, start))


def test_solve_with_two_time_limits_and_one_budget_agrees(graph):
    """solve_latency's search stage: the same search_moves at 4 s and at 8 s gives the
    same search answer and spends the same count (no wall-clock assert; 300 candidates of
    this window take well under a second, the search's net is half the limit)."""
    runs = [solve_latency(graph, time_limit=t, search_moves=300) for t in (4.0, 8.0)]
    for r in runs:
        assert r.stats["search_stopped_by"] == "budget"
        assert r.stats["search_moves"] == 300
    assert runs[0].stats["search_value"] == runs[1].stats["search_value"]


def test_default_budget_follows_the_time_limit_and_the_graph_size(graph):
    assert default_search_moves(graph, 60.0) == 2 * default_search_moves(graph, 30.0)
    big = Graph.from_json(INCEPTION)
    assert default_search_moves(big, 60.0) < default_search_moves(graph, 60.0)
    assert default_search_moves(graph, 1e-6) == 1000  # a floor, so a tiny limit still searches a little


def test_search_contiguity_check_matches_the_model():
    """The search's fast check (it scans only between the set's first and last position)
    agrees with the model's own ``is_contiguous`` on random assignments of random graphs."""
    import random

    from _small_graphs import random_graph

    from kfac_ext.placement.latency.exact import Problem
    from kfac_ext.placement.latency.model import is_contiguous
    from kfac_ext.placement.latency.search import _contiguous

    checked = {True: 0, False: 0}
    for seed in range(60):
        g = random_graph(seed, n_nodes=4 + seed % 9, k=1 + seed % 3)
        p = Problem(g)
        rng = random.Random(seed)
        for _ in range(20):
            dev = [rng.randrange(-1, p.k) for _ in range(p.n)]
            for a in range(p.k):
                want = is_contiguous(g, [p.ids[i] for i in range(p.n) if dev[i] == a])
                assert _contiguous(p, dev, a) == want
                checked[want] += 1
    assert checked[True] > 100 and checked[False] > 100
