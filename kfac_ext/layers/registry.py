"""Which K-FAC layer type handles which module: the registry of layer types.

A layer type is a *match* (a module class, or a predicate on the module) and a
*factory* ``factory(name, module, factor_dtype) -> list[KFACLayer]`` (a module
may give several K-FAC layers: a grouped conv one per group, an attention
module one per projection). ``KFACPreconditioner`` asks :func:`factory_for`
for every module of the model; the first registered match wins, so a user's
type registered with :func:`register_layer_type` takes precedence over the
built-ins.

A factory whose module owns K-FAC blocks among its children (an
``nn.MultiheadAttention`` owns its ``out_proj``) claims them: the children are
not matched on their own.

Adding a built-in layer type: a file with its :class:`~kfac_ext.layers.KFACLayer`
subclass and factory, and one line in ``_BUILTIN`` below (docs/design.md §2a).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from kfac_ext.layers.attention import attention_layers
from kfac_ext.layers.base import KFACLayer, has_trainable_weight
from kfac_ext.layers.conv1d import conv1d_layers, is_hf_conv1d
from kfac_ext.layers.embedding import embedding_layers

Factory = Callable[[str, nn.Module, torch.dtype | None], Sequence[KFACLayer]]
Match = type | tuple[type, ...] | Callable[[nn.Module], bool]


class LayerType(NamedTuple):
    """How one kind of module becomes K-FAC layers: which modules it matches and the factory that builds their layers."""

    match: Match
    factory: Factory
    claims_children: bool = False

    def matches(self, module: nn.Module) -> bool:
        if isinstance(self.match, (type, tuple)):
            return isinstance(module, self.match)
        return bool(self.match(module))


def linear_conv_layers(name: str, module: nn.Module, factor_dtype: torch.dtype | None) -> Sequence[KFACLayer]:
    """nn.Linear / nn.Conv2d: one layer, or one per channel group (block-diagonal)."""
    if not has_trainable_weight(module):
        return []  # a frozen weight is left out silently
    groups = getattr(module, "groups", 1)
    if groups == 1:
        return [KFACLayer(name, module, factor_dtype)]
    return [KFACLayer(f"{name}[group {k}]", module, factor_dtype, group=k) for k in range(groups)]


_BUILTIN: list[LayerType] = [
    LayerType((nn.Linear, nn.Conv2d), linear_conv_layers),
    LayerType(is_hf_conv1d, conv1d_layers),
    LayerType(nn.MultiheadAttention, attention_layers, claims_children=True),
    LayerType(nn.Embedding, embedding_layers),
]
_USER: list[LayerType] = []


def register_layer_type(match: Match, factory: Factory, *, claims_children: bool = False) -> None:
    """Teach every KFACPreconditioner built afterwards a new layer type.

    ``match``: a module class (``isinstance``) or a predicate ``f(module) -> bool``.
    ``factory(name, module, factor_dtype)``: the :class:`~kfac_ext.layers.KFACLayer`
    objects of that module (an empty list registers nothing). The simplest adapter
    for a module computing ``y = x Wᵀ + b`` over rows of x is a ``KFACLayer`` built
    with ``weight=``, ``bias=``, ``in_dim=``, ``out_dim=``; override ``weight_matrix``
    / ``write_weight`` when W is stored differently, and ``_forward_hook`` when the
    input is not ``args[0]`` (docs/design.md §2a).
    """
    if not (isinstance(match, type) or callable(match)):
        raise TypeError(f"register_layer_type: match must be a class or a callable, got {type(match).__name__}")
    if not callable(factory):
        raise TypeError(f"register_layer_type: factory must be callable, got {type(factory).__name__}")
    _USER.insert(0, LayerType(match, factory, claims_children))


def unregister_layer_type(match: Match) -> None:
    """Forget a user-registered type (by the ``match`` it was registered with)."""
    _USER[:] = [t for t in _USER if t.match is not match]


def layer_type_for(module: nn.Module) -> LayerType | None:
    """The layer type of ``module`` (users' registrations first, then the built-ins), or None."""
    for layer_type in _USER + _BUILTIN:
        if layer_type.matches(module):
            return layer_type
    return None
