"""The paper's latency model (kfac_ext.placement.latency.model): hand-timed cases, every
rule of the model, and the evaluator against the authors' IP with the split fixed."""

import random

import pytest
from _small_graphs import node, random_graph

from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency.ip import solve_ip
from kfac_ext.placement.latency.model import Split, contiguous_pieces, evaluate, latency_of, split_from_placement
from kfac_ext.placement.objective import Placement, PlacementError


def chain(k=2, cap=100.0, colours=(None, None, None), accel_ok=(True, True, True)):
    # a -> b -> c; accelerator times 1, 2, 3; CPU times 10, 20, 30; transfers 0.5, 0.25, 0
    nodes = [
        node(1, 1.0, 10.0, 0.5, color=colours[0], accel_ok=accel_ok[0]),
        node(2, 2.0, 20.0, 0.25, color=colours[1], accel_ok=accel_ok[1]),
        node(3, 3.0, 30.0, 0.0, color=colours[2], accel_ok=accel_ok[2]),
    ]
    return Graph(nodes, [(1, 2), (2, 3)], k, 1, cap)


def test_one_call_holds_everything():
    assert latency_of(chain(), Split.of([(0, (1, 2, 3))])) == pytest.approx(6.0)


def test_call_between_cpu_nodes_pays_in_and_out():
    t = evaluate(chain(), Split.of([(0, (2,))], (1, 3)))
    # a on CPU ends at 10; the call fetches a (0.5), runs 2, sends b (0.25); c runs 30
    assert t.calls[0] == {
        "accelerator": 0,
        "start": 10.0,
        "transfer_in": 0.5,
        "compute": 2.0,
        "transfer_out": 0.25,
        "finish": 12.75,
    }
    assert t.latency == pytest.approx(42.75)
    assert t.finish == {1: 10.0, 2: 12.75, 3: 42.75}


def test_two_accelerators_each_pay_the_crossing_output():
    # {a, b} sends b (0.25); {c} fetches b (0.25): 3 + 0.25 + 0.25 + 3
    assert latency_of(chain(), Split.of([(0, (1, 2)), (1, (3,))])) == pytest.approx(6.5)


def test_all_nodes_of_a_call_finish_at_its_end():
    # a feeds b (CPU) and c; {a, c} is contiguous when a -> c is a direct edge and b is a sink
    nodes = [node(1, 1.0, 10.0, 0.5), node(2, 1.0, 4.0, 0.0), node(3, 5.0, 50.0, 0.0)]
    g = Graph(nodes, [(1, 2), (1, 3)], 1, 1, 100.0)
    t = evaluate(g, Split.of([(0, (1, 3))], (2,)))
    # the call runs a and c (6) and sends a (0.5): b waits for the whole call
    assert t.finish[2] == pytest.approx(6.5 + 4.0)


def test_cpu_pool_has_no_core_limit():
    nodes = [node(i, 1.0, 7.0, 0.0) for i in range(1, 5)]
    g = Graph(nodes, [], 1, 1, 100.0)  # maxCPUs = 1 is ignored, as by the authors
    assert latency_of(g, Split.of([], (1, 2, 3, 4))) == pytest.approx(7.0)


def test_rules_of_the_model_are_enforced():
    g = chain()
    with pytest.raises(PlacementError, match="not contiguous"):
        evaluate(g, Split.of([(0, (1, 3))], (2,)))
    with pytest.raises(PlacementError, match="not placed"):
        evaluate(g, Split.of([(0, (1, 2))]))
    with pytest.raises(PlacementError, match="placed twice"):
        evaluate(g, Split.of([(0, (1, 2))], (2, 3)))
    with pytest.raises(PlacementError, match="over the cap"):
        evaluate(chain(cap=1.5), Split.of([(0, (1, 2, 3))]))
    with pytest.raises(PlacementError, match="runs only on CPUs"):
        evaluate(chain(accel_ok=(True, False, True)), Split.of([(0, (1, 2, 3))]))
    with pytest.raises(PlacementError, match="colour class 7"):
        evaluate(chain(colours=(7, None, 7)), Split.of([(0, (1, 2))], (3,)))
    with pytest.raises(PlacementError, match="accelerator 2"):
        evaluate(g, Split.of([(2, (1, 2, 3))]))
    with pytest.raises(PlacementError, match="more than subgraphs=1"):
        evaluate(g, Split.of([(0, (1,)), (0, (2, 3))]))


def test_calls_waiting_on_each_other_have_no_schedule():
    # a1 -> b1 and b2 -> a2: {a1, a2} and {b1, b2} are each contiguous, but each waits for the other
    nodes = [node(i, 1.0, 10.0, 0.5 if i in (1, 3) else 0.0) for i in range(1, 5)]
    g = Graph(nodes, [(1, 2), (3, 4)], 2, 1, 100.0)
    with pytest.raises(PlacementError, match="cycle"):
        evaluate(g, Split.of([(0, (1, 4)), (1, (2, 3))]))


def test_two_calls_on_one_accelerator_run_in_order():
    g = chain(k=1)
    split = Split.of([(0, (1,)), (0, (3,))], (2,))
    with pytest.raises(PlacementError, match="subgraphs=1"):
        evaluate(g, split)
    # {a}: 1 + send a 0.5 = 1.5; b on CPU 21.5; {c}: fetch b 0.25 + 3 = 24.75
    assert latency_of(g, split, subgraphs=2) == pytest.approx(24.75)
    # the calls' order is the list's: c's call first would wait on itself through b
    with pytest.raises(PlacementError, match="cycle"):
        evaluate(g, Split.of([(0, (3,)), (0, (1,))], (2,)), subgraphs=2)


def test_latency_does_not_depend_on_the_file_order():
    rng = random.Random(5)
    for seed in range(10):
        g = random_graph(seed, n_nodes=7, k=2)
        shuffled = list(g.nodes)
        rng.shuffle(shuffled)
        h = Graph(shuffled, g.edges, g.num_accelerators, g.num_cpus, g.memory_cap)
        ids = g.ids
        for _ in range(10):
            choice = [rng.randint(-1, 1) for _ in ids]
            split = Split.of(
                [(a, [v for v, d in zip(ids, choice) if d == a]) for a in (0, 1)],
                [v for v, d in zip(ids, choice) if d < 0],
            )
            try:
                value = latency_of(g, split)
            except PlacementError:
                continue
            assert latency_of(h, split) == value


def test_contiguous_pieces_as_the_authors_rework():
    g = chain()
    assert contiguous_pieces(g, [1, 3]) == [[1], [3]]
    assert contiguous_pieces(g, [1, 2, 3]) == [[1, 2, 3]]
    split, q = split_from_placement(g, Placement([[1, 3], []], [[2]]))
    assert q == 2 and split == Split.of([(0, (1,)), (0, (3,))], (2,))


@pytest.mark.parametrize("seed", range(16))
def test_evaluator_agrees_with_the_authors_ip_on_fixed_splits(seed):
    """The IP's own rows, with every x fixed to the split, give the evaluator's latency."""
    q = 1 + seed % 2
    g = random_graph(seed, n_nodes=5 + seed % 4, k=1 + seed % 3, colours=seed % 3 == 0, tight_memory=seed % 4 == 0)
    rng = random.Random(seed)
    ids, checked = g.ids, 0
    for _ in range(150):
        slots = [(a, j) for a in range(g.num_accelerators) for j in range(q)]
        choice = [rng.randint(-1, len(slots) - 1) for _ in ids]
        split = Split.of(
            [(slots[s][0], [v for v, d in zip(ids, choice) if d == s]) for s in range(len(slots))],
            [v for v, d in zip(ids, choice) if d < 0],
        )
        try:
            value = latency_of(g, split, subgraphs=q)
        except PlacementError:
            continue
        assert solve_ip(g, split, 10, subgraphs=q, fixed=True).value == pytest.approx(value, abs=1e-6)
        checked += 1
    assert checked >= 1
