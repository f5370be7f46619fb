"""Method.precondition_many (the per-layer path: diagonal factors, tied weights, data
parallel) against a float64 plain-PyTorch reference, dense and diagonal layers mixed."""

import pytest
import torch
from _tensors import randn, spd

from kfac_ext.methods import method
from kfac_ext.second_order import DiagonalData

# (out, in, A diagonal, G diagonal)
LAYERS = [(7, 5, False, False), (16, 28, True, False), (9, 4, False, True), (64, 129, False, False), (3, 3, True, True)]
LAYERS += [(7, 5, False, False)] * 4 + [(130, 33, False, False)]


def _factor(n, diagonal, seed):
    return randn(n, seed=seed).abs() + 0.1 if diagonal else spd(n, seed=seed)


def _reference(grad, a, g, damping, name):
    """P from the factors themselves: (G + λI)⁻¹ Γ (A + λI)⁻¹ (inverse), or the eigen method's division."""
    a_mat = torch.diag(a) if a.dim() == 1 else a
    g_mat = torch.diag(g) if g.dim() == 1 else g
    if name == "inverse":
        return torch.linalg.solve(g_mat + damping * torch.eye(len(g_mat), dtype=g.dtype), grad) @ torch.linalg.inv(
            a_mat + damping * torch.eye(len(a_mat), dtype=a.dtype)
        )
    da, qa = torch.linalg.eigh(a_mat)
    dg, qg = torch.linalg.eigh(g_mat)
    return qg @ ((qg.T @ grad @ qa) / (torch.outer(dg, da) + damping)) @ qa.T


@pytest.mark.parametrize("name", ["inverse", "eigen"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_precondition_many_matches_reference(name, dtype):
    m, damping = method(name), 0.003
    grads = [randn(o, i, seed=k, dtype=dtype) for k, (o, i, _, _) in enumerate(LAYERS)]
    a = [_factor(i, ad, 100 + k) for k, (o, i, ad, _) in enumerate(LAYERS)]
    g = [_factor(o, gd, 200 + k) for k, (o, i, _, gd) in enumerate(LAYERS)]
    a_data = m.solve([f.to(dtype) for f in a], damping)
    g_data = m.solve([f.to(dtype) for f in g], damping)
    assert isinstance(a_data[1], DiagonalData) and isinstance(g_data[2], DiagonalData)
    ours = m.precondition_many(grads, a_data, g_data, damping)
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    for k, (p, x) in enumerate(zip(ours, grads)):
        exact = _reference(x.double(), a[k], g[k], damping, name)
        assert p.shape == x.shape and p.dtype == dtype
        err = float((p.double() - exact).abs().max() / exact.abs().max())
        assert err <= tol, f"{name} layer {k} {LAYERS[k]}: relative error {err:.3g}"
