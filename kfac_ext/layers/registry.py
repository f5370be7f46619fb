"""Which K-FAC layer type handles which module: the registry of layer types.

A layer type is a *match* (a module class, or a predicate on the module) and a
*factory* ``factory(name, module, factor_dtype) -> list[KFACLayer]`` (a module
may give several K-FAC layers: a grouped conv one per group, an attention
module one per projection). ``KFACPreconditioner`` asks :func:`layer_type_for`
for every module of the model.

- The library's own types register where they are defined, with the
  :func:`builtin_layer_type` decorator on their factory; the package imports
  every file of ``kfac_ext/layers/`` (``__init__.py``), so adding a built-in
  type is adding one file. Their matches must be disjoint: a module that two of
  them match is refused by name, so the order of the files never decides.
- A user's type, registered with :func:`register_layer_type`, takes precedence
  over the built-ins (the latest registration first).

A factory whose module owns K-FAC blocks among its children (an
``nn.MultiheadAttention`` owns its ``out_proj``) claims them: the children are
not matched on their own.

This file imports only ``base.py`` (the layer class); the types' files import it
and base, and none of them another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import torch
from torch import nn

from kfac_ext.layers.base import KFACLayer

Factory = Callable[[str, nn.Module, torch.dtype | None], Sequence[KFACLayer]]
Match = type | tuple[type, ...] | Callable[[nn.Module], bool]
F = TypeVar("F", bound=Factory)


class LayerType(NamedTuple):
    """How one kind of module becomes K-FAC layers: which modules it matches and the factory that builds their layers."""

    match: Match
    factory: Factory
    claims_children: bool = False

    def matches(self, module: nn.Module) -> bool:
        if isinstance(self.match, (type, tuple)):
            return isinstance(module, self.match)
        return bool(self.match(module))

    def describe(self) -> str:
        where = f"{self.factory.__module__}.{self.factory.__qualname__}"
        return where.removeprefix("kfac_ext.layers.")


_BUILTIN: list[LayerType] = []
_USER: list[LayerType] = []


def _check_registration(match: Match, factory: object) -> None:
    classes = isinstance(match, tuple) and len(match) > 0 and all(isinstance(m, type) for m in match)
    if not (isinstance(match, type) or classes or callable(match)):
        raise TypeError(
            f"register_layer_type: match must be a class, a tuple of classes or a callable, got {type(match).__name__}"
        )
    if not callable(factory):
        raise TypeError(f"register_layer_type: factory must be callable, got {type(factory).__name__}")


def builtin_layer_type(match: Match, *, claims_children: bool = False) -> Callable[[F], F]:
    """Decorator for a built-in type's factory, in the file that defines the type:
    ``@builtin_layer_type(nn.Embedding)`` registers ``match`` → the factory."""

    def register(factory: F) -> F:
        _check_registration(match, factory)
        _BUILTIN.append(LayerType(match, factory, claims_children))
        return factory

    return register


def builtin_layer_types() -> list[LayerType]:
    """The built-in layer types (a copy), in the order their files were imported."""
    return list(_BUILTIN)


def register_layer_type(match: Match, factory: Factory, *, claims_children: bool = False) -> None:
    """Teach every KFACPreconditioner built afterwards a new layer type.

    ``match``: a module class or a tuple of them (``isinstance``), or a predicate
    ``f(module) -> bool``.
    ``factory(name, module, factor_dtype)``: the :class:`~kfac_ext.layers.KFACLayer`
    objects of that module (an empty list registers nothing). The simplest adapter
    for a module computing ``y = x Wᵀ + b`` over rows of x is a ``KFACLayer`` built
    with ``weight=``, ``bias=``, ``in_dim=``, ``out_dim=``; override ``weight_matrix``
    / ``write_weight`` when W is stored differently, and ``_forward_hook`` when the
    input is not ``args[0]`` (docs/design.md §2a).
    """
    _check_registration(match, factory)
    _USER.insert(0, LayerType(match, factory, claims_children))


def unregister_layer_type(match: Match) -> None:
    """Forget a user-registered type (by the ``match`` it was registered with, or an equal tuple)."""
    _USER[:] = [t for t in _USER if t.match != match]


def layer_type_for(module: nn.Module) -> LayerType | None:
    """The layer type of ``module`` (users' registrations first, then the one built-in
    that matches), or None."""
    for layer_type in _USER:
        if layer_type.matches(module):
            return layer_type
    found = [t for t in _BUILTIN if t.matches(module)]
    if len(found) > 1:
        raise TypeError(
            f"{type(module).__name__} matches {len(found)} built-in K-FAC layer types "
            f"({', '.join(t.describe() for t in found)}); their matches must be disjoint. "
            "register_layer_type(...) of your own decides for such a module"
        )
    return found[0] if found else None
