"""The ideal DP against a brute force over every contiguous split, and against the baselines.

The brute force knows nothing of ideals: it tries every assignment of units
(Graph.contiguity_units, before the DP's own unit fusion) to labelled
devices, keeps those whose device quotient of the unit order is acyclic
(= a chain of ideals), and scores them with objective.throughput_loads.
"""

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfac_ext.placement import Graph, Node, Placement, PlacementError, throughput_loads
from kfac_ext.placement.baselines import greedy, one_device, pipedream
from kfac_ext.placement.dp import InfeasibleError, UnitProblem, ideal_dp, solve_contiguous


def _acyclic(n_devices: int, arcs: set[tuple[int, int]]) -> bool:
    indeg = [0] * n_devices
    for _, b in arcs:
        indeg[b] += 1
    ready = [d for d in range(n_devices) if indeg[d] == 0]
    seen = 0
    while ready:
        d = ready.pop()
        seen += 1
        for a, b in arcs:
            if a == d:
                indeg[b] -= 1
                if indeg[b] == 0:
                    ready.append(b)
    return seen == n_devices


def brute_force(graph: Graph) -> float:
    unit_of, unit_edges = graph.contiguity_units()
    U = max(unit_of.values()) + 1
    members = [[i for i in graph.ids if unit_of[i] == u] for u in range(U)]
    k, l = graph.num_accelerators, graph.num_cpus
    best = math.inf
    for labels in itertools.product(range(k + l), repeat=U):
        arcs = {(labels[a], labels[b]) for a, b in unit_edges if labels[a] != labels[b]}
        if not _acyclic(k + l, arcs):
            continue
        devices = [[i for u in range(U) if labels[u] == d for i in members[u]] for d in range(k + l)]
        try:
            value = throughput_loads(graph, Placement(devices[:k], devices[k:]))[0]
        except PlacementError:
            continue
        best = min(best, value)
    return best


@st.composite
def small_graphs(draw):
    n = draw(st.integers(1, 5))
    training = draw(st.booleans()) and n <= 3
    times = st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5, 7.0])
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if draw(st.booleans())]
    colour = list(range(n))
    if n >= 3 and draw(st.booleans()):  # two forward nodes share a class
        a, b = sorted(draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True)))
        colour[b] = colour[a]
    cap = draw(st.sampled_from([math.inf, 6.0, 10.0]))
    nodes = []
    for i in range(n):
        nodes.append(
            Node(
                i,
                f"f{i}",
                draw(times),
                draw(times) * 3,
                float(draw(st.integers(0, 5))),
                draw(st.sampled_from([True, True, True, False])),
                False,
                colour[i],
                draw(times),
            )
        )
    if training:  # mirror image: backward node n+i with the forward colour
        for i in range(n):
            nodes.append(
                Node(
                    n + i,
                    f"b{i}",
                    draw(times),
                    draw(times) * 3,
                    float(draw(st.integers(0, 3))),
                    True,
                    True,
                    colour[i],
                    draw(times),
                )
            )
        edges += [(i, n + i) for i in range(n)] + [(n + j, n + i) for i, j in edges if j < n]
        if draw(st.booleans()):  # a backward-only colour class
            nodes.append(Node(2 * n, "b_only", draw(times), 1.0, 0.0, True, True, 99, draw(times)))
            edges.append((2 * n - 1, 2 * n))
            edges.append((2 * n, n))
    out_edges = {s for s, _ in edges}
    nodes = [
        Node(
            x.id,
            x.name,
            x.accel_time,
            x.cpu_time,
            x.size,
            x.accel_ok,
            x.is_backward,
            x.color,
            x.out_cost if x.id in out_edges else 0.0,
        )
        for x in nodes
    ]
    k = draw(st.integers(1, 3))
    l = draw(st.integers(0, 1)) if k < 3 else 0
    return Graph(nodes, edges, k, l, cap)


def _valid(graph: Graph) -> bool:
    try:
        graph.validate()
        return True
    except ValueError:
        return False


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(small_graphs())
def test_dp_equals_brute_force_and_beats_baselines(graph):
    if not _valid(graph):
        return
    expected = brute_force(graph)
    if math.isinf(expected):
        with pytest.raises(InfeasibleError):
            ideal_dp(graph)
        return
    sol = ideal_dp(graph)
    assert sol.value == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert sol.optimal
    # the loads the solution reports recompute from the graph alone
    value, acc, cpu = throughput_loads(graph, sol.placement)
    assert value == pytest.approx(sol.value, rel=1e-12, abs=1e-12)
    assert acc == pytest.approx(sol.accel_loads) and cpu == pytest.approx(sol.cpu_loads)
    for baseline in (pipedream, greedy, one_device):
        try:
            b = baseline(graph)
        except InfeasibleError:
            continue
        if b.stats.get("memory_ok", True):
            assert sol.value <= b.value + 1e-9, baseline.__name__


def _chain(times, costs, k, l=0, cap=math.inf, sizes=None):
    n = len(times)
    sizes = sizes or [0.0] * n
    nodes = [
        Node(i, f"n{i}", times[i], 10 * times[i], sizes[i], True, False, None, costs[i] if i < n - 1 else 0.0)
        for i in range(n)
    ]
    return Graph(nodes, [(i, i + 1) for i in range(n - 1)], k, l, cap)


def test_chain_known_optimum():
    # 1 2 3 4 on two devices, free transfers: {1,2,3 | 4} -> 6 vs {1,2 | 3,4} -> 7
    sol = ideal_dp(_chain([1.0, 2.0, 3.0, 4.0], [0.0] * 4, k=2))
    assert sol.value == pytest.approx(6.0)
    assert sorted(map(sorted, sol.placement.accelerators)) == [[0, 1, 2], [3]]


def test_transfer_cost_counted_once_per_device_and_output():
    # node 0 feeds 1 and 2; splitting {0} | {1, 2} pays c0 on both sides once
    nodes = [
        Node(0, "a", 5.0, 50.0, 0.0, True, False, None, 1.5),
        Node(1, "b", 2.0, 20.0, 0.0, True, False, None, 0.0),
        Node(2, "c", 2.0, 20.0, 0.0, True, False, None, 0.0),
    ]
    g = Graph(nodes, [(0, 1), (0, 2)], 2, 0, math.inf)
    sol = ideal_dp(g)
    assert sol.value == pytest.approx(6.5)
    assert sorted(sol.accel_loads) == pytest.approx([5.5, 6.5])


def test_memory_cap_forces_a_split_and_cpu_takes_what_fits_nowhere():
    g = _chain([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], k=1, l=1, cap=2.0, sizes=[1.0, 1.0, 1.0])
    sol = ideal_dp(g)  # two nodes on the accelerator, one on the CPU (10x slower)
    assert sol.value == pytest.approx(10.0)
    assert sum(len(x) for x in sol.placement.cpus) == 1
    g0 = g.with_resources(num_cpus=0)
    with pytest.raises(InfeasibleError):
        ideal_dp(g0)


def test_dominated_zero_cost_units_are_fused_without_changing_the_optimum():
    # a layer with many zero-time leaves (GNMT-like): each leaf doubles the ideals unless fused
    nodes = [Node(0, "x", 1.0, 10.0, 0.0, True, False, None, 0.3), Node(1, "y", 2.0, 20.0, 0.0, True, False, None, 0.2)]
    edges = [(0, 1)]
    for j in range(2, 9):
        nodes.append(Node(j, f"leaf{j}", 0.0, 0.0, 1.0, True, False, None, 0.0))
        edges.append((j % 2, j))
    g = Graph(nodes, edges, 2, 0, math.inf)
    merged = UnitProblem.from_graph(g)
    assert merged.num_units == 2
    assert ideal_dp(g).value == pytest.approx(brute_force(g.with_resources(num_accelerators=2)))


def test_pipedream_is_the_chain_restriction():
    # a diamond: the chain order forces one branch before the other
    nodes = [Node(i, f"n{i}", t, 10 * t, 0.0, True, False, None, 0.1) for i, t in enumerate([1, 4, 4, 1])]
    g = Graph(nodes, [(0, 1), (0, 2), (1, 3), (2, 3)], 3, 0, math.inf)
    pd, dp = pipedream(g), ideal_dp(g)
    assert dp.value <= pd.value + 1e-12
    assert solve_contiguous(g, chain=True).value == pytest.approx(pd.value)


def test_solution_json_has_the_expert_format():
    sol = ideal_dp(_chain([1.0, 2.0, 3.0], [0.1, 0.1, 0.0], k=2, l=1))
    out = sol.to_json()
    for key in ("objective", "method", "optimal", "lower_bound", "solve_seconds", "fpgas", "cpus"):
        assert key in out
    assert len(out["fpgas"]) == 2 and len(out["cpus"]) == 1
    assert max(d["load"] for d in out["fpgas"] + out["cpus"]) == pytest.approx(out["value"])
    assert out["stats"]["ideals"] >= 4 and out["stats"]["pairs_examined"] > 0
