"""``nn.Embedding`` as a K-FAC layer (docs/design.md §2a).

A lookup ``y = W[i]`` is a Linear without bias applied to the one-hot row
``e_i``: ``y = (Wᵀ) e_i``. With ``Wᵀ`` (dim × vocabulary) as the Linear's
weight, A = E[e_i e_iᵀ] is diagonal, the tokens' frequencies (held as a
vector: it is never dense), and G = E[g gᵀ] over the looked-up rows, as for
a Linear. Γ = W.gradᵀ.

- ``padding_idx``: its row gets no gradient (torch skips it), so its input is
  the zero row: it adds nothing to A but its output gradient still counts in
  G and in n (exactly a Linear fed zeros there).
- ``max_norm``: supported; torch renormalises the looked-up rows in place
  before the lookup, the factors describe the lookup that ran.
- ``kfac_approx='reduce'``: an Embedding stays 'expand' (the averaged one-hot
  rows would make A dense, V × V).
- ``sparse=True``: a clear error (the gradient is a sparse tensor the dense
  preconditioning cannot write); skip the layer or use ``sparse=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from kfac_ext.layers.base import KFACLayer
from kfac_ext.layers.registry import builtin_layer_type


class EmbeddingLayer(KFACLayer):
    """K-FAC of an ``nn.Embedding``: A diagonal (token frequencies, ``padding_idx`` left out), G full."""

    direct_grads = False  # Γ = W.gradᵀ
    module: nn.Embedding  # what __init__ is given

    @property
    def kfac_approx(self) -> str:
        return "expand"

    @kfac_approx.setter
    def kfac_approx(self, value: str) -> None:
        pass  # see the module docstring: always 'expand'

    def __init__(self, name: str, module: nn.Embedding, factor_dtype: torch.dtype | None = None, **kw: Any) -> None:
        if module.sparse:
            raise ValueError(
                f"KFACPreconditioner: embedding {name!r} has sparse=True; its "
                "sparse gradient cannot be preconditioned (use sparse=False, or name "
                "it in skip_layers)"
            )
        vocab, dim = module.weight.shape
        super().__init__(
            name,
            module,
            factor_dtype,
            weight=module.weight,
            bias=None,
            in_dim=vocab,
            out_dim=dim,
            a_diagonal=True,
            **kw,
        )

    def _add_activation(self, x: torch.Tensor) -> None:
        idx = x.reshape(-1)
        counts = torch.bincount(idx, minlength=self.a_dim).to(self.factor_dtype)
        if self.module.padding_idx is not None:
            counts[self.module.padding_idx] = 0
        counts /= max(idx.numel(), 1)
        if self.a_count == 0:
            self.A_sum = counts
        else:
            assert self.A_sum is not None  # set by the first batch (a_count 0)
            self.A_sum.add_(counts)
        self.a_count += 1
        self.ever_fired = True

    def _add_use_grad(self, x: torch.Tensor, g: torch.Tensor) -> None:
        """Γ_u (dim × vocabulary) += the output-gradient rows added into their tokens'
        columns (the padding row gets none, as in torch's own backward)."""
        with torch.no_grad():
            idx = x.reshape(-1)
            rows = g.reshape(-1, g.shape[-1]).to(self.factor_dtype)
            if self.module.padding_idx is not None:
                keep = idx != self.module.padding_idx
                idx, rows = idx[keep], rows[keep]
            gamma = rows.new_zeros(self.g_dim, self.a_dim).index_add_(1, idx, rows.T)
            self._accumulate_use(gamma)

    def weight_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return w.T

    def write_weight(self, grad: torch.Tensor, p: torch.Tensor) -> None:
        grad.copy_(p.T)


@builtin_layer_type(nn.Embedding)
def embedding_layers(name: str, module: nn.Module, factor_dtype: torch.dtype | None) -> Sequence[KFACLayer]:
    """The K-FAC layer of an ``nn.Embedding`` with a trainable weight (none if it is frozen)."""
    embedding = cast(nn.Embedding, module)  # registered for nn.Embedding
    if not embedding.weight.requires_grad:
        return []
    return [EmbeddingLayer(name, embedding, factor_dtype)]
