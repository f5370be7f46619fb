"""Seeded test tensors shared by the op tests on every device.

Every tensor is drawn in float64 on the CPU from its own seed and then moved
and cast, so a CPU test and a CUDA test of the same case see the same numbers.
"""

from __future__ import annotations

import pytest
import torch

CUDA = pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def randn(*shape, seed: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)


def sym(n: int, seed: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    a = randn(n, n, seed=seed)
    return ((a + a.T) / 2).to(device, dtype)


def spd(n: int, seed: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """A covariance-like factor: XᵀX/rows + small ridge (positive definite)."""
    x = randn(2 * n + 3, n, seed=seed)
    return (x.T @ x / x.shape[0] + 1e-3 * torch.eye(n, dtype=torch.float64)).to(device, dtype)


def rel_err(result: torch.Tensor, exact: torch.Tensor) -> float:
    """max |result - exact| / max |exact|, in float64 on the CPU."""
    exact = exact.double().cpu()
    scale = exact.abs().max().clamp(min=1e-300)
    return ((result.double().cpu() - exact).abs().max() / scale).item()


def eigen_layers(shapes, dtype, device, seed=0):
    """(grads, qa, da, qg, dg) for layers of (out, in) shapes: random gradients and
    the eigendecompositions of random SPD factors, as eigen_precondition takes them."""
    grads, qa, da, qg, dg = [], [], [], [], []
    for i, (out, inp) in enumerate(shapes):
        s = seed + 10 * i
        grads.append(randn(out, inp, seed=s, dtype=dtype, device=device))
        d, q = torch.linalg.eigh(spd(inp, seed=s + 1))
        da.append(d.to(device, dtype))
        qa.append(q.to(device, dtype))
        d, q = torch.linalg.eigh(spd(out, seed=s + 2))
        dg.append(d.to(device, dtype))
        qg.append(q.to(device, dtype))
    return grads, qa, da, qg, dg
