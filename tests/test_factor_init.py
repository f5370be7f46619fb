"""factor_init ('identity' | 'first_batch') and g_scale of KFACPreconditioner, against
float64 references in plain PyTorch."""

import pytest
import torch
from torch import nn

from kfac_ext import KFACPreconditioner
from kfac_ext.comm import LocalComm


def _batch_factors(model, x, target):
    """Reference A = [x, 1]^T [x, 1] / N and G = g^T g / N (g: grad of the mean loss
    w.r.t. the layer output), float64, on a float64 copy of ``model``."""
    ref = nn.Linear(model.in_features, model.out_features).double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x64 = x.double()
    out = ref(x64)
    out.retain_grad()
    ((out - target.double()) ** 2).sum(1).mean().backward()
    xa = torch.cat([x64, torch.ones(len(x64), 1, dtype=torch.float64)], 1)
    return xa.T @ xa / len(x64), out.grad.T @ out.grad / len(x64)


def _step(pre, model, x, target):
    model.zero_grad()
    ((model(x) - target) ** 2).sum(1).mean().backward()
    pre.step()


@pytest.mark.parametrize("init", ["identity", "first_batch"])
def test_running_factors_start_where_factor_init_says(init):
    torch.manual_seed(0)
    model = nn.Linear(7, 5)
    pre = KFACPreconditioner(model, comm=LocalComm(), kl_clip=None, damping=0.01, factor_init=init)
    x1, t1 = torch.randn(11, 7), torch.randn(11, 5)
    x2, t2 = torch.randn(11, 7), torch.randn(11, 5)
    a1, g1 = _batch_factors(model, x1, t1)
    _step(pre, model, x1, t1)
    layer = pre.layers[0]
    if init == "first_batch":
        want_a, want_g = a1, g1
    else:  # kfac-pytorch: the identity, blended with weight 1 - 0.95
        want_a = 0.95 * torch.eye(8, dtype=torch.float64) + 0.05 * a1
        want_g = 0.95 * torch.eye(5, dtype=torch.float64) + 0.05 * g1
    torch.testing.assert_close(layer.A.double(), want_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.G.double(), want_g, rtol=1e-5, atol=1e-7)
    # The second update blends with the factor decay either way (the weights have not
    # moved: no optimizer step, so batch 2's factors are taken at the same weights).
    a2, g2 = _batch_factors(model, x2, t2)
    _step(pre, model, x2, t2)
    torch.testing.assert_close(layer.A.double(), 0.95 * want_a + 0.05 * a2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.G.double(), 0.95 * want_g + 0.05 * g2, rtol=1e-5, atol=1e-7)


def test_g_scale_with_matching_damping_gives_the_same_step_over_the_scale():
    """Eigen method: G*s and λ*s turn every d_G d_A + λ into s (d_G d_A + λ): P becomes P / s."""
    s = 64.0**2
    results = []
    for g_scale, damping in ((1.0, 0.01), (s, 0.01 * s)):
        torch.manual_seed(0)
        model = nn.Linear(7, 5)
        pre = KFACPreconditioner(
            model, comm=LocalComm(), kl_clip=None, damping=damping, factor_init="first_batch", g_scale=g_scale
        )
        x, t = torch.randn(11, 7), torch.randn(11, 5)
        _step(pre, model, x, t)
        results.append((model.weight.grad.clone(), pre.layers[0].G.clone()))
    (p1, g1), (p2, g2) = results
    torch.testing.assert_close(g2, g1 * s, rtol=1e-5, atol=0)
    torch.testing.assert_close(p2 * s, p1, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(factor_init="zeros"), "factor_init must be one of"),
        (dict(g_scale=0.0), "g_scale must be a finite number > 0"),
        (dict(g_scale=float("nan")), "g_scale must be a finite number > 0"),
    ],
)
def test_bad_factor_options_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        KFACPreconditioner(nn.Linear(3, 2), comm=LocalComm(), **kwargs)


def test_defaults_are_kfac_pytorch_identity_and_unit_scale():
    pre = KFACPreconditioner(nn.Linear(3, 2), comm=LocalComm())
    assert pre.factor_init == "identity" and pre.g_scale == 1.0
