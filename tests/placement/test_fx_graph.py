"""Graphs of real modules: fx structure, FLOP-based times, memory and transfer costs."""

import pytest
import torch
import torch.nn as nn
from _small_modules import SmallCNN
from torch.utils.flop_counter import FlopCounterMode

from kfac_ext.placement.fx_graph import from_module, trace
from kfac_ext.placement.graph import Graph


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(7, 5)
        self.mid = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(h + self.mid(h))


def test_structure_follows_fx():
    model = Residual()
    x = torch.randn(6, 7)
    g = from_module(model, (x,))
    fx_nodes = [n for n in trace(model).graph.nodes if n.op != "output"]
    assert [n.name for n in g.nodes] == [n.name for n in fx_nodes]
    assert [n.id for n in g.nodes] == list(range(1, len(fx_nodes) + 1))
    ids = {n.name: i + 1 for i, n in enumerate(fx_nodes)}
    expected = {(ids[p.name], ids[n.name]) for n in fx_nodes for p in n.all_input_nodes}
    assert set(g.edges) == expected
    assert g.topological_order() == [n.id for n in g.nodes]  # fx order is topological
    assert isinstance(g, Graph) and g.num_accelerators == 2 and g.num_cpus == 0


def test_flop_times_memory_and_transfer():
    model = Residual().double()
    n, bw, af, cf = 6, 2e9, 1e9, 1e8
    x = torch.randn(n, 7, dtype=torch.float64)
    g = from_module(model, (x,), bandwidth=bw, accel_flops=af, cpu_flops=cf, min_time_ms=0.0)
    node = {v.name: v for v in g.nodes}
    # Linear 7->5 on n rows: 2*n*7*5 FLOPs; weights+bias and an (n, 5) float64 output
    lin = node["inp"]
    assert lin.accel_time == pytest.approx(1e3 * 2 * n * 7 * 5 / af)
    assert lin.cpu_time == pytest.approx(1e3 * 2 * n * 7 * 5 / cf)
    assert lin.size == (7 * 5 + 5) * 8 + n * 5 * 8
    assert lin.out_cost == pytest.approx(1e3 * n * 5 * 8 / bw)
    assert node["x"].size == n * 7 * 8 and node["x"].accel_time == 0.0
    assert node["relu"].accel_time == 0.0  # no FLOPs counted for an activation
    assert node["out"].out_cost == 0.0  # nobody consumes the model output
    # per-node FLOPs add up to the whole model's count
    with FlopCounterMode(display=False) as fc:
        model(x)
    assert sum(v.accel_time for v in g.nodes) == pytest.approx(1e3 * fc.get_total_flops() / af)


def test_conv_model_flops_add_up():
    model = SmallCNN()
    x = torch.randn(2, 3, 8, 8)
    g = from_module(model, x, accel_flops=1e9, min_time_ms=0.0)
    with FlopCounterMode(display=False) as fc:
        model(x)
    assert sum(v.accel_time for v in g.nodes) == pytest.approx(1e3 * fc.get_total_flops() / 1e9)
    assert g.node(1).name == "x"
    conv2 = next(v for v in g.nodes if v.name == "conv2")
    assert conv2.out_cost == pytest.approx(1e3 * 2 * 6 * 3 * 3 * 4 / 16e9)


def test_min_time_and_profile_cost():
    model = SmallCNN()
    x = torch.randn(2, 3, 8, 8)
    g = from_module(model, x, min_time_ms=0.5)
    assert all(v.accel_time >= 0.5 for v in g.nodes if v.name != "x")
    p = from_module(model, x, cost="profile", repeats=2, cpu_slowdown=3.0)
    assert all(v.accel_time > 0 for v in p.nodes if v.name != "x")
    assert all(v.cpu_time == pytest.approx(3.0 * v.accel_time) for v in p.nodes)


def test_training_graph_pairs_forward_and_backward():
    model = Residual()
    g = from_module(model, torch.randn(4, 7), training=True, backward_factor=2.0)
    fwd = [v for v in g.nodes if not v.is_backward]
    bwd = [v for v in g.nodes if v.is_backward]
    assert len(fwd) == len(bwd)
    off = len(fwd)
    for v in fwd:
        b = g.node(v.id + off)
        assert b.is_backward and b.color == v.color is not None
        assert b.accel_time == pytest.approx(2.0 * v.accel_time)
        assert (v.id, b.id) in g.edges
    fwd_edges = [(s, d) for s, d in g.edges if s <= off and d <= off]
    for s, d in fwd_edges:
        assert (d + off, s + off) in g.edges
    g.validate()


def test_bad_arguments():
    x = torch.randn(2, 7)
    with pytest.raises(ValueError, match="cost"):
        from_module(Residual(), x, cost="guess")
    with pytest.raises(ValueError, match="bandwidth"):
        from_module(Residual(), x, bandwidth=0)

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow

    with pytest.raises(ValueError, match="symbolic_trace"):
        from_module(Branchy(), x)
