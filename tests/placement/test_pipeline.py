"""A split found by the placement engine runs as a real pipeline (torch.distributed.pipelining,
Gloo, 2 processes on 127.0.0.1) and gives the unsplit model's outputs and gradients."""

import pytest
import torch
import torch.nn as nn
from _small_modules import SmallCNN

from kfac_ext.placement.dp import ideal_dp
from kfac_ext.placement.fx_graph import from_module
from kfac_ext.placement.objective import Placement, PlacementError
from kfac_ext.placement.pipeline import pipeline_stages, run_locally, split_module, stage_order


class Residual(nn.Module):
    """A skip connection that crosses the stage boundary."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(7, 6)
        self.mid = nn.Linear(6, 6)
        self.deep = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        g = torch.relu(self.mid(h))
        return self.out(h + self.deep(g))


def reference(model, x, y, loss_fn, n_micro):
    """Unsplit model: outputs, and grads of the mean of the micro-batch losses."""
    model.zero_grad()
    out = model(x)
    losses = [loss_fn(o, t) for o, t in zip(out.chunk(n_micro), y.chunk(n_micro))]
    (sum(losses) / n_micro).backward()
    return out.detach(), [l.detach() for l in losses], {n: p.grad.clone() for n, p in model.named_parameters()}


def check_against_reference(model, result, x, y, loss_fn, n_micro, tol):
    out, losses, grads = reference(model, x, y, loss_fn, n_micro)
    torch.testing.assert_close(result["output"], out, rtol=tol, atol=tol)
    torch.testing.assert_close(torch.stack(result["losses"]), torch.stack(losses), rtol=tol, atol=tol)
    assert set(result["grads"]) == set(grads)
    for name in grads:
        torch.testing.assert_close(result["grads"][name], grads[name], rtol=tol, atol=tol, msg=name)


def test_stage_order_and_split_module():
    model = Residual()
    g = from_module(model, torch.randn(4, 7))
    names = [v.name for v in g.nodes]
    ids = {v.name: v.id for v in g.nodes}
    first = [ids[n] for n in names[:4]]
    second = [ids[n] for n in names[4:]]
    # devices listed in the "wrong" order: stage_order still puts the producer first
    assert stage_order(g, Placement([second, first])) == [names[:4], names[4:]]
    gm = split_module(model, [names[:4], names[4:]])
    x = torch.randn(5, 7)
    torch.testing.assert_close(gm(x), model(x))
    # data flowing back and forth is no pipeline
    with pytest.raises(PlacementError, match="not contiguous"):
        stage_order(
            g,
            Placement(
                [[ids["x"], ids["inp"], ids["deep"], ids["add"], ids["out"]], [ids["tanh"], ids["mid"], ids["relu"]]]
            ),
        )
    with pytest.raises(PlacementError, match="does not place"):
        stage_order(g, Placement([first]))
    # a device holding only the model input is no stage: inputs go to the first stage
    only_input = Placement([[ids["x"]], [i for i in first + second if i != ids["x"]]])
    assert len(stage_order(g, only_input)) == 2
    assert pipeline_stages(model, g, only_input) == [[n for n in names if n != "x"]]


def test_dp_split_runs_as_gpipe_float64():
    torch.manual_seed(0)
    model = Residual().double()
    x = torch.randn(8, 7, dtype=torch.float64)
    y = torch.randn(8, 3, dtype=torch.float64)
    graph = from_module(model, (x[:4],), num_accelerators=2)
    solution = ideal_dp(graph)
    assert len(stage_order(graph, solution.placement)) == 2
    result = run_locally(model, graph, solution.placement, (x,), y, nn.MSELoss(), n_microbatches=4, schedule="gpipe")
    check_against_reference(model, result, x, y, nn.MSELoss(), 4, tol=1e-10)


def test_cnn_split_runs_as_1f1b_float32():
    torch.manual_seed(1)
    model = SmallCNN()
    x = torch.randn(6, 3, 8, 8)
    y = torch.randint(0, 5, (6,))
    graph = from_module(model, (x[:2],))
    names = [v.name for v in graph.nodes]
    cut = names.index("conv2")  # stage 0: conv1 block, stage 1: the rest
    placement = Placement([[v.id for v in graph.nodes[:cut]], [v.id for v in graph.nodes[cut:]]])
    result = run_locally(model, graph, placement, (x,), y, nn.CrossEntropyLoss(), n_microbatches=3, schedule="1f1b")
    check_against_reference(model, result, x, y, nn.CrossEntropyLoss(), 3, tol=1e-5)


def test_bad_schedule_and_batch():
    model = Residual()
    g = from_module(model, torch.randn(4, 7))
    p = Placement([[v.id for v in g.nodes]])
    with pytest.raises(ValueError, match="schedule"):
        run_locally(model, g, p, (torch.randn(4, 7),), schedule="zigzag")
    with pytest.raises(ValueError, match="divisible"):
        run_locally(model, g, p, (torch.randn(5, 7),), n_microbatches=2)
