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


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_sequence_factors_match_curvlinops(approx):
    curvlinops = pytest.importorskip("curvlinops")
    n, t = 3, 6
    x = torch.randn(n, t, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (n, t))
    model = _model()
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
