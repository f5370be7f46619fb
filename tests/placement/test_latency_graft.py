"""The start shaped by the chain bound (latency.graft): forced sets as the chain bound defines
them, grafted splits are splits of the paper's model, and solve_latency keeps the better of
the two searches."""

import pytest
from _latency_brute import all_timings
from _small_graphs import node, random_graph
from test_latency_side_parts import side_part_graph

from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency import solve as solve_mod
from kfac_ext.placement.latency.chain_bound import chain_bound
from kfac_ext.placement.latency.graft import forced_set, graft
from kfac_ext.placement.latency.model import evaluate, is_contiguous
from kfac_ext.placement.latency.search import Budget, improve
from kfac_ext.placement.latency.starts import all_on_cpu


def test_the_forced_set_holds_what_lies_between_and_the_colour_mates():
    """0 -> 1 -> {2, 3} -> 4 -> 5, 3 and 5 one colour class: a call holding 1 and 4 holds 2
    and 3, so 5 too; one holding 0 and 2 holds 1 only besides; a CPU-only node between -> None."""
    nodes = [node(v, 1.0, 5.0, 1.0, color=7 if v in (3, 5) else None) for v in range(6)]
    edges = [(0, 1), (1, 2), (1, 3), (2, 4), (3, 4), (4, 5)]
    g = Graph(nodes, edges, 2, 1, 100.0)
    g.validate()
    assert forced_set(g, 1, 4) == {1, 2, 3, 4, 5}
    assert forced_set(g, 0, 2) == {0, 1, 2}
    nodes[2] = node(2, 1.0, 5.0, 1.0, accel_ok=False)
    g = Graph(nodes, edges, 2, 1, 100.0)
    assert forced_set(g, 1, 4) is None


def _graphs():
    return [side_part_graph(s, late=s % 3 == 2) for s in range(20)] + [
        random_graph(s, n_nodes=7, k=2, colours=s % 2 == 0, tight_memory=True) for s in range(20)
    ]


@pytest.mark.parametrize("index", range(40))
def test_a_grafted_split_is_a_split_of_the_model(index):
    """From the best search split, the graft is None or a feasible split (the evaluator accepts
    it) whose calls are contiguous, at most k, one of them the forced set of a span of the
    chain's calls that ends with the last one and fits the cap."""
    g = _graphs()[index]
    shape: list = []
    chain_bound(g, shape=shape)
    path, runs = shape[0]
    split, _ = improve(g, all_on_cpu(g), float("inf"), Budget(500))
    out = graft(g, split, path, runs)
    if out is None:
        return
    evaluate(g, out)
    assert len(out.calls) <= g.num_accelerators
    assert all(is_contiguous(g, nodes) for _, nodes in out.calls)
    calls = [r for r in runs if r[2]]
    spans = [forced_set(g, path[i], path[calls[-1][1]]) for i, _, _ in calls]
    held = [set(nodes) for _, nodes in out.calls]
    assert any(span is not None and span in held for span in spans)


def test_the_graft_takes_the_longest_span_that_fits():
    """A chain 0 .. 5 cut into calls {0, 1}, {2, 3}, {4, 5}, each node of size 1: with a cap of
    4 the graft holds 2 .. 5 (the span from the first call would be 6), with a cap of 6 all."""
    nodes = [node(v, 1.0, 5.0, 1.0) for v in range(6)]
    edges = [(v, v + 1) for v in range(5)]
    runs = [(0, 1, True), (2, 3, True), (4, 5, True)]
    for cap, want in ((4.0, {2, 3, 4, 5}), (6.0, set(range(6)))):
        g = Graph(nodes, edges, 3, 1, cap)
        g.validate()
        out = graft(g, all_on_cpu(g), list(range(6)), runs)
        assert out is not None and want in [set(c) for _, c in out.calls]


def test_solve_keeps_the_better_of_the_two_searches(monkeypatch):
    """With no interval starts and no search moves the first answer is every node on the CPU
    pool; a graft that hands the second search the brute-force optimum makes that the answer,
    one that hands it the all-CPU split changes nothing.  The value is the evaluator's."""
    g = side_part_graph(3)
    best_split, best_timing = min(all_timings(g), key=lambda x: x[1].latency)
    monkeypatch.setattr(solve_mod, "interval_split", lambda graph, order, deadline: None)
    monkeypatch.setattr(solve_mod, "_exact", lambda graph, best, value, bound, *rest: (best, value, bound, "none"))
    cpu_only = evaluate(g, all_on_cpu(g)).latency
    assert cpu_only > best_timing.latency + 1.0
    monkeypatch.setattr(solve_mod, "graft", lambda graph, split, path, runs: all_on_cpu(graph))
    sol = solve_mod.solve_latency(g, time_limit=5, search_moves=0)
    assert sol.value == pytest.approx(cpu_only)
    monkeypatch.setattr(solve_mod, "graft", lambda graph, split, path, runs: best_split)
    sol = solve_mod.solve_latency(g, time_limit=5, search_moves=0)
    assert sol.value == pytest.approx(best_timing.latency)
    assert sol.stats["graft_value"] == pytest.approx(best_timing.latency)
    assert sol.stats["search_value"] == pytest.approx(cpu_only)
