"""AdaptiveDamping: the Levenberg–Marquardt rule, the reduction ratio of K-FAC's quadratic
model (exact on a quadratic loss with exact factors), and its use by KFACPreconditioner."""

import math

import pytest
import torch
from torch import nn

from kfac_ext import KFACPreconditioner
from kfac_ext.adaptive_damping import AdaptiveDamping
from kfac_ext.comm import LocalComm
from kfac_ext.layers import KFACLayer


def test_levenberg_marquardt_rule_and_bounds():
    d = AdaptiveDamping(initial=1.0, interval=5, min_damping=0.5, max_damping=1.5)
    omega = (19 / 20) ** 5
    assert d.decay == pytest.approx(omega)
    d.update(0.9)  # trustworthy model: less damping
    assert d(0) == pytest.approx(omega)
    d.update(0.5)  # in between: unchanged
    assert d(7) == pytest.approx(omega)
    d.update(0.1)
    d.update(-math.inf)  # a step that did not decrease the loss: more
    assert d(0) == pytest.approx(1 / omega)
    for _ in range(50):
        d.update(0.9)
    assert d.value == 0.5  # clamped at min_damping
    for _ in range(50):
        d.update(0.0)
    assert d.value == 1.5


class _Pre:
    """What AdaptiveDamping.observe reads from a preconditioner: its layers."""

    def __init__(self, layers):
        self.layers = layers


def _quadratic_setup():
    """L(W) = mean_i ||W [x_i, 1] - t_i||^2 / 2 for a float64 Linear: its exact curvature
    in K-FAC form is A = X̃ᵀX̃/N (with the ones column), G = I."""
    torch.manual_seed(1)
    model = nn.Linear(6, 3).double()
    x, t = torch.randn(13, 6, dtype=torch.float64), torch.randn(13, 3, dtype=torch.float64)
    layer = KFACLayer("fc", model)
    xa = torch.cat([x, torch.ones(13, 1, dtype=torch.float64)], 1)
    layer.A.copy_(xa.T @ xa / 13)
    layer.G.copy_(torch.eye(3, dtype=torch.float64))
    layer.factor_updates = 1

    def closure():
        return 0.5 * ((model(x) - t) ** 2).sum(1).mean()

    return model, layer, closure


@pytest.mark.parametrize("curvature_scale,want_rho", [(1.0, 1.0), (2.0, None)])
def test_reduction_ratio_is_one_for_a_quadratic_with_exact_factors(curvature_scale, want_rho):
    model, layer, closure = _quadratic_setup()
    damping = AdaptiveDamping(initial=1.0, interval=1, curvature_scale=curvature_scale)
    pre = _Pre([layer])
    model.zero_grad()
    loss = closure()
    loss.backward()
    g = torch.cat([model.weight.grad, model.bias.grad[:, None]], 1).clone()
    damping.observe(pre.layers, 0, closure)
    # A descent move that is not the gradient's direction: -(g + noise).
    gen = torch.Generator().manual_seed(5)
    delta = -0.2 * (g + 0.5 * torch.randn(3, 7, generator=gen, dtype=torch.float64))
    with torch.no_grad():
        model.weight.add_(delta[:, :-1])
        model.bias.add_(delta[:, -1])
    new_loss = closure().item()
    damping.observe(pre.layers, 1, closure)  # next step: finishes the pending measurement
    model_change = (g * delta).sum() + 0.5 * curvature_scale * ((layer.G @ delta @ layer.A) * delta).sum()
    assert model_change < 0
    rho = (new_loss - loss.item()) / model_change.item()
    if want_rho is not None:
        assert rho == pytest.approx(want_rho, abs=1e-9)  # the reference itself
    assert damping.last_rho == pytest.approx(rho, rel=1e-9, abs=1e-12)
    assert damping.updates == 1


def test_preconditioner_adapts_its_damping_and_keeps_it_in_its_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    damping = AdaptiveDamping(initial=1.0, interval=2, curvature_scale=16**2)
    pre = KFACPreconditioner(model, comm=LocalComm(), damping=damping, lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t = torch.randn(16, 5), torch.randn(16, 3)

    def loss_fn():
        return ((model(x) - t) ** 2).sum(1).mean()

    for _ in range(12):
        opt.zero_grad()
        loss_fn().backward()
        pre.step(closure=loss_fn)
        opt.step()
    assert damping.updates == 5 and damping.value != 1.0 and damping.last_rho is not None
    assert pre.damping(0) == damping.value  # what the preconditioner uses
    state = pre.state_dict()
    other = AdaptiveDamping(initial=1.0, interval=2, curvature_scale=16**2)
    KFACPreconditioner(model, comm=LocalComm(), damping=other).load_state_dict(state)
    assert other.value == damping.value
    # Without a closure on a measuring step: a clear error.
    opt.zero_grad()
    loss_fn().backward()
    with pytest.raises(ValueError, match="closure"):
        KFACPreconditioner(model, comm=LocalComm(), damping=AdaptiveDamping(initial=1.0)).step()


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(initial=0.0), "initial must be"),
        (dict(initial=1.0, interval=0), "interval"),
        (dict(initial=1.0, decay=1.0), "decay"),
        (dict(initial=10.0, max_damping=1.0), "outside"),
    ],
)
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        AdaptiveDamping(**kwargs)
