"""``nn.Conv1d`` (audio and temporal convnets, the depthwise convolution of a
Conformer or Mamba block): a Conv2d of height 1.

Its input (N, C, L) is read as (N, C, 1, L) and its kernel k, stride, dilation
and padding as (1, k), (1, s), (1, d), (0, p), so the factors are a Conv2d's
(docs/design.md §2): ā the im2col patches over the L' output positions and g
the output-gradient rows, each divided by L'; Γ is ``weight.grad`` (out,
in/groups, k) read as (out, in/groups · k); a grouped conv is one layer per
group; 'same', 'valid' and the padding modes as for Conv2d.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
from torch import nn

from kfac_ext.layers.base import KFACLayer, has_trainable_weight
from kfac_ext.layers.registry import builtin_layer_type


class _HeightOneGeometry(NamedTuple):
    """A Conv1d's geometry as the Conv2d of height 1 it equals."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    padding_mode: str
    groups: int


class Conv1dLayer(KFACLayer):
    """K-FAC of an ``nn.Conv1d`` (or one of its groups), as a Conv2d of height 1."""

    def conv_geometry(self) -> _HeightOneGeometry:
        m = cast(nn.Conv1d, self.module)
        padding = m.padding if isinstance(m.padding, str) else (0, *m.padding)
        return _HeightOneGeometry(
            (1, *m.kernel_size), (1, *m.stride), padding, (1, *m.dilation), m.padding_mode, m.groups
        )

    def as_image(self, t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(-2)  # (N, C, L) -> (N, C, 1, L); unbatched (C, L) -> (C, 1, L)


@builtin_layer_type(nn.Conv1d)
def conv1d_layers(name: str, module: nn.Module, factor_dtype: torch.dtype | None) -> Sequence[KFACLayer]:
    """nn.Conv1d: one layer, or one per channel group (none if the weight is frozen)."""
    if not has_trainable_weight(module):
        return []
    groups = cast(nn.Conv1d, module).groups
    if groups == 1:
        return [Conv1dLayer(name, module, factor_dtype)]
    return [Conv1dLayer(f"{name}[group {k}]", module, factor_dtype, group=k) for k in range(groups)]
