"""Second-order data of one K-FAC factor, by compute method.

The eigen method keeps the factor's eigendecomposition, ``F = Q diag(d) Qᵀ``
(:class:`EigenData`; the damping is added when preconditioning); the inverse
method keeps the damped inverse ``(F + λI)⁻¹`` (:class:`InverseData`). Both are
named tuples: the code reads them by name, and they still travel as plain
tensor sequences (broadcasts; state dicts store ``list(data)``, so the format
is unchanged).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from torch import Tensor


class EigenData(NamedTuple):
    """The eigen method's data: ``F = vectors diag(values) vectorsᵀ``."""

    values: Tensor   # d, ascending, clamped at 0
    vectors: Tensor  # Q, eigenvectors in its columns


class InverseData(NamedTuple):
    """The inverse method's data: the damped inverse of the factor."""

    inverse: Tensor  # (F + λI)⁻¹


SecondOrder = EigenData | InverseData


def second_order(compute_method: str, tensors: Sequence[Tensor]) -> SecondOrder:
    """The typed data of ``compute_method`` from its tensors in field order."""
    kind = EigenData if compute_method == "eigen" else InverseData
    if len(tensors) != len(kind._fields):
        raise ValueError(f"{compute_method} second-order data has {len(kind._fields)} tensors "
                         f"({', '.join(kind._fields)}), got {len(tensors)}")
    return kind(*tensors)
