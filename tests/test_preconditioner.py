"""KFACPreconditioner against float64 references from the definitions."""

import pytest
import torch
from _kfac_reference import batch_factors, captured_io, dense_precondition, grad_matrix
from torch import nn

import kfac_ext

CONV_CASES = [
    dict(kernel_size=3, bias=True),
    dict(kernel_size=3, stride=2, padding=1, bias=True),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 3), bias=True),
    dict(kernel_size=3, padding=2, dilation=2, bias=False),
    dict(kernel_size=4, padding="same", dilation=1, bias=True),  # asymmetric 'same'
    dict(kernel_size=3, padding="same", dilation=2, bias=False),
    dict(kernel_size=3, padding=1, padding_mode="reflect", bias=True),
    dict(kernel_size=3, padding=(1, 2), padding_mode="circular", bias=True),
    dict(kernel_size=2, padding=1, padding_mode="replicate", stride=2, bias=True),
]


def _loss(out, seed):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    return 0.5 * ((out - target) ** 2).mean() + (out**3).mean() / 3


def _one_step(layer, x, precond_kwargs):
    """Reference factors, gradient and the preconditioner's result after one step."""
    layer.zero_grad()
    p = kfac_ext.KFACPreconditioner(layer, kl_clip=None, inv_dtype=torch.float64, **precond_kwargs)

    def run():
        _loss(layer(x), 1).backward()

    xin, gout = captured_io(layer, run)
    grad = grad_matrix(layer)
    p.step()
    return p, batch_factors(layer, xin, gout), grad


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_conv_dense_solve(case):
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 5, **case).double()
    x = torch.randn(4, 3, 9, 7, dtype=torch.float64)
    damping = 0.03
    p, (a, g), grad = _one_step(layer, x, dict(damping=damping, factor_decay=0.0))
    kl = p.layers[0]
    torch.testing.assert_close(kl.A, a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl.G, g, rtol=1e-10, atol=1e-14)
    want = dense_precondition(a, g, grad, damping)
    torch.testing.assert_close(grad_matrix(layer), want, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method", ["eigen", "inverse"])
def test_linear_dense_solve(bias, method):
    torch.manual_seed(1)
    layer = nn.Linear(7, 4, bias=bias).double()
    x = torch.randn(3, 5, 7, dtype=torch.float64)  # extra leading dim: rows = 15
    damping, decay = 0.05, 0.9
    p, (a, g), grad = _one_step(layer, x, dict(damping=damping, factor_decay=decay, compute_method=method))
    # first update: decay * I + (1 - decay) * batch
    a = decay * torch.eye(a.shape[0], dtype=a.dtype) + (1 - decay) * a
    g = decay * torch.eye(g.shape[0], dtype=g.dtype) + (1 - decay) * g
    torch.testing.assert_close(p.layers[0].A, a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p.layers[0].G, g, rtol=1e-10, atol=1e-12)
    if method == "eigen":
        want = dense_precondition(a, g, grad, damping)
    else:
        eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
        want = torch.linalg.solve(g + damping * eye(g.shape[0]), grad) @ torch.linalg.inv(a + damping * eye(a.shape[0]))
    torch.testing.assert_close(grad_matrix(layer), want, rtol=1e-7, atol=1e-10)


def test_kl_clip_scales_every_layer():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    results = {}
    for kl_clip in (None, 1e-6):
        model.zero_grad()
        p = kfac_ext.KFACPreconditioner(model, kl_clip=kl_clip, lr=0.5, damping=0.01, inv_dtype=torch.float64)
        _loss(model(x), 3).backward()
        grads = [grad_matrix(m) for m in (model[0], model[2])]
        p.step()
        results[kl_clip] = [grad_matrix(m) for m in (model[0], model[2])]
        p.remove_hooks()
    vg = sum((pr * g).sum() for pr, g in zip(results[None], grads)) * 0.25
    nu = min(1.0, (1e-6 / abs(vg)) ** 0.5)
    assert nu < 1
    for clipped, plain in zip(results[1e-6], results[None]):
        torch.testing.assert_close(clipped, plain * nu, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("groups, padding_mode", [(2, "zeros"), (3, "reflect")])
def test_grouped_conv_is_block_diagonal_dense_solve(groups, padding_mode):
    torch.manual_seed(3)
    layer = nn.Conv2d(6, 3 * groups, 3, stride=2, padding=1, groups=groups, padding_mode=padding_mode).double()
    x = torch.randn(3, 6, 7, 8, dtype=torch.float64)
    damping = 0.02
    layer.zero_grad()
    p = kfac_ext.KFACPreconditioner(layer, kl_clip=None, inv_dtype=torch.float64, damping=damping, factor_decay=0.0)
    assert [l.name for l in p.layers] == [f"[group {k}]" for k in range(groups)]
    xin, gout = captured_io(layer, lambda: _loss(layer(x), 2).backward())
    full_grad = grad_matrix(layer)
    p.step()
    cin, cout = 6 // groups, 3
    for k, kl in enumerate(p.layers):
        sub = nn.Conv2d(cin, cout, 3, stride=2, padding=1, padding_mode=padding_mode).double()
        a, g = batch_factors(sub, xin[:, k * cin : (k + 1) * cin], gout[:, k * cout : (k + 1) * cout])
        torch.testing.assert_close(kl.A, a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(kl.G, g, rtol=1e-10, atol=1e-14)
        rows = slice(k * cout, (k + 1) * cout)
        want = dense_precondition(a, g, full_grad[rows], damping)
        torch.testing.assert_close(grad_matrix(layer)[rows], want, rtol=1e-7, atol=1e-10)
