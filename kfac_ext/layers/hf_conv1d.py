"""HF-style ``Conv1D`` (GPT-2's c_attn, c_proj, c_fc): a Linear whose weight is
stored transposed, ``y = x W + b`` with W of shape (in, out).

Recognised by duck typing (class name ``Conv1D``, an ``nf`` attribute and a 2-D
weight), so ``transformers`` is never imported. The factors are a Linear's
(docs/design.md §2a): A from the input rows, G from the output-gradient rows;
only the gradient's layout differs, Γ = W.gradᵀ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from kfac_ext.layers.base import KFACLayer
from kfac_ext.layers.registry import builtin_layer_type


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face ``Conv1D`` (recognised by name and shape, without importing transformers)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
    )


class Conv1DLayer(KFACLayer):
    """K-FAC of an HF ``Conv1D``: a Linear whose weight is stored transposed, (in, out)."""

    direct_grads = False  # Γ is the transpose of weight.grad, not a view the op can write

    def __init__(self, name: str, module: nn.Module, factor_dtype: torch.dtype | None = None, **kw: Any) -> None:
        # Conv1D is duck-typed (no class to cast to): is_hf_conv1d saw a 2-D tensor weight.
        w = cast(torch.Tensor, module.weight)
        bias = cast(torch.Tensor | None, module.bias)
        super().__init__(name, module, factor_dtype, weight=w, bias=bias, in_dim=w.shape[0], out_dim=w.shape[1], **kw)

    def weight_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return w.T

    def write_weight(self, grad: torch.Tensor, p: torch.Tensor) -> None:
        grad.copy_(p.T)

    def bias_rows(self, b: torch.Tensor) -> torch.Tensor:
        return b


@builtin_layer_type(is_hf_conv1d)
def hf_conv1d_layers(name: str, module: nn.Module, factor_dtype: torch.dtype | None) -> Sequence[KFACLayer]:
    """The K-FAC layer of an HF ``Conv1D`` with a trainable weight (none if it is frozen)."""
    if not cast(torch.Tensor, module.weight).requires_grad:
        return []
    return [Conv1DLayer(name, module, factor_dtype)]
