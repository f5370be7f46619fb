"""Where K-FAC's running factor averages start (the identity, or the first captured
batch) and the scale of G.

kfac-pytorch (and ``factor_init='identity'``, the default) starts every running
average A and G at the identity and blends each captured batch in with weight
1 - factor_decay. With decay 0.95, 17 updates leave 0.95**17 = 0.42 of the
identity in the factor. When a layer's true factor is far from 1 in scale
(a conv's A is O(1/T), T output positions; every G is O(1/N**2) for a
batch-mean loss), the factor is then mostly that identity for the whole of a
short run, and its "preconditioning" a rescaled gradient step
(docs/training-races.md, the digits CNN's conv factors).

``factor_init='first_batch'`` replaces the identity by the first captured
batch factors: the first update copies them, later ones blend as usual, so
the average holds data from the first step on (the usual bias-free start of
an exponential moving average).

``g_scale`` multiplies every captured G. kfac-pytorch's G is the covariance of
the gradient of the batch-*mean* loss, 1/N**2 of Martens & Grosse's
per-example factor; ``g_scale=N**2`` (N the global batch) gives their scale,
and with it a damping λ that means the same thing whatever the batch size
(λ must then be chosen in those units: multiplying G by N**2 multiplies every
eigenvalue product d_G d_A by N**2).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # for the annotation only: layers/base.py need not load to use this module
    from kfac_ext.layers.base import KFACLayer

__all__ = ["FACTOR_INITS", "check_factor_init", "check_g_scale", "update_running"]

FACTOR_INITS = ("identity", "first_batch")


def check_factor_init(value: object) -> str:
    """The ``factor_init`` argument, one of FACTOR_INITS (a ValueError naming it otherwise)."""
    if value not in FACTOR_INITS:
        raise ValueError(f"factor_init must be one of {FACTOR_INITS}, got {value!r}")
    return str(value)


def check_g_scale(value: object) -> float:
    """The ``g_scale`` argument as a float > 0 (a ValueError naming it otherwise)."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"g_scale must be a finite number > 0, got {value!r}")
    return float(value)


def update_running(layer: KFACLayer, a: torch.Tensor, g: torch.Tensor, decay: float, factor_init: str) -> None:
    """Blend this step's batch factors into ``layer``'s running averages.

    With ``first_batch``, a layer's first update takes the batch factors as they
    are (blend weight 1, which ``lerp_`` computes exactly as the end point)."""
    first = factor_init == "first_batch" and layer.factor_updates == 0
    layer.update_running(a, g, 0.0 if first else decay)
