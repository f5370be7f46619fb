"""max_factor_bytes: factors too large to hold densely are kept diagonal (decided before
allocating), named in one warning; memory() reports every layer's bytes."""

import pytest
import torch
from _kfac_reference import batch_factors, captured_io, dense_precondition, grad_matrix
from torch import nn

import kfac_ext


@pytest.mark.parametrize("method", ["eigen", "inverse"])
def test_a_factor_over_the_limit_is_diagonal_and_matches_the_dense_solve(method):
    torch.manual_seed(0)
    layer = nn.Linear(7, 40).double()  # G: 40² · 8 = 12,800 bytes; A: 8² · 8 = 512
    with pytest.warns(UserWarning, match=r"kept diagonal: '' \(G\)"):
        p = kfac_ext.KFACPreconditioner(
            layer,
            max_factor_bytes=4096,
            kl_clip=None,
            damping=0.05,
            factor_decay=0.0,
            inv_dtype=torch.float64,
            compute_method=method,
        )
    kl = p.layers[0]
    assert (kl.a_diagonal, kl.g_diagonal) == (False, True) and kl.G.shape == (40,)
    x = torch.randn(3, 6, 7, dtype=torch.float64)
    xin, gout = captured_io(layer, lambda: layer(x).pow(3).mean().backward())
    grad = grad_matrix(layer)
    p.step()
    a, g = batch_factors(layer, xin, gout)
    torch.testing.assert_close(kl.G, g.diagonal(), rtol=1e-12, atol=0)
    g_diag = torch.diag(g.diagonal())
    if method == "eigen":
        want = dense_precondition(a, g_diag, grad, 0.05)
    else:
        eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
        want = torch.linalg.solve(g_diag + 0.05 * eye(40), grad) @ torch.linalg.inv(a + 0.05 * eye(8))
    got = grad_matrix(layer)
    assert float((got - want).norm() / want.norm()) < 1e-8


def test_memory_reports_dense_and_diagonal_factors_per_layer():
    model = nn.Sequential(nn.Embedding(50, 4), nn.Linear(4, 3))
    p = kfac_ext.KFACPreconditioner(model)
    report = p.memory()
    assert report["0"]["A"] == 50 * 4 and report["0"]["G"] == 16 * 4  # float32
    assert report["0"]["second_order"] == (50 + 16 + 4) * 4  # diag A; Q_G and d_G
    assert report["1"]["A"] == 25 * 4 and report["1"]["total"] == sum(v for k, v in report["1"].items() if k != "total")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1GB"])
def test_bad_max_factor_bytes_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="max_factor_bytes must be"):
        kfac_ext.KFACPreconditioner(nn.Linear(2, 2), max_factor_bytes=bad)


def test_default_limit_keeps_a_gpt2_sized_output_layer_diagonal_without_allocating_it():
    head = nn.Linear(8, 50257, bias=False, device="meta")  # no memory behind the weight
    with pytest.warns(UserWarning, match=r"kept diagonal: '' \(G\)"):
        p = kfac_ext.KFACPreconditioner(head)
    assert p.layers[0].G.shape == (50257,) and p.memory()[""]["G"] == 50257 * 4


def test_precondition_dtype_with_a_diagonal_factor_says_it_does_not_apply():
    with pytest.warns(UserWarning, match="precondition_dtype applies to the fused path"):
        kfac_ext.KFACPreconditioner(nn.Embedding(5, 3), precondition_dtype=torch.bfloat16)


def test_a_lagged_update_with_a_diagonal_factor_survives_a_checkpoint():
    def run(state=None, steps=range(4)):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Embedding(7, 3), nn.Linear(3, 2)).double()
        p = kfac_ext.KFACPreconditioner(
            model, inv_update_steps=2, inv_lag_steps=1, inv_dtype=torch.float64, damping=0.1
        )
        if state is not None:
            model.load_state_dict(state[0])
            p.load_state_dict(state[1])
        grads = []
        for s in steps:
            model.zero_grad()
            model(torch.tensor([[s % 7, 2, 5]])).pow(2).sum().backward()
            p.step()
            grads.append(model[0].weight.grad.clone())
            if s == 2:
                saved = ({k: v.clone() for k, v in model.state_dict().items()}, p.state_dict())
        return grads, saved if state is None else None

    grads, saved = run()
    assert "pending_second_order" in saved[1]  # step 2's update lands at step 3
    resumed, _ = run(saved, steps=[3])
    assert torch.equal(resumed[0], grads[3])


def _conv_case(conv, x, limit, method):
    p = kfac_ext.KFACPreconditioner(
        conv,
        max_factor_bytes=limit,
        kl_clip=None,
        damping=0.05,
        factor_decay=0.0,
        inv_dtype=torch.float64,
        compute_method=method,
    )
    xin, gout = captured_io(conv, lambda: conv(x).pow(3).mean().backward())
    grad = grad_matrix(conv)
    p.step()
    return p, batch_factors(conv, xin, gout), grad


@pytest.mark.parametrize("method", ["eigen", "inverse"])
@pytest.mark.parametrize("which", ["A", "AG"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        lambda: nn.Conv2d(3, 5, (2, 3), padding="same", padding_mode="reflect", bias=False),
    ],
    ids=["strided-dilated", "same-reflect"],
)
def test_a_conv_factor_over_the_limit_is_diagonal_and_matches_the_dense_solve(make, which, method):
    """A Conv2d goes diagonal like the other types: its diagonal equals the dense
    im2col factor's (float64, from F.unfold), and P the dense Kronecker solve with that
    factor replaced by its diagonal."""
    torch.manual_seed(0)
    conv = make().double()
    a_dim = 3 * conv.kernel_size[0] * conv.kernel_size[1] + int(conv.bias is not None)
    limit = 5 * 5 * 8 + 1 if which == "A" else 8  # G (5x5) fits in the first, nothing in the second
    assert a_dim * a_dim * 8 > limit
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"kept diagonal: '' \(" + "/".join(which) + r"\)"):
        p, (a, g), grad = _conv_case(conv, x, limit, method)
    kl = p.layers[0]
    assert (kl.a_diagonal, kl.g_diagonal) == (True, which == "AG") and kl.A.shape == (a_dim,)
    torch.testing.assert_close(kl.A, a.diagonal(), rtol=1e-12, atol=0)
    if which == "AG":
        torch.testing.assert_close(kl.G, g.diagonal(), rtol=1e-12, atol=0)
        g = torch.diag(g.diagonal())
    a = torch.diag(a.diagonal())
    if method == "eigen":
        want = dense_precondition(a, g, grad, 0.05)
    else:
        eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
        want = torch.linalg.solve(g + 0.05 * eye(5), grad) @ torch.linalg.inv(a + 0.05 * eye(a_dim))
    got = grad_matrix(conv)
    assert float((got - want).norm() / want.norm()) < 1e-8


def test_a_grouped_conv_over_the_limit_is_diagonal_per_group():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, groups=2, stride=2, padding=1).double()
    x = torch.randn(3, 4, 5, 7, dtype=torch.float64)
    with pytest.warns(UserWarning, match="kept diagonal"):
        p = kfac_ext.KFACPreconditioner(conv, max_factor_bytes=200, factor_decay=0.0, inv_dtype=torch.float64)
    xin, gout = captured_io(conv, lambda: conv(x).pow(3).mean().backward())
    p.step()
    for k, kl in enumerate(p.layers):
        assert kl.name == f"[group {k}]" and kl.a_diagonal and not kl.g_diagonal
        part = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()  # one group as a conv of its own
        a, g = batch_factors(part, xin[:, 2 * k : 2 * k + 2], gout[:, 3 * k : 3 * k + 3])
        torch.testing.assert_close(kl.A, a.diagonal(), rtol=1e-12, atol=0)
        torch.testing.assert_close(kl.G, g, rtol=1e-12, atol=0)
