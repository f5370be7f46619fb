"""nn.Conv1d as a K-FAC layer type: its factors from their definition (im2col patches
written out position by position, float64), and every option against the Conv2d of
height 1 it equals (the Conv2d type is held against kfac-pytorch and the dense solve
elsewhere)."""

import pytest
import torch
import torch.nn.functional as F
from _kfac_reference import dense_precondition
from torch import nn

import kfac_ext

DAMPING = 0.03


def _loss(out):
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    return 0.5 * ((out - target) ** 2).mean() + (out**3).mean() / 3


def _precond(model, method="eigen", **kw):
    return kfac_ext.KFACPreconditioner(
        model,
        kl_clip=None,
        inv_dtype=torch.float64,
        damping=DAMPING,
        factor_decay=0.0,
        compute_method=method,
        **kw,
    )


def test_factors_and_preconditioned_gradient_from_their_definition():
    torch.manual_seed(0)
    n, c, length, out, k, stride, dil, pad = 3, 2, 11, 4, 3, 2, 2, 1
    conv = nn.Conv1d(c, out, k, stride=stride, dilation=dil, padding=pad, dtype=torch.float64)
    p = _precond(nn.Sequential(conv))
    x = torch.randn(n, c, length, dtype=torch.float64)
    y = conv(x)
    _loss(y).backward()
    t = y.shape[2]
    # patches row (n, t): [x_pad[n, :, t*s + j*d] for j in 0..k-1] (channel-major, as the weight), then 1
    xp = F.pad(x, (pad, pad))
    rows = torch.stack(
        [
            torch.cat([xp[i, :, [pos * stride + j * dil for j in range(k)]].reshape(-1), torch.ones(1, dtype=x.dtype)])
            for i in range(n)
            for pos in range(t)
        ]
    )
    a = (rows / t).T @ (rows / t) / (n * t)
    y = conv(x).detach().requires_grad_(True)
    _loss(y).backward()
    g = y.grad.permute(0, 2, 1).reshape(n * t, out) / t
    g = g.T @ g / (n * t)
    conv.zero_grad()
    _loss(conv(x)).backward()
    gamma = torch.cat([conv.weight.grad.reshape(out, -1), conv.bias.grad[:, None]], 1)
    p.step()
    layer = p.layers[0]
    assert torch.allclose(layer.A, a, rtol=1e-10, atol=1e-14) and torch.allclose(layer.G, g, rtol=1e-10, atol=1e-16)
    want = dense_precondition(a, g, gamma, DAMPING)
    got = torch.cat([conv.weight.grad.reshape(out, -1), conv.bias.grad[:, None]], 1)
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-12)


def _as_conv2d(conv):
    """The Conv2d of height 1 that computes what ``conv`` does, with its parameters copied."""
    padding = conv.padding if isinstance(conv.padding, str) else (0, conv.padding[0])
    c2 = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        (1, conv.kernel_size[0]),
        stride=(1, conv.stride[0]),
        padding=padding,
        dilation=(1, conv.dilation[0]),
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        dtype=torch.float64,
    )
    with torch.no_grad():
        c2.weight.copy_(conv.weight.unsqueeze(2))
        if conv.bias is not None:
            c2.bias.copy_(conv.bias)
    return c2


class _Twice(nn.Module):
    """conv, tanh, the same conv again when ``twice`` (two captures a step); the conv alone otherwise."""

    def __init__(self, conv, twice, height_one):
        super().__init__()
        self.conv, self.twice, self.height_one = conv, twice, height_one

    def forward(self, x):
        if self.height_one:  # the Conv2d twin sees (N, C, 1, L)
            x = x.unsqueeze(-2)
        y = self.conv(x)
        if self.twice:
            y = self.conv(torch.tanh(y[:, : x.shape[1]]))
        return y.squeeze(-2) if self.height_one else y


CASES = {
    "plain": dict(kernel_size=3),
    "stride-dilation-padding": dict(kernel_size=3, stride=2, dilation=2, padding=2),
    "same": dict(kernel_size=4, padding="same", dilation=2),
    "valid-no-bias": dict(kernel_size=5, padding="valid", bias=False),
    "reflect": dict(kernel_size=3, padding=2, padding_mode="reflect"),
    "circular": dict(kernel_size=3, padding=1, padding_mode="circular"),
    "groups": dict(kernel_size=3, groups=2, padding=1),
    "depthwise": dict(kernel_size=3, groups=4, padding=1),
}


@pytest.mark.parametrize("options", ["expand", "reduce", "diagonal", "inverse", "twice", "unbatched"])
@pytest.mark.parametrize("case", list(CASES))
def test_equals_the_conv2d_of_height_one(case, options):
    kw = CASES[case]
    torch.manual_seed(1)
    c_in = 4
    c_out = 4 if options == "twice" or kw.get("groups", 1) > 1 else 3
    conv = nn.Conv1d(c_in, c_out, dtype=torch.float64, **kw)
    twin = _as_conv2d(conv)
    twice = options == "twice"
    models = [_Twice(conv, twice, False), _Twice(twin, twice, True)]
    extra = {
        "reduce": dict(kfac_approx="reduce"),
        "diagonal": dict(max_factor_bytes=64),  # every factor over the limit: held as its diagonal
    }.get(options, {})
    method = "inverse" if options == "inverse" else "eigen"
    x = torch.randn(c_in, 13, dtype=torch.float64) if options == "unbatched" else torch.randn(3, c_in, 13).double()
    grads = []
    for model in models:
        p = _precond(model, method, **extra)
        for _ in range(2):  # the second step also reads the running averages
            model.zero_grad()
            _loss(model(x)).backward()
            p.step()
        layers = p.layers
        grads.append((layers, model.conv.weight.grad.reshape(c_out, -1), model.conv.bias))
    (l1, g1, b1), (l2, g2, b2) = grads
    assert [type(layer).__name__ for layer in l1] == ["Conv1dLayer"] * len(l2)
    for a, b in zip(l1, l2):
        assert a.a_diagonal == b.a_diagonal and (options != "diagonal" or a.a_diagonal)
        assert torch.allclose(a.A, b.A, rtol=1e-10, atol=1e-14) and torch.allclose(a.G, b.G, rtol=1e-10, atol=1e-14)
    assert torch.allclose(g1, g2, rtol=1e-9, atol=1e-12)
    if b1 is not None:
        assert torch.allclose(b1.grad, b2.grad, rtol=1e-9, atol=1e-12)


def test_a_frozen_conv1d_is_left_out():
    conv = nn.Conv1d(2, 3, 3)
    conv.weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="no layer registered"):
        p = kfac_ext.KFACPreconditioner(nn.Sequential(conv))
    assert p.layers == []
