"""Graph model: JSON round trip, validation messages, contiguity units, the objective."""

import json
import math

import pytest

from kfac_ext.placement import (
    Graph,
    GraphError,
    Node,
    Placement,
    PlacementError,
    check_placement,
    device_load,
    throughput_loads,
)


def _doc(**over):
    doc = {
        "maxSizePerFPGA": 100.0,
        "maxFPGAs": 2,
        "maxCPUs": 1,
        "nodes": [
            {
                "id": i,
                "name": f"n{i}",
                "supportedOnFpga": 1,
                "cpuLatency": 10.0 * (i + 1),
                "fpgaLatency": 1.0 * (i + 1),
                "isBackwardNode": 0,
                "colorClass": i,
                "size": 10.0,
            }
            for i in range(4)
        ],
        "edges": [
            {"sourceId": 0, "destId": 1, "cost": 0.5},
            {"sourceId": 0, "destId": 2, "cost": 0.5},
            {"sourceId": 1, "destId": 3, "cost": 0.25},
            {"sourceId": 2, "destId": 3, "cost": 0.125},
        ],
    }
    doc.update(over)
    return doc


def test_json_round_trip(tmp_path):
    g = Graph.from_json(_doc())
    assert len(g) == 4 and g.num_accelerators == 2 and g.num_cpus == 1 and g.memory_cap == 100.0
    assert g.node(0).out_cost == 0.5 and g.node(3).out_cost == 0.0
    assert g.successors(0) == [1, 2] and g.predecessors(3) == [1, 2]
    path = tmp_path / "g.json"
    g.save(path)
    again = Graph.from_json(path)
    assert again.nodes == g.nodes and again.edges == g.edges
    assert json.loads(path.read_text())["edges"][0]["cost"] == 0.5


def test_topological_order_and_resources():
    g = Graph.from_json(_doc())
    order = g.topological_order()
    pos = {v: i for i, v in enumerate(order)}
    assert all(pos[s] < pos[d] for s, d in g.edges)
    h = g.with_resources(num_accelerators=5, memory_cap=7.0)
    assert (h.num_accelerators, h.num_cpus, h.memory_cap) == (5, 1, 7.0) and g.num_accelerators == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["edges"].append({"sourceId": 3, "destId": 0, "cost": 0.0}), "cycle through node"),
        (
            lambda d: d["edges"].append({"sourceId": 2, "destId": 2, "cost": 0.125}),
            "node 2 ('n2') has an edge to itself",
        ),
        (
            lambda d: d["edges"].append({"sourceId": 1, "destId": 9, "cost": 0.25}),
            "edge 1 -> 9: destination 9 is not a node id",
        ),
        (lambda d: d["nodes"].append(dict(d["nodes"][0])), "duplicate node id 0"),
        (
            lambda d: d["nodes"][1].update(fpgaLatency=-1.0),
            "node 1 ('n1'): accel_time (fpgaLatency) must be finite and >= 0",
        ),
        (
            lambda d: d["nodes"][2].update(cpuLatency=float("nan")),
            "node 2 ('n2'): cpu_time (cpuLatency) must be finite",
        ),
        (lambda d: d["nodes"][3].update(size=float("inf")), "node 3 ('n3'): size must be finite"),
        (lambda d: d["edges"].__setitem__(3, {"sourceId": 2, "destId": 3, "cost": -2.0}), "node 2 ('n2'): out_cost"),
        (lambda d: d["edges"].append({"sourceId": 0, "destId": 3, "cost": 9.0}), "edge 0 -> 3: cost 9.0 differs"),
        (lambda d: d["nodes"][0].update(fpgaLatency="fast"), "node 0: fpgaLatency must be a number"),
    ],
)
def test_validation_names_the_offender(mutate, message):
    doc = _doc()
    mutate(doc)
    with pytest.raises(GraphError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Graph.from_json(doc)


def test_cycle_message_lists_the_cycle():
    doc = _doc()
    doc["edges"].append({"sourceId": 3, "destId": 1, "cost": 0.0})
    with pytest.raises(GraphError) as e:
        Graph.from_json(doc)
    assert "1 -> 3 -> 1" in str(e.value) or "3 -> 1 -> 3" in str(e.value)


def test_memory_and_device_feasibility_without_cpus():
    big = _doc(maxCPUs=0)
    big["nodes"][2]["size"] = 500.0
    with pytest.raises(GraphError, match=r"node 2 \('n2'\) needs 500 bytes but an accelerator holds 100"):
        Graph.from_json(big)
    cpu_only = _doc(maxCPUs=0)
    cpu_only["nodes"][1]["supportedOnFpga"] = 0
    with pytest.raises(GraphError, match=r"node 1 \('n1'\) is not supported on an accelerator and there are no CPUs"):
        Graph.from_json(cpu_only)
    colour = _doc(maxCPUs=0)
    for n in colour["nodes"]:
        n["colorClass"] = 7
        n["size"] = 30.0
    with pytest.raises(GraphError, match="colour class 7 .4 nodes.* needs 120 bytes on one device"):
        Graph.from_json(colour)
    # with a CPU, all of these are placeable
    for doc in (big, cpu_only, colour):
        doc["maxCPUs"] = 1
        Graph.from_json(doc)
    with pytest.raises(GraphError, match="at least one device"):
        Graph.from_json(_doc(maxFPGAs=0, maxCPUs=0))


def _training_graph():
    # forward 0 -> 1 -> 2, backward 5 -> 4 -> 3 (colours 0,1,2), plus a backward-only class 9
    # (node 6, between backward 5 and 4) and an uncoloured forward leaf 7.
    nodes = [Node(i, f"f{i}", 1.0, 10.0, 1.0, True, False, i, 0.5) for i in range(3)]
    nodes += [Node(3 + i, f"b{i}", 2.0, 20.0, 1.0, True, True, i, 0.5) for i in range(3)]
    nodes += [
        Node(6, "grad_only", 0.5, 5.0, 0.0, True, True, 9, 0.5),
        Node(7, "leaf", 0.1, 1.0, 0.0, True, False, None, 0.0),
    ]
    edges = [(0, 1), (1, 2), (2, 5), (5, 6), (6, 4), (4, 3), (0, 3), (1, 4), (1, 7)]
    return Graph(nodes, edges, 2, 0, math.inf)


def test_contiguity_units_follow_the_forward_pass():
    g = _training_graph()
    g.validate()
    unit_of, unit_edges = g.contiguity_units()
    for i in range(3):  # backward nodes ride with their forward colour mates
        assert unit_of[i] == unit_of[3 + i]
    u = unit_of
    assert (u[0], u[1]) in unit_edges and (u[1], u[2]) in unit_edges and (u[1], u[7]) in unit_edges
    # the backward-only class sits where its mirror would: after 1's class, before 2's... mirrored
    assert (u[1], u[6]) in unit_edges and (u[6], u[2]) in unit_edges
    assert all(a < b for a, b in unit_edges)  # numbered topologically


def test_colour_classes_on_a_cycle_are_fused():
    # 0 -> 1 -> 2 with 0 and 2 in one class: 1 cannot be separated from them contiguously
    nodes = [Node(i, f"n{i}", 1.0, 1.0, 0.0, True, False, c, 0.0) for i, c in enumerate([5, 6, 5])]
    g = Graph(nodes, [(0, 1), (1, 2)], 2, 0, math.inf)
    unit_of, unit_edges = g.contiguity_units()
    assert len(set(unit_of.values())) == 1 and unit_edges == []


def test_loads_by_hand():
    g = Graph.from_json(_doc())
    # {0, 1} | {2, 3}: node 0's output crosses (to 2), node 1's crosses (to 3), node 2's does not
    p = Placement([[0, 1], [2, 3]], [[]])
    value, acc, cpu = throughput_loads(g, p)
    assert acc == pytest.approx([1 + 2 + 0.5 + 0.25, 3 + 4 + 0.5 + 0.25]) and cpu == [0.0]
    assert value == pytest.approx(7.75)
    assert device_load(g, [0, 1]) == pytest.approx(acc[0])
    assert device_load(g, [2, 3], on_cpu=True) == pytest.approx(70.0)
    # a CPU pays no transfer; the accelerators on the other side do
    value, acc, cpu = throughput_loads(g, Placement([[0, 1, 2], []], [[3]]))
    assert acc == [pytest.approx(6 + 0.25 + 0.125), 0.0] and cpu == [pytest.approx(40.0)]


def test_placement_checks():
    g = Graph.from_json(_doc())
    with pytest.raises(PlacementError, match="node 3 .* is not placed"):
        check_placement(g, Placement([[0, 1], [2]], []))
    with pytest.raises(PlacementError, match="node 1 is placed twice"):
        check_placement(g, Placement([[0, 1], [1, 2, 3]], []))
    with pytest.raises(PlacementError, match="uses 3 accelerators but only 2"):
        check_placement(g, Placement([[0], [1], [2, 3]], []))
    with pytest.raises(PlacementError, match="over the cap"):
        check_placement(g.with_resources(memory_cap=25.0), Placement([[0, 1, 2], [3]], []))
    with pytest.raises(PlacementError, match="node 42, which is not in the graph"):
        check_placement(g, Placement([[0, 1, 2, 3, 42]], []))
    coloured = _training_graph()
    with pytest.raises(PlacementError, match="colour class 0 is split"):
        check_placement(coloured, Placement([[0, 1, 2, 4, 5, 6, 7], [3]], []))


def test_inference_split_completes_to_training():
    g = _training_graph()
    with pytest.raises(PlacementError, match="node 6"):  # the backward-only class has no forward mate
        Placement([[0, 7], [1, 2]], []).complete_by_colour(g)
    ok = Placement([[0, 7], [1, 2, 6]], []).complete_by_colour(g)
    assert sorted(ok.accelerators[0]) == [0, 3, 7] and sorted(ok.accelerators[1]) == [1, 2, 4, 5, 6]
