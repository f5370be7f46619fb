"""``nn.Linear`` and ``nn.Conv2d``: the layer types :class:`~kfac_ext.layers.base.KFACLayer`
itself implements (docs/design.md §2); a grouped conv is one block-diagonal layer per
channel group."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kfac_ext.layers.base import KFACLayer, has_trainable_weight
from kfac_ext.layers.registry import builtin_layer_type


@builtin_layer_type((nn.Linear, nn.Conv2d))
def linear_conv_layers(name: str, module: nn.Module, factor_dtype: torch.dtype | None) -> Sequence[KFACLayer]:
    """nn.Linear / nn.Conv2d: one layer, or one per channel group (block-diagonal)."""
    if not has_trainable_weight(module):
        return []  # a frozen weight is left out silently
    groups = getattr(module, "groups", 1)
    if groups == 1:
        return [KFACLayer(name, module, factor_dtype)]
    return [KFACLayer(f"{name}[group {k}]", module, factor_dtype, group=k) for k in range(groups)]
