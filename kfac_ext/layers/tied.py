"""Tied weights: one Parameter used by several registered layers (docs/design.md §2a).

Each use keeps its own share Γ_u of the weight's gradient (``KFACLayer.use_grad``,
from its hooks); ``KFACPreconditioner`` preconditions each with that use's factors
and sums the results. :func:`mark_tied` finds the ties when the layers are built.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from kfac_ext.layers.base import KFACLayer


def mark_tied(layers: list[KFACLayer], log: Callable[[str, list], None]) -> set:
    """Set ``tied`` on every layer whose whole weight another layer also uses, and
    return the layers that cannot be preconditioned per use (a grouped conv, or a tie
    that involves a slice of a weight): they are not registered, with a warning naming
    them. ``log(message, names)`` reports each tie that is preconditioned per use."""
    by_weight: dict[int, list[KFACLayer]] = {}
    for layer in layers:
        by_weight.setdefault(id(layer.weight), []).append(layer)
    dropped: set = set()
    for group in by_weight.values():
        if len({id(l.module) for l in group}) < 2:
            continue  # one module: one use, or its disjoint blocks (conv groups, attention projections)
        names = sorted({l.name.split("[")[0] for l in group})
        if all(l.covers_weight() and l.per_use_capable for l in group):
            for l in group:
                l.tied = True
            log(
                "KFACPreconditioner: layers %s share one weight; each use is preconditioned "
                "with its own factors and the results summed",
                names,
            )
            continue
        for l in group:
            l.remove_hooks()
        dropped.update(group)
        warnings.warn(
            f"KFACPreconditioner: layers {names} share one weight (tied weights) "
            "and a grouped conv or a slice of a weight is among them (whole-weight "
            "Linear, Conv2d, Conv1D and Embedding uses are preconditioned per use); none of them is "
            "registered, their weight keeps its plain gradient (to precondition "
            "it with one layer's factors anyway, name the others in skip_layers)",
            stacklevel=4,
        )  # mark_tied, _register, __init__, the caller
    return dropped
