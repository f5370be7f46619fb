"""``nn.MultiheadAttention`` as K-FAC layers (docs/design.md §2a).

The module's forward is functional (``F.multi_head_attention_forward``): its
projections are ``F.linear`` calls on slices of ``in_proj_weight`` (or on
``q/k/v_proj_weight``) and on ``out_proj.weight``, never module calls, so no
module hook sees their inputs or output gradients (``out_proj``'s hooks never
fire). Each projection is a Linear, and is one K-FAC layer here:

- ``name[q]``, ``name[k]``, ``name[v]``: rows 0:E, E:2E, 2E:3E of the packed
  ``in_proj_weight`` (and of ``in_proj_bias``), or the separate weights when
  the embedding dims differ; A from the query / key / value rows, G from the
  gradient of that projection's output. Self-attention feeds all three the
  same input (three equal A's); cross-attention different ones, so the
  packed weight is block-diagonal in K-FAC either way.
- ``name[out]``: ``out_proj``, A from the attention output, G from the module
  output's gradient.

Capture: on a capturing forward only, a forward pre-hook swaps
``torch.nn.functional.linear`` (the name the functional forward calls) for a
wrapper that calls the original with the same arguments and, when the weight
is one of this module's projections (found by storage address, as the chunks
are views), records the input rows and hooks the output's gradient; a forward
hook (``always_call``: also after an exception) puts the original back. The
model, its ``state_dict`` keys and every output and gradient are unchanged
(the wrapper returns the original's result). The swap is process-wide for the
duration of that one forward: another thread calling ``F.linear`` meanwhile
goes through the wrapper, which passes its call through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from kfac_ext.layers.base import KFACLayer
from kfac_ext.layers.registry import builtin_layer_type


class ProjectionLayer(KFACLayer):
    """One projection of an attention module: rows ``rows`` of ``weight`` (a Linear's layout)."""

    per_use_capable = False  # its input is not a module-hook argument

    def __init__(
        self,
        name: str,
        module: nn.Module,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        rows: tuple[int, int],
        factor_dtype: torch.dtype | None = None,
        **kw: Any,
    ) -> None:
        self.row_range = rows
        super().__init__(
            name,
            module,
            factor_dtype,
            weight=weight,
            bias=bias,
            in_dim=weight.shape[1],
            out_dim=rows[1] - rows[0],
            **kw,
        )
        self.out_slice = slice(*rows)

    def _install_hooks(self) -> list:
        return []  # fed by the module's _AttentionCapture

    def sequence_dims(self, t: torch.Tensor) -> tuple:
        return (0,)  # the functional forward's rows are (L, N, E)

    def bias_rows(self, b: torch.Tensor) -> torch.Tensor:
        return b[self.out_slice]


class _AttentionCapture:
    """Routes the projections' F.linear calls of one attention module to its layers."""

    def __init__(self, module: nn.MultiheadAttention, layers: list[ProjectionLayer]):
        self.module, self.layers = module, layers
        self._saved: Callable[..., torch.Tensor] | None = None  # F.linear while swapped
        self._target_len = 1  # L of this forward's query: out_proj's rows are (L·N, E)
        self._handles = [
            module.register_forward_pre_hook(self._enter, with_kwargs=True),
            module.register_forward_hook(self._exit, always_call=True),
        ]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _enter(self, module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for layer in self.layers:
            layer.ever_called = True
        query = args[0] if args else kwargs.get("query")
        if isinstance(query, torch.Tensor):
            self._target_len = query.shape[1 if module.batch_first and query.dim() == 3 else 0]
        if (
            not (module.training and torch.is_grad_enabled() and any(l.capture for l in self.layers))
            or self._saved is not None
        ):
            return
        self._saved = F.linear
        original = self._saved

        def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
            out = original(input, weight, bias)
            self._record(input, weight, out)
            return out

        F.linear = linear

    def _exit(self, module: nn.MultiheadAttention, args: tuple[Any, ...], output: Any) -> None:
        if self._saved is not None:
            F.linear, self._saved = self._saved, None

    def _record(self, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
        for layer in self.layers:
            base = layer.weight
            if (
                weight.dim() != 2
                or weight.shape[1] != base.shape[1]
                or weight.untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
            ):
                continue  # not a view of this layer's weight
            offset, rem = divmod(weight.data_ptr() - base.data_ptr(), base.stride(0) * base.element_size())
            lo, hi = layer.row_range
            if rem or offset < 0 or offset > lo or hi > offset + weight.shape[0] or not layer.capture:
                continue
            if x.numel() == 0 and layer.skip_empty:
                layer.empty_batches += 1
                continue
            with torch.no_grad():
                layer.add_activation_rows(layer.rows(_sequences(x.detach(), self._target_len), "mean"))
            if out.requires_grad:  # L bound now: another forward may run before this backward
                cols, length = slice(lo - offset, hi - offset), self._target_len
                out.register_hook(
                    lambda g, layer=layer, cols=cols, length=length: self._grad(layer, _sequences(g[..., cols], length))
                )

    @staticmethod
    def _grad(layer: ProjectionLayer, g: torch.Tensor) -> None:
        with torch.no_grad():
            layer.add_gradient_rows(layer.rows(g.detach(), "sum"))
            if layer.on_gradient_captured is not None:
                layer.on_gradient_captured(layer)


def _sequences(t: torch.Tensor, length: int) -> torch.Tensor:
    """(L, N, E) rows; out_proj's input arrives flattened to (L·N, E) (and an unbatched
    forward's as (L, E)), which only 'reduce' needs unflattened."""
    return t.unflatten(0, (length, -1)) if t.dim() == 2 else t


@builtin_layer_type(nn.MultiheadAttention, claims_children=True)
def attention_layers(name: str, module: nn.Module, factor_dtype: torch.dtype | None) -> Sequence[KFACLayer]:
    """The K-FAC layers of one ``nn.MultiheadAttention``: q, k, v (slices of the packed weight, or their own) and out."""
    module = cast(nn.MultiheadAttention, module)  # registered for nn.MultiheadAttention
    e = module.embed_dim
    layers: list[ProjectionLayer] = []
    if module._qkv_same_embed_dim:
        w = module.in_proj_weight
        if w.requires_grad:
            layers += [
                ProjectionLayer(f"{name}[{p}]", module, w, module.in_proj_bias, (k * e, (k + 1) * e), factor_dtype)
                for k, p in enumerate("qkv")
            ]
    else:
        for k, p in enumerate("qkv"):
            w = getattr(module, f"{p}_proj_weight")
            if w.requires_grad:  # separate weights; the bias is still the packed one
                b = module.in_proj_bias
                layers.append(_SeparateProjection(f"{name}[{p}]", module, w, b, k * e, factor_dtype))
    out = module.out_proj
    if out.weight.requires_grad:
        layers.append(
            ProjectionLayer(f"{name}[out]", module, out.weight, out.bias, (0, out.weight.shape[0]), factor_dtype)
        )
    if layers:
        capture = _AttentionCapture(module, layers)
        for layer in layers:
            layer._handles = [capture]  # remove_hooks() removes the shared capture
    return layers


class _SeparateProjection(ProjectionLayer):
    """q/k/v_proj_weight (E, d_in) with its bias at rows [start, start+E) of in_proj_bias."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        start: int,
        factor_dtype: torch.dtype | None,
    ) -> None:
        self.bias_start = start
        super().__init__(name, module, weight, bias, (0, weight.shape[0]), factor_dtype)

    def bias_rows(self, b: torch.Tensor) -> torch.Tensor:
        return b[self.bias_start : self.bias_start + self.g_dim]
