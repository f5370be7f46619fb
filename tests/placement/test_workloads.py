"""Every throughput workload of the paper solves exactly; the optimum beats every baseline,
and its reported loads recompute from the JSON alone. The k = 2, 4, 8 variants too."""

import json
import pathlib

import pytest

from kfac_ext.placement import Graph, Placement, throughput_loads
from kfac_ext.placement.baselines import expert, greedy, one_device, pipedream
from kfac_ext.placement.dp import ideal_dp

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKLOADS = REPO / "workloads"  # bundled with the repository (workloads/README.md)
FILES = sorted((WORKLOADS / "throughput-inputs").glob("*/*.json"))
assert FILES, f"no throughput workloads under {WORKLOADS}"


def _name(path):
    return f"{path.parent.name}/{path.name}"


def _expert_for(path):
    model, kind = path.stem.split("_", 1) if path.parent.name == "LayerGraphs" else (None, None)
    if model is None:
        return None
    for candidate in (f"{model}_{kind}_expert.json", f"{model}_inference_expert.json"):
        split = WORKLOADS / "human-experts" / candidate
        if split.exists():
            return split
    return None


def _check(graph, path):
    sol = ideal_dp(graph)
    assert sol.optimal and sol.stats["ideals"] > 0
    # recompute from the JSON alone: reload the graph, read the solution's own JSON
    out = json.loads(json.dumps(sol.to_json()))
    again = Graph.from_json(json.loads(json.dumps(graph.to_json())))
    value, acc, cpu = throughput_loads(again, Placement.from_json(out))
    assert value == pytest.approx(out["value"], rel=1e-12)
    assert acc == pytest.approx([d["load"] for d in out["fpgas"]], rel=1e-12)
    assert cpu == pytest.approx([d["load"] for d in out["cpus"]], rel=1e-12)
    baselines = [pipedream(graph), greedy(graph), one_device(graph)]
    split = _expert_for(path)
    if split is not None and graph.num_accelerators >= len(json.loads(split.read_text())["fpgas"]):
        baselines.append(expert(graph, split))
    for b in baselines:
        if b.stats.get("memory_ok", True):
            assert sol.value <= b.value * (1 + 1e-12), (b.method, b.value, sol.value)
    assert sol.lower_bound == sol.value
    return sol


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_workload_at_its_own_k(path):
    _check(Graph.from_json(path), path)


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("path", FILES, ids=_name)
def test_workload_k_variants(path, k):
    _check(Graph.from_json(path).with_resources(num_accelerators=k), path)


def test_expert_splits_score_on_both_graphs():
    """An inference split also places the training graph (backward nodes with their forward colours)."""
    inf = Graph.from_json(WORKLOADS / "throughput-inputs/LayerGraphs/bert24_inference.json")
    train = Graph.from_json(WORKLOADS / "throughput-inputs/LayerGraphs/bert24_training.json")
    split = WORKLOADS / "human-experts/bert24_inference_expert.json"
    a, b = expert(inf, split), expert(train, split)
    assert 0 < a.value < b.value  # the backward pass adds work to every device
    assert sum(len(n) for n in b.placement.accelerators) == len(train)
