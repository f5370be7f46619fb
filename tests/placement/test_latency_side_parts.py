"""Side parts (latency.side_parts, charged by the chain bound): a side branch that forks or joins
inside itself, sent past a call or fetched into it, charged within the brute-force optimum of the
paper's model on every path; a hand graph where the charge lifts the bound; two mutants caught."""

import math
import random

import pytest
from _latency_brute import brute_force_latency
from _small_graphs import node
from test_latency_chain_bound import all_paths, assert_every_path_within

from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency import side_parts as sp
from kfac_ext.placement.latency.chain_bound import path_chain_bound


def side_part_graph(seed: int, late: bool = False) -> Graph:
    """A module in small whose side branch is no chain: 0 -> 1 (the fork), a main branch of one
    or two nodes from 1 to the join, and a side part from 1 to the join that splits and joins
    (``a -> {b, c} -> d``), or whose last node has a second input from the fork (``1 -> d``,
    Inception-v3's ``229 -> 258``), or skips inside (``a -> d``); now and then a node after the
    join, which ``d`` may feed instead of the join.  CPU 3-6 times the accelerator; the fork
    (or, ``late``, the join and what follows: a call that starts inside the module fetches the
    side part) slow on the CPU pool; random transfers and sizes, a cap of 40-100 % of the
    total, now and then a colour pair or a CPU-only node; one or two accelerators."""
    rng = random.Random(seed)
    edges = [(0, 1)]
    nxt, prev = 2, 1
    for _ in range(rng.randint(1, 2)):
        edges.append((prev, nxt))
        prev, nxt = nxt, nxt + 1
    main_end = prev
    a, b, d = nxt, nxt + 1, nxt + 2
    nxt += 3
    edges += [(1, a), (a, b), (b, d)]
    shape = rng.randrange(3)
    if shape == 0:
        edges += [(a, nxt), (nxt, d)]
        nxt += 1
    elif shape == 1:
        edges.append((1, d))
    else:
        edges.append((a, d))
    join = nxt
    nxt += 1
    edges.append((main_end, join))
    if nxt < 9 and rng.random() < 0.5:
        edges.append((join, nxt))
        edges.append((d, nxt) if rng.random() < 0.3 else (d, join))
        nxt += 1
    else:
        edges.append((d, join))
    senders = {s for s, _ in edges}
    pair = (rng.randrange(2, join), join) if rng.random() < 0.2 else ()
    nodes = []
    for v in range(nxt):
        acc = round(rng.uniform(0.2, 2.0), 3)
        slow = v >= join if late else v <= 1
        nodes.append(
            node(
                v,
                acc,
                round((5.0 if slow else 1.0) * acc * rng.uniform(3, 6), 3),
                round(rng.uniform(0.5, 3), 3) if v in senders else 0.0,
                size=float(rng.randint(1, 4)),
                color=0 if v in pair else None,
                accel_ok=v <= 1 or rng.random() > 0.08,
            )
        )
    total = sum(x.size for x in nodes)
    k = 1 + (seed % 2 == 1 and nxt <= 8)
    g = Graph(nodes, sorted(set(edges)), k, 1, float(max(4, math.ceil(total * rng.uniform(0.4, 1.0)))))
    g.validate()
    return g


def _graphs():
    return [side_part_graph(s, late=s % 3 == 2) for s in range(60)]


@pytest.mark.parametrize("seed", range(60))
def test_side_parts_are_charged_within_the_optimum(seed):
    g = side_part_graph(seed, late=seed % 3 == 2)
    assert_every_path_within(g, 1, brute_force_latency(g))


def _every_path(graphs):
    return [[path_chain_bound(g, p) for p in all_paths(g)] for g in graphs]


def test_the_side_parts_lift_the_bound_on_some_module_graphs(monkeypatch):
    """On the 60 graphs above the charge lifts some path's bound on 27 graphs (5 of the 20
    where a call starts inside the module and fetches the part) and never lowers one: the
    test above exercises it, sent and fetched."""
    graphs = _graphs()
    with_parts = _every_path(graphs)
    monkeypatch.setattr(sp, "_part", lambda *args: None)
    without = _every_path(graphs)
    lifted = set()
    for s, (mine, theirs) in enumerate(zip(with_parts, without)):
        assert all(a >= b - 1e-9 for a, b in zip(mine, theirs))
        if any(a > b + 1e-9 for a, b in zip(mine, theirs)):
            lifted.add(s)
    assert len(lifted) >= 20
    assert len({s for s in lifted if s % 3 == 2}) >= 3


def inception_tail_graph() -> Graph:
    """0 -> 1 -> 2 -> 6 (the path), and from 1 a side part ``1 -> 3 -> 4 -> 5 -> 6`` with
    ``1 -> 5`` (Inception-v3's ``229 -> 230 .. 239 -> 258 <- 229``); 6 CPU-only, 0, 1 and 2
    slow on the CPU pool, 1's output dear; one accelerator, room for everything."""
    nodes = [
        node(0, 1.0, 100.0, 5.0),
        node(1, 1.0, 100.0, 20.0),
        node(2, 1.0, 100.0, 1.0),
        node(3, 0.5, 2.0, 1.0),
        node(4, 0.5, 2.0, 1.0),
        node(5, 0.5, 2.0, 2.0),
        node(6, 1.0, 1.0, 0.0, accel_ok=False),
    ]
    edges = [(0, 1), (1, 2), (2, 6), (1, 3), (3, 4), (4, 5), (1, 5), (5, 6)]
    g = Graph(nodes, edges, 1, 1, 100.0)
    g.validate()
    return g


def test_a_side_part_that_is_no_chain_is_charged(monkeypatch):
    """On the graph above the best split is one call holding 0 .. 5 (compute 4.5, sends of 2 and
    5: 1 + 2), then 6 on the CPU pool: 8.5.  On the path 0, 1, 2, 6 the side part {3, 4, 5} is
    no bypass (5 has two inputs), so without its charge the bound lets a call run 0, 1, 2 and
    pay nothing for it (3 + 2's send 1, then 6: 5.0); with it the call pays the part held (1.5
    and 5's send 2) or 1's send (20): the path's bound meets the optimum."""
    g = inception_tail_graph()
    assert brute_force_latency(g) == pytest.approx(8.5)
    assert path_chain_bound(g, [0, 1, 2, 6]) == pytest.approx(8.5)
    monkeypatch.setattr(sp, "_part", lambda *args: None)
    assert path_chain_bound(g, [0, 1, 2, 6]) == pytest.approx(5.0)


def diamond_graph() -> Graph:
    """0 -> 1 -> 2 -> 7 (the path; 7 CPU-only), and from 1 a side part that splits and joins,
    ``3 -> {4, 5} -> 6 -> 7``; 0, 1 and 2 slow on the CPU pool, 1's output dear, the part quick
    there; 6 too big for the call.  Best: one call runs 0 .. 3 (compute 3.5, sends of 2 and
    3), 4, 5, 6 and 7 on the CPU pool: 5.5 + 0.02 + 1 = 6.52."""
    nodes = [node(0, 1.0, 100.0, 5.0), node(1, 1.0, 100.0, 20.0), node(2, 1.0, 100.0, 1.0)]
    nodes += [node(v, 0.5, 0.01, 1.0, size=50.0 if v == 6 else 1.0) for v in (3, 4, 5, 6)]
    nodes.append(node(7, 1.0, 1.0, 0.0, accel_ok=False))
    edges = [(0, 1), (1, 2), (2, 7), (1, 3), (3, 4), (3, 5), (4, 6), (5, 6), (6, 7)]
    g = Graph(nodes, edges, 1, 1, 10.0)
    g.validate()
    return g


def test_a_call_may_hold_the_head_of_a_side_part():
    """On the graph above the path 0, 1, 2, 7 is charged the part's head held (3: 0.5 and its
    send 1), not 1's send (20) nor the whole part (over the cap): 6.5, within the 6.52."""
    g = diamond_graph()
    assert brute_force_latency(g) == pytest.approx(6.52)
    assert path_chain_bound(g, [0, 1, 2, 7]) == pytest.approx(6.5)


def test_a_part_held_all_or_nothing_is_caught(monkeypatch):
    """Mutant: only "hold nothing" and "hold all" as the call's choices (the sets between
    forgotten): on the diamond graph the path's bound is 25 (1's send), above the optimum."""
    real = sp._closed

    def ends_only(node, needs, order, max_options):
        sets = real(node, needs, order, max_options)
        return None if sets is None else [min(sets), max(sets)]

    monkeypatch.setattr(sp, "_closed", ends_only)
    g = diamond_graph()
    assert path_chain_bound(g, [0, 1, 2, 7]) > brute_force_latency(g) + 1.0


def test_an_entry_sent_whatever_the_call_holds_is_caught(monkeypatch):
    """Mutant: the fork's output sent to the part whatever the call holds of it (holding the
    part's head no longer spares that send): above the optimum on the diamond graph and on
    the Inception-like graph."""
    real = sp._options

    def always_sent(node, held_sets, across, leaves, fed_by, sending):
        out = real(node, held_sets, across, leaves, fed_by, sending)
        every = tuple(sorted({a for f in fed_by for a in f}))
        return tuple((s, c, every) for s, c, _ in out) if sending else out

    monkeypatch.setattr(sp, "_options", always_sent)
    g = diamond_graph()
    assert path_chain_bound(g, [0, 1, 2, 7]) > brute_force_latency(g) + 1.0
    g = inception_tail_graph()
    assert path_chain_bound(g, [0, 1, 2, 6]) > brute_force_latency(g) + 1.0
