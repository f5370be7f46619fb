"""kfac_approx='expand' / 'reduce' on sequence inputs [B, T, d] against curvlinops'
KFACLinearOperator (an independent K-FAC, empirical Fisher, mean loss), float64."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kfac_ext


class _ToClassesFirst(nn.Module):
    def forward(self, x):  # (N, T, C) -> (N, C, T), the layout CrossEntropyLoss takes
        return x.transpose(1, 2)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4, bias=False), _ToClassesFirst()).double()


def _both_factors(curvlinops, model, x, y, approx):
    """curvlinops' empirical K-FAC factors of the batch (x, y), and a preconditioner
    that has taken one step on it (factor_decay 0: this batch's factors)."""
    op = curvlinops.KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        list(model.parameters()),
        [(x, y)],
        fisher_type="empirical",
        kfac_approx=approx,
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    op.compute_kronecker_factors()
    p = kfac_ext.KFACPreconditioner(model, factor_decay=0.0, kfac_approx=approx)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    p.step()
    return op, p


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_sequence_factors_match_curvlinops(approx):
    curvlinops = pytest.importorskip("curvlinops")
    n, t = 3, 6
    x = torch.randn(n, t, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (n, t))
    model = _model()
    op, p = _both_factors(curvlinops, model, x, y, approx)
    # curvlinops scales G by N·R (R = T loss terms per sequence) where ours divides by
    # the rows: expand G_ours = G_cl / (N·T)², reduce G_ours = G_cl / (N²·T); A is the same.
    g_scale = (n * t) ** 2 if approx == "expand" else n * n * t
    for layer, key in zip(p.layers, ("0", "2")):
        a_cl, g_cl = op._input_covariances[key], op._gradient_covariances[key]
        assert float((layer.A - a_cl).norm() / a_cl.norm()) < 1e-6, (approx, key)
        assert float((layer.G - g_cl / g_scale).norm() / g_cl.norm() * g_scale) < 1e-6, (approx, key)


def test_reduce_folds_the_positions_of_attention_projections():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    p = kfac_ext.KFACPreconditioner(mha, kfac_approx="reduce", factor_decay=0.0)
    x = torch.randn(3, 5, 4)
    seen = {}

    def keep_grad(module, args, out):
        out[0].register_hook(lambda g: seen.__setitem__("g", g))

    h = mha.register_forward_hook(keep_grad)
    mha(x, x, x)[0].pow(2).sum().backward()
    h.remove()
    p.step()
    out = p.layers[3]
    g = seen["g"].sum(1)  # one row per sequence: the output gradient summed over positions
    torch.testing.assert_close(out.G, g.T @ g / 3)
    q = p.layers[0]
    a = torch.cat([x.mean(1), torch.ones(3, 1)], 1)
    torch.testing.assert_close(q.A, a.T @ a / 3)


def test_bad_kfac_approx_is_a_clear_error():
    with pytest.raises(ValueError, match="kfac_approx must be"):
        kfac_ext.KFACPreconditioner(nn.Linear(2, 2), kfac_approx="both")


def _cnn():
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.Tanh(),
        nn.Conv2d(4, 5, 2, bias=False),
        nn.Flatten(),
        nn.Linear(5 * 3 * 3, 3),
    ).double()


def test_conv_reduce_factors_match_curvlinops():
    """Conv2d under 'reduce': A from each example's patches averaged over the output
    positions, G from its output gradient summed over them (Eschenhagen et al. 2023)."""
    curvlinops = pytest.importorskip("curvlinops")
    n = 5
    x = torch.randn(n, 3, 7, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    model = _cnn()
    assert model(x).shape == (n, 3)
    op, p = _both_factors(curvlinops, model, x, y, "reduce")
    # one loss term per example: G_ours = G_cl / N² (the R = 1 case of the sequence test)
    for layer, key in zip(p.layers, ("0", "2", "4")):
        a_cl, g_cl = op._input_covariances[key], op._gradient_covariances[key]
        assert float((layer.A - a_cl).norm() / a_cl.norm()) < 1e-6, key
        assert float((layer.G - g_cl / n**2).norm() / g_cl.norm() * n**2) < 1e-6, key


def test_conv_reduce_with_groups_padding_modes_and_a_diagonal_a():
    """The grouped, reflect-padded and diagonal cases against F.unfold in float64."""
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, (2, 3), groups=2, padding="same", padding_mode="reflect").double()
    x = torch.randn(3, 4, 5, 7, dtype=torch.float64)
    with pytest.warns(UserWarning, match="kept diagonal"):
        p = kfac_ext.KFACPreconditioner(conv, factor_decay=0.0, kfac_approx="reduce", max_factor_bytes=1000)
    seen = {}

    def keep_grad(module, args, out):
        out.register_hook(lambda g: seen.__setitem__("g", g))

    h = conv.register_forward_hook(keep_grad)
    conv(x).pow(3).mean().backward()
    h.remove()
    p.step()
    xp = F.pad(x, conv._reversed_padding_repeated_twice, mode="reflect")
    for k, layer in enumerate(p.layers):
        cols = F.unfold(xp[:, 2 * k : 2 * k + 2], (2, 3))  # (N, 2·2·3, T)
        a = torch.cat([cols.mean(2), torch.ones(3, 1, dtype=torch.float64)], 1)
        g = seen["g"][:, 3 * k : 3 * k + 3].sum((2, 3))
        assert layer.a_diagonal and not layer.g_diagonal
        torch.testing.assert_close(layer.A, (a.T @ a / 3).diagonal(), rtol=1e-12, atol=0)
        torch.testing.assert_close(layer.G, g.T @ g / 3, rtol=1e-12, atol=1e-300)
