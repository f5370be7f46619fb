"""The memory-aware latency lower bounds never exceed the true optimum (brute force)."""
import math
import random

import pytest

from _residual_graphs import residual_chain
from _small_graphs import all_placements, brute_force, node, random_graph
from kfac_ext.placement.graph import Graph, Node
from kfac_ext.placement.latency import latency_lower_bound, latency_of
from kfac_ext.placement.latency_bound import block_bound, block_plan, heaviest_path, latency_bound, path_chain_bound
from kfac_ext.placement.objective import PlacementError


def optimum(g):
    return brute_force(g, latency_of)


CASES = [(seed, n, k, l) for seed in range(40) for n, k, l in [(6, 2, 2), (6, 3, 1), (7, 2, 1)]
         if (seed + n) % 3 != 0][:60]


@pytest.mark.parametrize("seed,n,k,l", CASES)
def test_bounds_never_exceed_the_optimum(seed, n, k, l):
    g = random_graph(1000 + seed, n_nodes=n, k=k, l=l, colours=seed % 4 == 0, tight_memory=seed % 3 != 2)
    if seed % 5 == 0:  # fewer CPUs, sometimes none: the moves between kinds change
        g = g.with_resources(num_cpus=seed % 2)
        if not any(True for _ in _valid(g)):
            pytest.skip("no valid placement")
    best = optimum(g)
    assert latency_lower_bound(g) <= best + 1e-9
    assert block_bound(g) <= best + 1e-9
    for path in (heaviest_path(g, lambda v: g.node(v).size), heaviest_path(g, lambda v: g.node(v).accel_time)):
        assert path_chain_bound(g, path) <= best + 1e-9
    assert latency_lower_bound(g) <= latency_bound(g) <= best + 1e-9


def _valid(g):
    for p in all_placements(g):
        try:
            latency_of(g, p)
            yield p
        except PlacementError:
            pass


def test_memory_forces_a_transfer_the_path_bound_misses():
    # a chain of four nodes, two per accelerator at most: the sample must cross once
    g = Graph([node(i, 1.0, 100.0, 3.0, 1.0) for i in range(1, 5)], [(1, 2), (2, 3), (3, 4)], 4, 1, 2.0)
    assert latency_lower_bound(g) == pytest.approx(4.0)
    assert optimum(g) == pytest.approx(4.0 + 2 * 3.0)  # one accelerator -> accelerator copy
    assert block_bound(g) == pytest.approx(10.0)
    assert path_chain_bound(g, [1, 2, 3, 4]) == pytest.approx(10.0)
    assert latency_bound(g) == pytest.approx(10.0)


@pytest.mark.parametrize("seed", range(12))
def test_bounds_on_wider_graphs(seed):
    # eight nodes: blocks with several inner nodes, so the per-block run options matter
    g = random_graph(2000 + seed, n_nodes=8, k=2, l=1, colours=seed % 3 == 0, tight_memory=True)
    best = optimum(g)
    assert block_bound(g) <= best + 1e-9
    assert latency_bound(g) <= best + 1e-9


def test_a_move_keeps_its_blocks_bytes_on_its_ends():
    # 1 fills an accelerator; the block 1 -> {2 -> 3} -> 4 changes device (the skip 1 -> 4
    # crosses), and 2, 3 then sit on 4's device (which overflows at 5) or on a third one
    # (a detour). Forgetting the bytes of 2 and 3 would give 14: 1 + 10 + five nodes.
    outs = {1: 5.0, 2: 1.0, 3: 1.0, 4: 2.0, 5: 2.0, 6: 0.0}
    g = Graph([node(i, 1.0, 100.0, outs[i], 3.0 if i == 1 else 1.0) for i in range(1, 7)],
              [(1, 2), (2, 3), (3, 4), (1, 4), (4, 5), (5, 6)], 3, 0, 3.0)
    assert optimum(g) == pytest.approx(18.0)  # {1} | {2, 3} | {4, 5, 6}
    assert block_bound(g) == pytest.approx(18.0)


@pytest.mark.parametrize("seed", range(40))
def test_bounds_on_residual_chains(seed):
    k, l = [(2, 1), (3, 1), (2, 2), (3, 0), (1, 2)][seed % 5]
    g = residual_chain(3000 + seed, n=7 if k + l <= 3 else 6, k=k, l=l)
    best = optimum(g)
    if best == math.inf:
        pytest.skip("no valid placement")
    assert block_bound(g) <= best + 1e-9
    assert latency_bound(g) <= best + 1e-9


def test_a_zero_time_sink_ends_the_critical_path():
    # 1 -> {2, 3} -> 4 with 4 taking no time: the critical path 1 -> 2 ties with 1 -> 2 -> 4.
    # Ending it at 2 would drop 3 (and its bytes) from the bound: 6; ending at 4 sees that
    # the four nodes need both accelerators and that the skip 1 -> 3 or 1 -> 2 must cross.
    t, o = {1: 1.0, 2: 5.0, 3: 1.0, 4: 0.0}, {1: 10.0, 2: 1.0, 3: 1.0, 4: 0.0}
    g = Graph([node(i, t[i], 100.0, o[i], 1.0) for i in range(1, 5)], [(1, 2), (1, 3), (2, 4), (3, 4)], 2, 0, 2.0)
    assert optimum(g) == pytest.approx(22.0)  # {1, 2} | {3, 4}
    assert block_bound(g) == pytest.approx(22.0)


@pytest.mark.parametrize("seed,k,l", [(6, 3, 1), (26, 3, 1), (27, 2, 2)])
def test_walks_along_a_moves_paths_make_the_bound_exact(seed, k, l):
    # residual chains (found by search) where the per-node shapes alone left the bound
    # below the optimum (14.62, 15.217, 16.691): one walk per covering path closes it
    g = residual_chain(seed, n=6, k=k, l=l)
    assert block_bound(g) == pytest.approx(optimum(g))


def branching_blocks(seed: int, k: int, l: int) -> Graph:
    """Inception-like: a head, two or three parallel branches of one to three nodes, a
    concat; sometimes a second such block with one-node branches.  Moves that split the
    branches between the two ends' devices are where the serial charge counts."""
    rng = random.Random(seed)
    nodes, edges = [], []

    def add() -> int:
        v = len(nodes) + 1
        accel = round(rng.uniform(0.2, 3.0), 3)
        nodes.append(Node(id=v, name=f"n{v}", accel_time=accel, cpu_time=round(accel * rng.choice([1.5, 3, 10]), 3),
                          size=float(rng.randint(1, 9)), accel_ok=True, is_backward=False, color=None,
                          out_cost=round(rng.uniform(0.0, 4.0), 3)))
        return v

    head = add()
    for block in range(rng.choice([1, 2])):
        ends = []
        for _ in range(rng.choice([2, 3])):
            prev = head
            for _ in range(rng.choice([1, 2, 3]) if block == 0 else 1):
                v = add()
                edges.append((prev, v))
                prev = v
            ends.append(prev)
        head = add()
        edges += [(e, head) for e in ends]
    total = sum(x.size for x in nodes)
    cap = max(max(x.size for x in nodes), math.ceil(total / rng.choice([2, 3])))
    g = Graph(nodes, edges, k, l, float(cap))
    g.validate()
    return g


BRANCHING = [(seed, *[(2, 1), (3, 1), (2, 2), (3, 0), (2, 0)][seed % 5]) for seed in range(1, 80, 2)]


@pytest.mark.parametrize("seed,k,l", [c for c in BRANCHING
                                      if (c[1] + c[2]) ** len(branching_blocks(*c).nodes) <= 70000])
def test_bounds_on_branching_blocks(seed, k, l):
    g = branching_blocks(seed, k, l)
    best = optimum(g)
    if best == math.inf:
        pytest.skip("no valid placement")
    assert block_bound(g) <= best + 1e-9
    assert latency_bound(g) <= best + 1e-9


@pytest.mark.parametrize("seed,below", [(3, 16.353), (43, 13.548)])
def test_serial_time_on_a_moves_ends_makes_the_bound_exact(seed, below):
    # a move splits the branches between its two ends; without charging each end's
    # device for running its share one node at a time the bound stopped at ``below``
    g = branching_blocks(seed, 3, 0)
    assert block_bound(g) == pytest.approx(optimum(g))
    assert block_bound(g) > below + 0.5


@pytest.mark.parametrize("seed,k,l", [(137, 2, 2), (249, 2, 0), (381, 3, 1)])
def test_the_walk_length_charge_raises_the_bound(seed, k, l):
    # found by search: the nodes whose walk out of (into) a move's end is long run one
    # at a time there too, which lifts the bound above the plain serial charge (each
    # block's least time on its own, latency_floor, is left out: it lifts both)
    g = branching_blocks(seed, k, l)
    assert block_plan(g, by_walk=False, floors=False)[0] + 0.01 < block_plan(g, floors=False)[0]
    assert block_plan(g, floors=False)[0] <= block_bound(g) <= optimum(g) + 1e-9


@pytest.mark.parametrize("seed,below", [(7, 9.4), (77, 9.5)])
def test_the_topological_order_on_a_moves_ends_makes_the_bound_exact(seed, below):
    # latency.py runs a device's nodes in topological order, so the last block node on
    # the head's device (the first on the tail's) bounds the move by its walk plus all
    # of that device's block nodes; without the walk-length charges the bound is below
    g = branching_blocks(seed, 2, 2)
    assert block_plan(g, by_walk=False, floors=False)[0] < below < block_bound(g) == pytest.approx(optimum(g))
