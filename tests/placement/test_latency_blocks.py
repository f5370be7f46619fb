"""The block DP (latency_blocks): articulation positions, the DP's value against the
real schedule and brute force on small chains of modules, its limits, the workloads."""
import math
import pathlib
import random
import time

import pytest

from _small_graphs import brute_force, node
from kfac_ext.placement import milp
from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency import chain_split, latency_of
from kfac_ext.placement.latency_blocks import _block_dp, articulation_positions, block_split, widest_block
from kfac_ext.placement.objective import check_placement

WORKLOADS = pathlib.Path(__file__).resolve().parents[2] / "workloads" / "latency-inputs"
needs_workloads = pytest.mark.skipif(not WORKLOADS.is_dir(), reason=f"no workloads at {WORKLOADS}")


def unit_graph(edges, n, **kw):
    """n nodes of time 1 on an accelerator, 50 on a CPU, output 1, size 1."""
    nodes = [node(i, 1.0, 50.0, 1.0) for i in range(1, n + 1)]
    return Graph(nodes, edges, kw.get("k", 2), kw.get("l", 1), kw.get("cap", 10.0))


def test_articulation_positions_of_a_chain_are_all_positions():
    g = unit_graph([(1, 2), (2, 3), (3, 4)], 4)
    assert articulation_positions(g, g.topological_order()) == [0, 1, 2, 3]


def test_articulation_positions_skip_a_diamond_and_a_jumped_node():
    diamond = unit_graph([(1, 2), (1, 3), (2, 4), (3, 4), (4, 5)], 5)
    assert articulation_positions(diamond, [1, 2, 3, 4, 5]) == [0, 3, 4]
    skip = unit_graph([(1, 2), (2, 3), (1, 3), (3, 4)], 4)  # 1 -> 3 jumps over 2
    assert articulation_positions(skip, [1, 2, 3, 4]) == [0, 2, 3]
    # the first and last positions are always in, even when every edge jumps
    fan = unit_graph([(1, 2), (1, 3), (1, 4), (2, 4), (3, 4)], 4)
    assert articulation_positions(fan, [1, 2, 3, 4]) == [0, 3]
    assert widest_block(fan) == 2 and widest_block(diamond) == 2 and widest_block(skip) == 1


def check_dp(g):
    """The DP's placement fits the devices and the real schedule times it at the DP's value."""
    value, placement = _block_dp(g, math.inf)
    check_placement(g, placement)  # memory caps, CPU-only nodes, device counts
    assert latency_of(g, placement) == pytest.approx(value, rel=1e-12)
    assert block_split(g) == placement
    return value, placement


@pytest.mark.parametrize("seed", range(8))
def test_block_split_is_optimal_on_chains(seed):
    # a chain (every block empty), an accelerator per node to spare: every split is a
    # sequence of runs, so the DP must meet brute force
    rng = random.Random(seed)
    n = 5
    nodes = [node(i, rng.uniform(0.5, 3), rng.uniform(1, 8), rng.uniform(0, 2) if i < n else 0.0,
                  size=float(rng.randint(1, 5))) for i in range(1, n + 1)]
    g = Graph(nodes, [(i, i + 1) for i in range(1, n)], n, 1, 6.0)
    value, _ = check_dp(g)
    assert value == pytest.approx(brute_force(g, latency_of), rel=1e-12)


def two_branch_module(cap):
    """1 -> (2 -> 3) and (4 -> 5) -> 6 -> 7, time 1 each on an accelerator, a slow CPU.
    The head, the branch ends and the concat have big outputs (10), the branches'
    first nodes small ones (0.5): the cheap cut keeps 2 and 4 with the head."""
    big, small = 10.0, 0.5
    outs = {1: big, 2: small, 3: big, 4: small, 5: big, 6: big, 7: 0.0}
    nodes = [node(i, 1.0, 100.0, outs[i]) for i in range(1, 8)]
    edges = [(1, 2), (2, 3), (1, 4), (4, 5), (3, 6), (5, 6), (6, 7)]
    return Graph(nodes, edges, 2, 1, cap)


def test_block_split_moves_mid_module_where_chain_split_cannot():
    # 7 unit-size nodes, cap 6: two accelerators are needed.  A cut at an articulation
    # node (after 1 or after 6) sends a big output (2 * 10); every contiguous cut of
    # the order 1..7 that fits sends one of 1, 3 or 5's.  The cut inside the module,
    # {1, 2, 4} | {3, 5, 6, 7}, sends only 2's and 4's small outputs: 7 + 2 * 0.5
    g = two_branch_module(cap=6.0)
    assert g.topological_order() == [1, 2, 3, 4, 5, 6, 7]
    best = brute_force(g, latency_of)
    assert best == pytest.approx(7.0)
    value, placement = check_dp(g)
    assert value == pytest.approx(best, rel=1e-12)
    first = next(a for a in placement.accelerators if 1 in a)
    assert sorted(first) == [1, 2, 4]
    assert latency_of(g, chain_split(g)) >= best + 10.0


def chain_of_modules(rng, modules, k, l, cap):
    """Head, then per module a diamond (two single-node branches) or a two-node branch
    beside a one-node branch, into a concat; random times, outputs and sizes."""
    nodes, edges = [], []

    def add(*preds):
        i = len(nodes) + 1
        nodes.append(node(i, round(rng.uniform(0.5, 3), 3), round(rng.uniform(1, 8), 3),
                          round(rng.uniform(0.1, 2), 3), size=float(rng.randint(1, 4))))
        edges.extend((p, i) for p in preds)
        return i

    head = add()
    for _ in range(modules):
        a = add(head)
        ends = [add(a) if rng.random() < 0.5 else a, add(head)]
        head = add(*ends)
    last = nodes[-1]
    nodes[-1] = node(last.id, last.accel_time, last.cpu_time, 0.0, size=last.size)
    return Graph(nodes, edges, k, l, cap)


@pytest.mark.parametrize("seed", range(10))
def test_block_split_is_valid_and_timed_exactly_on_chains_of_modules(seed):
    rng = random.Random(seed)
    k, l = (2, 1) if seed % 2 else (3, 0)  # three devices keep brute force quick
    g = chain_of_modules(rng, modules=2, k=k, l=l, cap=float(rng.randint(5, 9)))
    if _block_dp(g, math.inf) is None:  # a CPU takes any node: only accelerators alone can fail
        assert l == 0
        return
    value, _ = check_dp(g)
    assert value >= brute_force(g, latency_of) - 1e-9  # the brute force optimum is a lower bound


def test_block_split_leaves_colour_classes_to_the_other_methods():
    nodes = [node(1, 1.0, 5.0, 1.0), node(2, 1.0, 5.0, 1.0, color=7), node(3, 1.0, 5.0, 1.0, color=7),
             node(4, 1.0, 5.0, 0.0)]
    g = Graph(nodes, [(1, 2), (1, 3), (2, 4), (3, 4)], 2, 1, 10.0)
    assert block_split(g) is None


def test_block_split_gives_up_past_its_time_limit():
    g = chain_of_modules(random.Random(3), modules=3, k=3, l=2, cap=8.0)
    assert block_split(g) is not None
    t = time.perf_counter()
    assert block_split(g, time_limit=0.0) is None
    assert time.perf_counter() - t < 0.5


def test_block_split_keeps_cpu_only_nodes_off_accelerators():
    # the module's side node 3 would be fastest on an accelerator (0.5 against 5.0)
    # but may only run on a CPU; the same holds for the tail 4 of the next module
    nodes = [node(1, 1.0, 9.0, 0.2), node(2, 1.0, 9.0, 0.2), node(3, 0.5, 5.0, 0.2, accel_ok=False),
             node(4, 1.0, 3.0, 0.2, accel_ok=False), node(5, 1.0, 9.0, 0.0)]
    g = Graph(nodes, [(1, 2), (1, 3), (2, 4), (3, 4), (4, 5)], 2, 2, 10.0)
    value, placement = check_dp(g)
    on_accelerators = {v for a in placement.accelerators for v in a}
    assert not on_accelerators & {3, 4}
    assert value == pytest.approx(brute_force(g, latency_of), rel=1e-12)


def three_branch_graph(k):
    """1 -> 2, 3, 4 -> 5: three side stretches (one input, one consumer each) of 2.0 on
    an accelerator, 40 on a CPU; transfers 0.2 (0.1 each way through the host).  Two
    CPUs: the DP allows as many side stretches as there are CPUs besides the run's."""
    nodes = [node(1, 1.0, 40.0, 0.1), node(2, 2.0, 40.0, 0.1), node(3, 2.0, 40.0, 0.1),
             node(4, 2.0, 40.0, 0.1), node(5, 1.0, 40.0, 0.0)]
    return Graph(nodes, [(1, 2), (1, 3), (1, 4), (2, 5), (3, 5), (4, 5)], k, 2, 10.0)


def test_side_stretches_on_spare_accelerators_count_against_k():
    # the block stays on accelerator 0, which runs one branch; each spare accelerator
    # takes another (1 + 0.2 + 2 + 0.2 + 1 with two spares).  The DP must never lay
    # out more accelerators than there are: that would show as a placement check
    # failure or as a DP value below the real schedule's
    values = {}
    for k in (1, 2, 3):
        g = three_branch_graph(k)
        values[k], placement = check_dp(g)
        assert values[k] == pytest.approx(brute_force(g, latency_of), rel=1e-12)
    assert values == pytest.approx({1: 8.0, 2: 6.0, 3: 4.4})
    assert sorted(len(a) for a in placement.accelerators) == [1, 1, 3]  # two spares, one branch each


@needs_workloads
def test_block_split_meets_the_proven_optimum_on_resnet50_layers():
    g = Graph.from_json(WORKLOADS / "LayerGraphs" / "resnet50_inference.json")
    placement = block_split(g, time_limit=30.0)
    check_placement(g, placement)
    assert latency_of(g, placement) == pytest.approx(995.3808, rel=1e-6)


@needs_workloads
@pytest.mark.parametrize("name", ["OperatorGraphs/bert_l-3_inference.json",
                                  "OperatorGraphs/resnet50_inference.json"])
def test_block_split_returns_at_once_on_colour_classes(name):
    g = Graph.from_json(WORKLOADS / name)
    t = time.perf_counter()
    assert block_split(g) is None
    assert time.perf_counter() - t < 1.0


def test_the_latency_warm_start_tries_it_on_narrow_graphs_only(monkeypatch):
    calls = []
    real = milp.block_split
    monkeypatch.setattr(milp, "block_split", lambda g, limit: calls.append(limit) or real(g, limit))
    assert milp._default_warm_start(two_branch_module(cap=6.0), "latency", 10.0) is not None
    assert calls == [milp._BLOCK_DP_SHARE * 10.0]
    # a block of many parallel branches (BERT's, GNMT's) is left to the other candidates
    n = milp._BLOCK_DP_MAX_INNER + 3
    fan = Graph([node(i, 1.0, 5.0, 0.1 if i < n else 0.0) for i in range(1, n + 1)],
                [(1, i) for i in range(2, n)] + [(i, n) for i in range(2, n)], 2, 1, float(n))
    assert widest_block(fan) == n - 2
    assert milp._default_warm_start(fan, "latency", 10.0) is not None
    assert calls == [milp._BLOCK_DP_SHARE * 10.0]
