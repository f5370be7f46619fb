"""Plain-PyTorch references of every kfac_ext op.

Each function computes what the matching op in :mod:`kfac_ext.ops` computes,
the obvious way (full GEMMs, im2col, per-layer loops), without any of the
kernels' tricks. Tests hold the ops to these; benchmarks time against them.
Functions that update in place in the op return a new tensor here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def cov_update(factor: Tensor, x: Tensor, alpha: float, beta: float, append_ones: bool = False) -> Tensor:
    """beta*factor + alpha*XᵀX, with X = [x, 1] when append_ones."""
    if append_ones:
        x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
    return torch.addmm(factor, x.T, x, beta=beta, alpha=alpha)


def channel_cov_update(factor: Tensor, x: Tensor, alpha: float, beta: float) -> Tensor:
    """beta*factor + alpha*Σ_n X[n] X[n]ᵀ for x of shape (N, C, L)."""
    rows = x.permute(0, 2, 1).reshape(-1, x.shape[1])  # (N*L, C)
    return torch.addmm(factor, rows.T, rows, beta=beta, alpha=alpha)


def conv2d_act_factor(
    input: Tensor,
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...],
    padding: int | tuple[int, ...],
    dilation: int | tuple[int, ...],
    has_bias: bool,
) -> Tensor:
    """Conv2d activation factor A = āᵀā/(N·T) through an explicit im2col (docs/design.md §2).

    ā holds the im2col patches (one row per sample and output position, plus a
    ones column when has_bias), every entry divided by T (output positions).
    """
    patches = F.unfold(input, kernel_size, dilation=dilation, padding=padding, stride=stride)
    n, _, positions = patches.shape  # (N, C*kh*kw, T)
    rows = patches.transpose(1, 2).reshape(n * positions, -1)
    if has_bias:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    rows = rows / positions
    return rows.T @ rows / rows.shape[0]


def batched_eigh(factors: list[Tensor], clamp: bool = True) -> tuple[list[Tensor], list[Tensor]]:
    """torch.linalg.eigh of each factor, one at a time; eigenvalues clamped at 0."""
    values, vectors = [], []
    for f in factors:
        d, q = torch.linalg.eigh(f)
        values.append(d.clamp(min=0) if clamp else d)
        vectors.append(q)
    return values, vectors


def eigen_precondition(
    grads: list[Tensor], qa: list[Tensor], da: list[Tensor], qg: list[Tensor], dg: list[Tensor], damping: float
) -> list[Tensor]:
    """Q_G [(Q_Gᵀ Γ Q_A) / (d_G d_Aᵀ + λ)] Q_Aᵀ per layer: four matmuls and a division."""
    out = []
    for g, qa_, da_, qg_, dg_ in zip(grads, qa, da, qg, dg):
        v = qg_.T @ g @ qa_
        v = v / (torch.outer(dg_, da_) + damping)
        out.append(qg_ @ v @ qa_.T)
    return out


def inverse_precondition(grads: list[Tensor], a_inv: list[Tensor], g_inv: list[Tensor]) -> list[Tensor]:
    """Per layer ``g_inv Γ a_inv`` (ops.inverse_precondition)."""
    return [gi @ g @ ai for g, ai, gi in zip(grads, a_inv, g_inv)]


def pack_triu(mats: list[Tensor]) -> Tensor:
    """The row-major upper triangles (diagonal included) of mats, concatenated."""
    parts = []
    for m in mats:
        i, j = torch.triu_indices(m.shape[0], m.shape[0], device=m.device)
        parts.append(m[i, j])
    return torch.cat(parts)


def unpack_triu(packed: Tensor, mats: list[Tensor], scale: float = 1.0) -> list[Tensor]:
    """New symmetric matrices shaped like mats, filled from packed (times scale)."""
    out, pos = [], 0
    for m in mats:
        n = m.shape[0]
        i, j = torch.triu_indices(n, n, device=m.device)
        full = m.new_zeros(n, n)
        full[i, j] = packed[pos : pos + i.numel()] * scale
        full[j, i] = packed[pos : pos + i.numel()] * scale
        out.append(full)
        pos += i.numel()
    return out


def kl_clip_sum(precond: list[Tensor], grads: list[Tensor]) -> Tensor:
    """Σ_layers ⟨P, Γ⟩ as a sum of (P*Γ).sum() over layers."""
    total = torch.zeros((), dtype=torch.float64)
    for p, g in zip(precond, grads):
        total = total + (p * g).sum().double().cpu()
    return total


def gammas(
    weight_grads: list[Tensor], bias_grads: list[Tensor], right: list[Tensor]
) -> tuple[list[Tensor], list[bool]]:
    """Γ = [W | b] per layer in right[i]'s dtype; a layer has a bias when right[i]
    (qa or a_inv) has one row more than W has columns."""
    grads, has_bias, b = [], [], iter(bias_grads)
    for w, q in zip(weight_grads, right):
        g = w.reshape(w.shape[0], -1)
        has_bias.append(q.shape[0] == g.shape[1] + 1)
        if has_bias[-1]:
            g = torch.cat([g, next(b).reshape(-1, 1)], dim=1)
        grads.append(g.to(q.dtype))
    return grads, has_bias


def _clip_and_split(weight_grads, precond, grads, has_bias, kl_clip, kl_factor):
    nu = 1.0
    if kl_clip is not None:
        vg = float(kl_clip_sum(precond, grads)) * kl_factor
        if vg != 0.0 and math.isfinite(vg):
            nu = min(1.0, math.sqrt(kl_clip / abs(vg)))
    new_w, new_b = [], []
    for w, p, bias in zip(weight_grads, precond, has_bias):
        p = p * nu
        new_w.append(p[:, : p.shape[1] - bias].reshape(w.shape).to(w.dtype))
        if bias:
            new_b.append(p[:, -1].to(w.dtype))
    return new_w, new_b, nu


def precondition_grads(
    weight_grads: list[Tensor],
    bias_grads: list[Tensor],
    qa: list[Tensor],
    da: list[Tensor],
    qg: list[Tensor],
    dg: list[Tensor],
    damping: float,
    kl_clip: float | None = None,
    kl_factor: float = 1.0,
) -> tuple[list[Tensor], list[Tensor], float]:
    """(new weight grads, new bias grads, ν) of ``precondition_grads_``, out of place."""
    grads, has_bias = gammas(weight_grads, bias_grads, qa)
    precond = eigen_precondition(grads, qa, da, qg, dg, damping)
    return _clip_and_split(weight_grads, precond, grads, has_bias, kl_clip, kl_factor)


def precondition_grads_inverse(
    weight_grads: list[Tensor],
    bias_grads: list[Tensor],
    a_inv: list[Tensor],
    g_inv: list[Tensor],
    kl_clip: float | None = None,
    kl_factor: float = 1.0,
) -> tuple[list[Tensor], list[Tensor], float]:
    """(new weight grads, new bias grads, ν) of ``precondition_grads_inverse_``."""
    grads, has_bias = gammas(weight_grads, bias_grads, a_inv)
    precond = [gi @ g @ ai for g, ai, gi in zip(grads, a_inv, g_inv)]
    return _clip_and_split(weight_grads, precond, grads, has_bias, kl_clip, kl_factor)
