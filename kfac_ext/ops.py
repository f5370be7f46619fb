"""The kfac_ext op surface: typed wrappers of ``torch.ops.kfac_ext.*``.

The ops are declared once in csrc/ops.cpp and implemented per device in
csrc/cpu/ and csrc/cuda/. This module adds what a Python caller needs:
docstrings, checks that can only be made before dispatch (Python types, all
tensors on one device: with a CPU/CUDA mix the dispatcher would otherwise pick
a kernel and fail obscurely), and a fake (meta) kernel per op so that the ops
work under torch.compile / FakeTensor. Shape and dtype checks live in the
kernels (a direct ``torch.ops.kfac_ext.*`` call gets the same messages) and,
where they decide output shapes, in the fake kernels too.

Plain-PyTorch references of every op: :mod:`kfac_ext.reference`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from kfac_ext import (
    _C,  # noqa: F401  (registers torch.ops.kfac_ext.*)
    reference,  # noqa: F401  (re-exported: kfac_ext.ops.reference)
)

__all__ = [
    "cov_update_",
    "channel_cov_update_",
    "conv2d_act_factor",
    "batched_eigh",
    "damped_inverses",
    "eigen_precondition",
    "inverse_precondition",
    "pack_triu",
    "unpack_triu_",
    "kl_clip_sum",
    "precondition_grads_",
    "precondition_grads_inverse_",
    "reference",
]

_ops = torch.ops.kfac_ext
# The overload itself: calling it skips the packet's overload resolution.
_COV_UPDATE = _ops.cov_update_.default


# ---------------------------------------------------------------- checks ----


def _check_tensor(op: str, name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(value).__name__}")


def _check_tensor_list(op: str, name: str, value: object) -> list[Tensor]:
    if isinstance(value, Tensor) or not isinstance(value, Sequence):
        raise TypeError(f"{op}: {name} must be a list of tensors; got {type(value).__name__}")
    for i, t in enumerate(value):
        _check_tensor(op, f"{name}[{i}]", t)
    return list(value)


def _check_one_device(op: str, named: Sequence[tuple[str, Tensor]]) -> None:
    """All tensors on the device of the first one, else an error naming both."""
    if not named:
        return
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise RuntimeError(f"{op}: {name} must be on the device of {first_name} ({first.device}); got {t.device}")


def _check_damping(op: str, damping: Any, *, allow_zero: bool = False) -> None:
    # λ <= 0 divides by a zero eigenvalue of a singular factor: NaN gradients. The ops'
    # schemas take a float, so anything but a real number (a bool, a string) is refused.
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real):
        raise ValueError(f"{op}: damping must be a finite number {bound}; got {damping!r}")
    value = float(damping)
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ValueError(f"{op}: damping must be a finite number {bound}; got {damping!r}")


def _listed(name: str, tensors: Sequence[Tensor]) -> list[tuple[str, Tensor]]:
    return [(f"{name}[{i}]", t) for i, t in enumerate(tensors)]


# ------------------------------------------------------------- wrappers ----


def cov_update_(factor: Tensor, x: Tensor, alpha: float, beta: float, append_ones: bool = False) -> None:
    """In place ``factor <- beta*factor + alpha * XᵀX``.

    x is (rows, d). With ``append_ones`` X is ``[x, 1]`` (the bias column,
    never materialised) and factor is (d+1, d+1), else (d, d). factor must be
    contiguous and symmetric; the result's upper triangle is mirrored into the
    lower one, so it is exactly symmetric (the CPU kernel computes one triangle
    of XᵀX, the CUDA kernel a full GEMM, which measured faster there).
    ``beta == 0`` ignores factor's old values (NaN included), as
    ``torch.addmm`` does.
    """
    # The usual call (two tensors on one device) goes straight to the kernel, which
    # checks shapes and dtypes itself: the capture path makes two calls per layer
    # per factor step, and on a small model the per-call cost counts
    # (docs/cost-model.md). Anything else takes the checks with the clear errors.
    if isinstance(factor, Tensor) and isinstance(x, Tensor) and x.device == factor.device:
        _COV_UPDATE(factor, x, float(alpha), float(beta), bool(append_ones))
        return
    op = "cov_update_"
    _check_tensor(op, "factor", factor)
    _check_tensor(op, "x", x)
    _check_one_device(op, [("factor", factor), ("x", x)])
    _COV_UPDATE(factor, x, float(alpha), float(beta), bool(append_ones))


def channel_cov_update_(factor: Tensor, x: Tensor, alpha: float, beta: float) -> None:
    """In place ``factor <- beta*factor + alpha * Σ_n X[n] X[n]ᵀ`` for x (N, C, L).

    This is the gradient factor of a Conv2d straight from its (N, C, H*W)
    output gradient, without permuting it to (N*H*W, C). factor is (C, C),
    contiguous and symmetric; the result is mirrored to be exactly symmetric.
    """
    op = "channel_cov_update_"
    _check_tensor(op, "factor", factor)
    _check_tensor(op, "x", x)
    _check_one_device(op, [("factor", factor), ("x", x)])
    _ops.channel_cov_update_(factor, x, float(alpha), float(beta))


def conv2d_act_factor(
    input: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    has_bias: bool,
) -> Tensor:
    """The Conv2d activation factor A of docs/design.md §2 straight from the NCHW input.

    A = āᵀā / (N·T) where ā are the im2col patches (N·T rows of C·kh·kw, plus
    a ones column if has_bias), every entry divided by T, the number of output
    positions; no im2col buffer is built. padding is symmetric zero padding:
    for 'same', asymmetric or non-zero padding modes, pad the input first
    (F.pad) and pass 0; for groups > 1, call once per channel group.
    Returns a (C·kh·kw [+1])² tensor of input's dtype.
    """
    op = "conv2d_act_factor"
    _check_tensor(op, "input", input)
    return _ops.conv2d_act_factor(
        input, _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), bool(has_bias)
    )


def batched_eigh(factors: Sequence[Tensor], clamp: bool = True) -> tuple[list[Tensor], list[Tensor]]:
    """Symmetric eigendecompositions ``F = Q diag(d) Qᵀ`` of a list of factors.

    Returns (eigenvalues, eigenvectors) lists in input order; eigenvalues
    ascending, clamped at 0 when ``clamp`` (negative round-off of PSD
    factors). Factors of equal size and dtype are decomposed in one batched
    call. A float32 batch that fails (LAPACK/cuSOLVER error or non-finite
    output) is redone in float64 and returned in float32; a RuntimeError
    naming the factor (index and size) is raised only if float64 fails too.
    Eigenvectors are the columns of a column-major matrix (strides (1, n)),
    as with torch.linalg.eigh.
    """
    op = "batched_eigh"
    factors = _check_tensor_list(op, "factors", factors)
    _check_one_device(op, _listed("factors", factors))
    if not factors:  # no tensor to dispatch on
        return [], []
    values, vectors = _ops.batched_eigh(factors, bool(clamp))
    return list(values), list(vectors)


def damped_inverses(factors: Sequence[Tensor], damping: float) -> tuple[list[Tensor], Tensor]:
    """(F + λI)⁻¹ of each symmetric positive definite factor on the CPU (float32/64).

    Only the lower triangle of each factor is read. Returns (inverses, ok): ``ok[k]``
    is False when a Cholesky pivot of factor k (or of one of its Schur complements) is
    not positive and finite, or its inverse is not finite; that inverse is then
    undefined, and the caller retries the factor its own way
    (:func:`kfac_ext.methods.damped_inverses` does, in float64). The work is recursive
    blocks whose flops are GEMMs (csrc/cpu/damped_inverses.cpp), not LAPACK's
    potrf + potri.
    """
    op = "damped_inverses"
    factors = _check_tensor_list(op, "factors", factors)
    # λ = 0 is allowed here: the factor may be damped already, and a singular one fails its pivot check
    _check_damping(op, damping, allow_zero=True)
    _check_one_device(op, _listed("factors", factors))
    inverses, ok = _ops.damped_inverses(factors, float(damping))
    return list(inverses), ok


def eigen_precondition(
    grads: Sequence[Tensor],
    qa: Sequence[Tensor],
    da: Sequence[Tensor],
    qg: Sequence[Tensor],
    dg: Sequence[Tensor],
    damping: float,
) -> list[Tensor]:
    """Per layer ``P = Q_G [(Q_Gᵀ Γ Q_A) / (d_G d_Aᵀ + λ)] Q_Aᵀ`` (new tensors).

    grads[i] is Γ, shape (out, in[+1]) with the bias as the last column;
    qa[i] (in, in), da[i] (in,), qg[i] (out, out), dg[i] (out,) come from
    :func:`batched_eigh`; all of one dtype and device. Layers of equal shape
    are computed together (batched matmuls).
    """
    op = "eigen_precondition"
    lists = {
        name: _check_tensor_list(op, name, value)
        for name, value in (("grads", grads), ("qa", qa), ("da", da), ("qg", qg), ("dg", dg))
    }
    _check_damping(op, damping)
    named = [pair for name, value in lists.items() for pair in _listed(name, value)]
    _check_one_device(op, named)
    if not any(lists.values()):  # no tensor to dispatch on
        return []
    return list(_ops.eigen_precondition(*lists.values(), float(damping)))


def inverse_precondition(grads: Sequence[Tensor], a_inv: Sequence[Tensor], g_inv: Sequence[Tensor]) -> list[Tensor]:
    """Per layer ``P = g_inv Γ a_inv`` (new tensors): the inverse method's two GEMMs.

    grads[i] is Γ (out, in[+1]); a_inv[i] (in[+1], in[+1]) and g_inv[i] (out, out) are
    the damped factor inverses, of Γ's dtype; all on one device. The CPU kernel runs
    the small layers concurrently, one per thread (as :func:`eigen_precondition`).
    """
    op = "inverse_precondition"
    lists = {
        name: _check_tensor_list(op, name, value)
        for name, value in (("grads", grads), ("a_inv", a_inv), ("g_inv", g_inv))
    }
    _check_one_device(op, [pair for name, value in lists.items() for pair in _listed(name, value)])
    if not lists["grads"]:
        return []
    return list(_ops.inverse_precondition(*lists.values()))


def pack_triu(mats: Sequence[Tensor]) -> Tensor:
    """One 1-D tensor: the row-major upper triangles (diagonal included) of mats.

    Each n×n matrix contributes n(n+1)/2 entries, in list order. All matrices
    share one dtype and device; at least one is needed.
    """
    op = "pack_triu"
    mats = _check_tensor_list(op, "mats", mats)
    _check_one_device(op, _listed("mats", mats))
    if not mats:
        raise ValueError("pack_triu: mats must hold at least one matrix (the result's dtype and device come from it)")
    return _ops.pack_triu(mats)


def unpack_triu_(packed: Tensor, mats: Sequence[Tensor], scale: float = 1.0) -> None:
    """Inverse of :func:`pack_triu`, in place: ``mats[i] <- scale * unpacked``, mirrored.

    packed must have exactly Σ n(n+1)/2 entries for the given mats (an error
    otherwise, before anything is written). ``scale = 1/world_size`` turns an
    all-reduced sum into a mean on the way.
    """
    op = "unpack_triu_"
    _check_tensor(op, "packed", packed)
    mats = _check_tensor_list(op, "mats", mats)
    _check_one_device(op, [("packed", packed)] + _listed("mats", mats))
    _ops.unpack_triu_(packed, mats, float(scale))


def kl_clip_sum(precond: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensor:
    """``Σ_layers ⟨P, Γ⟩`` as a 0-d float64 tensor (accumulated in float64).

    precond[i] and grads[i] must have equal shapes and one dtype. The result
    is on the tensors' device (CPU for empty lists).
    """
    op = "kl_clip_sum"
    precond = _check_tensor_list(op, "precond", precond)
    grads = _check_tensor_list(op, "grads", grads)
    _check_one_device(op, _listed("precond", precond) + _listed("grads", grads))
    if not precond and not grads:  # no tensor to dispatch on
        return torch.zeros((), dtype=torch.float64)
    return _ops.kl_clip_sum(precond, grads)


def precondition_grads_(
    weight_grads: Sequence[Tensor],
    bias_grads: Sequence[Tensor],
    qa: Sequence[Tensor],
    da: Sequence[Tensor],
    qg: Sequence[Tensor],
    dg: Sequence[Tensor],
    damping: float,
    kl_clip: float | None = None,
    kl_factor: float = 1.0,
) -> Tensor:
    """One eigen-method step on the gradients themselves, in place; returns ν.

    Per layer ``Γ = [weight_grads[i] as (out, in) | bias]``, with the bias
    taken from bias_grads (one tensor per layer whose qa[i] is (in+1, in+1),
    in layer order), ``P = eigen_precondition(Γ, ...)``; then ``ν = min(1,
    sqrt(kl_clip / |kl_factor · Σ⟨P, Γ⟩|))`` (1 without kl_clip, or when the
    sum is 0 or not finite) and the gradients become ``ν·P``. weight_grads[i]
    may have any shape with out rows (a Conv2d's (out, in, kh, kw)) and may be
    a view, such as one group's slice. kl_factor is lr² divided by the square
    of a gradient scaler's scale. One call replaces a cat, two copies and a
    reduction per layer from Python; nothing is written if a check fails.
    ν comes back as a 0-d float64 tensor on the gradients' device: on a GPU
    the call does not wait for the device.
    """
    op = "precondition_grads_"
    lists = {
        name: _check_tensor_list(op, name, value)
        for name, value in (
            ("weight_grads", weight_grads),
            ("bias_grads", bias_grads),
            ("qa", qa),
            ("da", da),
            ("qg", qg),
            ("dg", dg),
        )
    }
    if kl_clip is not None and not kl_clip > 0:
        raise ValueError(f"{op}: kl_clip must be > 0 or None; got {kl_clip}")
    _check_damping(op, damping)
    _check_one_device(op, [pair for name, value in lists.items() for pair in _listed(name, value)])
    if not lists["weight_grads"]:
        return torch.ones((), dtype=torch.float64)
    return _ops.precondition_grads_(
        *lists.values(), float(damping), 0.0 if kl_clip is None else float(kl_clip), float(kl_factor)
    )


def precondition_grads_inverse_(
    weight_grads: Sequence[Tensor],
    bias_grads: Sequence[Tensor],
    a_inv: Sequence[Tensor],
    g_inv: Sequence[Tensor],
    kl_clip: float | None = None,
    kl_factor: float = 1.0,
) -> Tensor:
    """:func:`precondition_grads_` for the inverse method: ``P = g_inv[i] Γ a_inv[i]``.

    a_inv[i] and g_inv[i] are the layer's damped factor inverses,
    ``(A + λI)⁻¹`` ((in, in), or (in+1, in+1) with a bias row) and ``(G + λI)⁻¹``
    ((out, out)), of one floating dtype; Γ is built in it. Two GEMMs a layer
    instead of the eigen method's four. Same KL clipping, write-back, checks
    and return value as precondition_grads_.
    """
    op = "precondition_grads_inverse_"
    lists = {
        name: _check_tensor_list(op, name, value)
        for name, value in (
            ("weight_grads", weight_grads),
            ("bias_grads", bias_grads),
            ("a_inv", a_inv),
            ("g_inv", g_inv),
        )
    }
    if kl_clip is not None and not kl_clip > 0:
        raise ValueError(f"{op}: kl_clip must be > 0 or None; got {kl_clip}")
    _check_one_device(op, [pair for name, value in lists.items() for pair in _listed(name, value)])
    if not lists["weight_grads"]:
        return torch.ones((), dtype=torch.float64)
    return _ops.precondition_grads_inverse_(
        *lists.values(), 0.0 if kl_clip is None else float(kl_clip), float(kl_factor)
    )


def _pair(value: int | Sequence[int]) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    pair = [int(v) for v in value]
    if len(pair) != 2:
        raise ValueError(f"conv2d_act_factor: expected an int or a pair of ints; got {pair}")
    return pair


# --------------------------------------------------------- fake kernels ----
# Shapes only (FakeTensor / torch.compile / opcheck). In-place ops return None.


@torch.library.register_fake("kfac_ext::cov_update_")
def _cov_update_fake(factor, x, alpha, beta, append_ones=False):
    d = factor.shape[0] - (1 if append_ones else 0)
    torch._check(
        x.dim() == 2 and x.shape[1] == d, lambda: f"cov_update_: x must be 2-D (rows, {d}); got {tuple(x.shape)}"
    )


@torch.library.register_fake("kfac_ext::channel_cov_update_")
def _channel_cov_update_fake(factor, x, alpha, beta):
    torch._check(
        x.dim() == 3 and x.shape[1] == factor.shape[0],
        lambda: f"channel_cov_update_: x must be 3-D (N, {factor.shape[0]}, L); got {tuple(x.shape)}",
    )


@torch.library.register_fake("kfac_ext::conv2d_act_factor")
def _conv2d_act_factor_fake(input, kernel_size, stride, padding, dilation, has_bias):
    torch._check(
        input.dim() == 4, lambda: f"conv2d_act_factor: input must be 4-D (N, C, H, W); got {tuple(input.shape)}"
    )
    n = input.shape[1] * kernel_size[0] * kernel_size[1] + (1 if has_bias else 0)
    return input.new_empty((n, n))


@torch.library.register_fake("kfac_ext::batched_eigh")
def _batched_eigh_fake(factors, clamp=True):
    values = [f.new_empty((f.shape[0],)) for f in factors]
    # Eigenvectors are column-major (strides (1, n)), as torch.linalg.eigh
    # returns them: LAPACK and cuSOLVER write them so, and copying to
    # row-major would buy nothing.
    vectors = [f.new_empty_strided((f.shape[0], f.shape[0]), (1, max(f.shape[0], 1))) for f in factors]
    return values, vectors


@torch.library.register_fake("kfac_ext::damped_inverses")
def _damped_inverses_fake(factors, damping, leaf=64):
    return [torch.empty_like(f) for f in factors], torch.empty(len(factors), dtype=torch.bool)


@torch.library.register_fake("kfac_ext::eigen_precondition")
def _eigen_precondition_fake(grads, qa, da, qg, dg, damping):
    torch._check(
        len(qa) == len(grads) and len(da) == len(grads) and len(qg) == len(grads) and len(dg) == len(grads),
        lambda: "eigen_precondition: grads, qa, da, qg, dg must be lists of equal length",
    )
    return [torch.empty_like(g, memory_format=torch.contiguous_format) for g in grads]


@torch.library.register_fake("kfac_ext::inverse_precondition")
def _inverse_precondition_fake(grads, a_inv, g_inv):
    torch._check(
        len(a_inv) == len(grads) and len(g_inv) == len(grads),
        lambda: "inverse_precondition: grads, a_inv, g_inv must be lists of equal length",
    )
    return [g.new_empty((g.shape[0], g.shape[1])) for g in grads]


@torch.library.register_fake("kfac_ext::pack_triu")
def _pack_triu_fake(mats):
    torch._check(len(mats) > 0, lambda: "pack_triu: mats must hold at least one matrix")
    total = sum(m.shape[0] * (m.shape[0] + 1) // 2 for m in mats)
    return mats[0].new_empty((total,))


@torch.library.register_fake("kfac_ext::unpack_triu_")
def _unpack_triu_fake(packed, mats, scale=1.0):
    total = sum(m.shape[0] * (m.shape[0] + 1) // 2 for m in mats)
    torch._check(
        packed.dim() == 1 and packed.shape[0] == total,
        lambda: f"unpack_triu_: packed must be 1-D with {total} entries; got {tuple(packed.shape)}",
    )


@torch.library.register_fake("kfac_ext::precondition_grads_")
def _precondition_grads_fake(weight_grads, bias_grads, qa, da, qg, dg, damping, kl_clip, kl_factor):
    n = len(weight_grads)
    torch._check(
        len(qa) == n and len(da) == n and len(qg) == n and len(dg) == n,
        lambda: "precondition_grads_: weight_grads, qa, da, qg, dg must be lists of equal length (one entry per layer)",
    )
    device = weight_grads[0].device if weight_grads else torch.device("cpu")
    return torch.empty((), dtype=torch.float64, device=device)


@torch.library.register_fake("kfac_ext::precondition_grads_inverse_")
def _precondition_grads_inverse_fake(weight_grads, bias_grads, a_inv, g_inv, kl_clip, kl_factor):
    n = len(weight_grads)
    torch._check(
        len(a_inv) == n and len(g_inv) == n,
        lambda: (
            "precondition_grads_inverse_: weight_grads, a_inv, g_inv must be lists "
            "of equal length (one entry per layer)"
        ),
    )
    device = weight_grads[0].device if weight_grads else torch.device("cpu")
    return torch.empty((), dtype=torch.float64, device=device)


@torch.library.register_fake("kfac_ext::kl_clip_sum")
def _kl_clip_sum_fake(precond, grads):
    device = precond[0].device if precond else torch.device("cpu")
    return torch.empty((), dtype=torch.float64, device=device)
