"""`kfac-ext place --module PKG.MOD:FACTORY --input-shape ...`: a real model placed from the
command line (torch.fx trace, FLOP costs, the DP), on a ResNet and a small transformer;
--save-graph writes the workloads' schema and solving that file again gives the same
optimum; bad module paths, factories and shapes are one-line errors."""

import json

import pytest

from kfac_ext.cli import main
from kfac_ext.placement import Graph

MODELS = [("_small_modules:small_resnet", "2,3,8,8"), ("_small_modules:tiny_transformer", "2,5,8")]


def _place(capsys, *argv):
    code = main(["place", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("spec, shape", MODELS)
def test_module_round_trip_through_save_graph(spec, shape, tmp_path, capsys):
    saved = tmp_path / "graph.json"
    png = tmp_path / "loads.png"
    code, out, err = _place(
        capsys, "--module", spec, "--input-shape", shape, "--devices", 2, "--save-graph", saved, "--plot", png, "--json"
    )
    assert code == 0, err
    first = json.loads(out)
    assert first["method"] == "dp" and first["optimal"] and png.stat().st_size > 1000
    graph = Graph.from_json(saved)  # the workloads' schema, node names = fx node names
    assert graph.num_accelerators == 2 and len(graph) > 5
    again = json.loads(_place(capsys, saved, "--json")[1])
    assert again["value"] == pytest.approx(first["value"], rel=1e-12)
    assert [d["nodes"] for d in again["fpgas"]] == [d["nodes"] for d in first["fpgas"]]
    # both devices hold work: the optimum beats one device
    one = json.loads(_place(capsys, saved, "--method", "one", "--json")[1])
    assert first["value"] < one["value"]


@pytest.mark.parametrize("cost", ["flops", "profile"])
def test_module_table(capsys, cost):
    code, out, _ = _place(
        capsys, "--module", MODELS[1][0], "--input-shape", MODELS[1][1], "--devices", 2, "--cost", cost
    )
    assert code == 0 and "accel1" in out and "optimal" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--module", "nodots", "--input-shape", "2,3"], "--module must look like PKG.MOD:FACTORY, got 'nodots'"),
        (
            ["--module", "no_such_pkg_xyz.mod:f", "--input-shape", "2,3"],
            "--module: cannot import 'no_such_pkg_xyz.mod': ModuleNotFoundError",
        ),
        (
            ["--module", "_small_modules:missing", "--input-shape", "2,3"],
            "--module: '_small_modules' has no attribute 'missing'",
        ),
        (["--module", "_small_modules:torch", "--input-shape", "2,3"], "is not callable (it is a module)"),
        (
            ["--module", "_small_modules:broken_factory", "--input-shape", "2,3"],
            "--module: _small_modules:broken_factory() raised RuntimeError: no weights here",
        ),
        (["--module", "_small_modules:not_a_module", "--input-shape", "2,3"], "returned a int, not a torch.nn.Module"),
        (["--module", "_small_modules:small_cnn", "--input-shape", "2,x"], "--input-shape must be comma-separated"),
        (["--module", "_small_modules:small_cnn", "--input-shape", "0,3,8,8"], "--input-shape must be comma-separated"),
        (["--module", "_small_modules:small_cnn", "--input-shape", "100000,3,224,224"], "elements, over the limit"),
        (
            ["--module", "_small_modules:small_cnn", "--input-shape", "2,5,8,8"],
            "the model's forward failed on an input of shape (2, 5, 8, 8)",
        ),
        (["--module", "_small_modules:small_cnn"], "--module needs --input-shape"),
        ([], "give a graph FILE.json or --module"),
        (
            ["{file}", "--module", "_small_modules:small_cnn", "--input-shape", "2,3,8,8"],
            "give a graph FILE.json or --module",
        ),
        (["{file}", "--input-shape", "2,3"], "--input-shape goes with --module"),
        (
            ["--module", "_small_modules:small_cnn", "--input-shape", "2,3,8,8", "--save-graph", "{tmp}/no/dir/g.json"],
            "--save-graph: cannot write",
        ),
    ],
)
def test_module_errors_are_one_line(argv, message, tmp_path, capsys):
    file = tmp_path / "g.json"
    file.write_text(json.dumps({"nodes": [{"id": 1, "fpgaLatency": 1, "cpuLatency": 1}], "edges": []}))
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{file}", str(file)) for a in argv]
    code, out, err = _place(capsys, *argv)
    assert code != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and message in err, err
