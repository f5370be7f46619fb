"""`kfac-ext place`: table, --json in the experts' split format, --plot, methods, one-line errors."""

import json

import pytest

from kfac_ext.cli import main
from kfac_ext.placement import Graph, Node, Placement, throughput_loads


@pytest.fixture
def graph_file(tmp_path):
    # a diamond with a CPU-friendly tail
    nodes = [
        Node(0, "in", 1.0, 10.0, 5.0, True, False, None, 0.2),
        Node(1, "left", 4.0, 40.0, 5.0, True, False, None, 0.3),
        Node(2, "right", 3.0, 30.0, 5.0, True, False, None, 0.1),
        Node(3, "join", 2.0, 20.0, 5.0, True, False, None, 0.4),
        Node(4, "post", 0.5, 1.0, 0.0, False, False, None, 0.0),
    ]
    g = Graph(nodes, [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4)], 2, 1, 12.0)
    path = tmp_path / "g.json"
    g.save(path)
    return path


def _run(capsys, *argv):
    code = main(["place", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_names_devices_and_bottleneck(graph_file, capsys):
    code, out, _ = _run(capsys, graph_file)
    assert code == 0
    for word in (
        "device",
        "compute",
        "transfer",
        "load",
        "memory",
        "accel0",
        "accel1",
        "cpu0",
        "bottleneck",
        "optimal",
    ):
        assert word in out


def test_json_output_recomputes(graph_file, capsys):
    code, out, _ = _run(capsys, graph_file, "--json")
    assert code == 0
    data = json.loads(out)
    for key in ("objective", "method", "optimal", "lower_bound", "solve_seconds", "fpgas", "cpus"):
        assert key in data
    assert data["objective"] == "throughput" and data["method"] == "dp" and data["optimal"] is True
    g = Graph.from_json(graph_file)
    value, acc, cpu = throughput_loads(g, Placement.from_json(data))
    assert value == pytest.approx(data["value"])
    assert [d["load"] for d in data["fpgas"]] == pytest.approx(acc)


@pytest.mark.parametrize("method", ["one", "greedy", "pipedream", "dp"])
def test_methods_and_resource_overrides(graph_file, capsys, method):
    code, out, _ = _run(capsys, graph_file, "--method", method, "--devices", 3, "--memory", 1e9, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["method"] == method and len(data["fpgas"]) == 3
    dp = json.loads(_run(capsys, graph_file, "--devices", 3, "--memory", 1e9, "--json")[1])
    assert dp["value"] <= data["value"] + 1e-12


def test_expert_split_and_plot(graph_file, tmp_path, capsys):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"fpgas": [{"nodes": [0, 1]}, {"nodes": [2, 3]}], "cpus": [{"nodes": [4]}]}))
    png = tmp_path / "loads.png"
    code, out, _ = _run(capsys, graph_file, "--method", "expert", "--split", split, "--plot", png, "--json")
    assert code == 0 and png.stat().st_size > 1000
    assert json.loads(out)["method"] == "expert"


def test_milp_is_dispatched(graph_file, capsys):
    pytest.importorskip("highspy")
    code, out, _ = _run(capsys, graph_file, "--method", "milp", "--time-limit", 20, "--json")
    assert code == 0
    data = json.loads(out)
    dp = json.loads(_run(capsys, graph_file, "--json")[1])
    assert data["method"] == "milp" and data["value"] <= dp["value"] + 1e-9


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}"], "cannot read graph file"),
        (["{file}", "--devices", "0", "--cpus", "0"], "at least one device"),
        (["{file}", "--method", "expert"], "--method expert needs --split"),
        (["{file}", "--cpus", "0"], "node 4 ('post') is not supported on an accelerator"),
        (["{bad}"], "edge 0 -> 7: destination 7 is not a node id"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(graph_file, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.json"
    doc = json.loads(graph_file.read_text())
    doc["edges"].append({"sourceId": 0, "destId": 7, "cost": 0.2})
    bad.write_text(json.dumps(doc))
    subst = {"{file}": str(graph_file), "{missing}": str(tmp_path / "nope.json"), "{bad}": str(bad)}
    code, out, err = _run(capsys, *[subst.get(a, a) for a in argv])
    assert code != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_infeasible_memory_is_reported(graph_file, capsys):
    code, _, err = _run(capsys, graph_file, "--memory", 4, "--cpus", 0)
    assert code != 0 and "needs 5 bytes" in err


def test_placement_does_not_load_torch_or_the_kfac_ops():
    """kfac_ext's __init__ loads the K-FAC side lazily, so the placement engine
    and `kfac-ext place` start without torch (about a second on a small CPU)."""
    import subprocess
    import sys

    code = (
        "import sys, kfac_ext.placement, kfac_ext.placement.dp; "
        "print(sorted(m for m in ('torch', 'kfac_ext._C', 'kfac_ext.ops') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
