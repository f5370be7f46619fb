"""Precision of the preconditioning GEMMs (``KFACPreconditioner(precondition_dtype=...)``).

The eigen method's per-step work is four GEMMs a layer,
``P = Q_G [(Q_Gᵀ Γ Q_A) / (d_G d_Aᵀ + λ)] Q_Aᵀ``. At ResNet-50 / transformer
widths they are most of a step that updates nothing, so a lower-precision
GEMM is the cheapest speed-up on hardware that has one:

- ``torch.float32`` (default): the fused op ``precondition_grads_``, exact fp32.
- ``"tf32"``: the same op with TF32 allowed for cuBLAS float32 GEMMs (Ampere or
  newer GPUs; the op runs on torch's cuBLAS handle, whose math mode follows
  torch's matmul precision setting). No effect on a CPU.
- ``torch.bfloat16``: the four GEMMs in bfloat16, the division by the
  eigenvalues and the KL-clip sum in float32/float64 (plain torch ops: the fused
  kernels are float32/float64 only).

The error of each against float64 is measured by ``benchmarks/table_scale.py``: bf16 was
5.8e-3 (relative) on a d_model-1024 transformer block but 0.14 on ResNet-50 at damping
1e-3 (benchmarks/RESULTS.md): the eigenvalue division amplifies the rounding of Γ and Q
along small eigenvalues, so bf16 needs a larger damping to be safe.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor

from kfac_ext.reference import gammas  # Γ = [W | b], built one way for every path

PRECONDITION_DTYPES = (torch.float32, "tf32", torch.bfloat16)


def check_precondition_dtype(value: Any) -> torch.dtype | str:
    """The validated ``precondition_dtype`` (a ValueError naming it otherwise)."""
    if isinstance(value, str) and value.lower() in ("tf32", "bfloat16", "bf16", "float32", "fp32"):
        value = {
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float32": torch.float32,
            "fp32": torch.float32,
        }.get(value.lower(), "tf32")
    if not any(value is d or value == d for d in PRECONDITION_DTYPES):
        raise ValueError(f"precondition_dtype must be one of torch.float32, 'tf32', torch.bfloat16, got {value!r}")
    return value


@contextlib.contextmanager
def allow_tf32():
    """TF32 for float32 cuBLAS GEMMs inside the block, the caller's setting restored after."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the non-deprecated switch
        saved = matmul.fp32_precision
        matmul.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision = saved
    else:  # pragma: no cover  (older torch)
        saved = matmul.allow_tf32
        matmul.allow_tf32 = True
        try:
            yield
        finally:
            matmul.allow_tf32 = saved


def eigen_precondition_bf16(
    grads: Sequence[Tensor],
    qa: Sequence[Tensor],
    da: Sequence[Tensor],
    qg: Sequence[Tensor],
    dg: Sequence[Tensor],
    damping: float,
) -> list[Tensor]:
    """``ops.eigen_precondition`` with the GEMMs in bfloat16; results in the grads' dtype."""
    out = []
    for g, qa_, da_, qg_, dg_ in zip(grads, qa, da, qg, dg):
        qa_h, qg_h = qa_.to(torch.bfloat16), qg_.to(torch.bfloat16)
        v = (qg_h.T @ g.to(torch.bfloat16) @ qa_h).to(dg_.dtype)
        v = v / (torch.outer(dg_, da_) + damping)  # the eigenvalue division in full precision
        out.append((qg_h @ v.to(torch.bfloat16) @ qa_h.T).to(g.dtype))
    return out


def precondition_grads_(
    dtype: torch.dtype | str,
    weight_grads: list[Tensor],
    bias_grads: list[Tensor],
    qa: list[Tensor],
    da: list[Tensor],
    qg: list[Tensor],
    dg: list[Tensor],
    damping: float,
    kl_clip: float | None,
    kl_factor: float,
) -> None:
    """The one Python entry to the fused eigen-method op: ``ops.precondition_grads_``'s
    arguments (``kl_clip=None`` disables clipping) with the GEMMs in ``dtype`` (see the
    module docstring), in place.

    float32 calls the raw op directly: the caller built every list, so ops.py's
    Python checks would only repeat the kernel's own (~25 us a step on small models)."""
    op_clip = 0.0 if kl_clip is None else float(kl_clip)  # the op's "off" is 0
    if dtype is torch.float32:
        torch.ops.kfac_ext.precondition_grads_(weight_grads, bias_grads, qa, da, qg, dg, damping, op_clip, kl_factor)
        return
    if dtype == "tf32":
        with allow_tf32():
            torch.ops.kfac_ext.precondition_grads_(
                weight_grads, bias_grads, qa, da, qg, dg, damping, op_clip, kl_factor
            )
        return
    grads, has_bias = gammas(list(weight_grads), list(bias_grads), list(qa))
    precond = eigen_precondition_bf16(grads, qa, da, qg, dg, damping)
    nu: Tensor | None = None
    if kl_clip is not None:
        # a Tensor whenever there is a layer (mypy sees sum's int start too)
        total = cast(Tensor, sum((p.double() * g.double()).sum() for p, g in zip(precond, grads)))
        vg = (total * kl_factor).abs()
        nu = torch.where(torch.isfinite(vg) & (vg != 0), (kl_clip / vg).sqrt().clamp(max=1.0), torch.ones_like(vg))
    biases = iter(bias_grads)
    for w, p, bias in zip(weight_grads, precond, has_bias):
        if nu is not None:
            p = p * nu.to(p.dtype)
        w.copy_(p[:, : p.shape[1] - bias].reshape(w.shape))
        if bias:
            next(biases).copy_(p[:, -1])


def relative_error(result: Sequence[Tensor], exact: Sequence[Tensor]) -> float:
    """max over layers of ‖result − exact‖_F / ‖exact‖_F (computed in float64)."""
    worst = 0.0
    for r, e in zip(result, exact):
        e = e.double()
        norm = float(e.norm())
        err = float((r.double().to(e.device) - e).norm())
        worst = max(worst, err / norm if norm > 0 else (0.0 if err == 0 else math.inf))
    return worst
