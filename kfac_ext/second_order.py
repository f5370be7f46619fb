"""Second-order data of one K-FAC factor, by compute method.

The eigen method keeps the factor's eigendecomposition, ``F = Q diag(d) Qᵀ``
(:class:`EigenData`; the damping is added when preconditioning); the inverse
method keeps the damped inverse ``(F + λI)⁻¹`` (:class:`InverseData`); a
diagonal factor (a 1-D tensor) keeps one vector under either method
(:class:`DiagonalData`, see :mod:`kfac_ext.methods`). All are named tuples: the code reads them by name, and they still travel as plain
tensor sequences (broadcasts; state dicts store ``list(data)``, so the format
is unchanged).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class EigenData(NamedTuple):
    """The eigen method's data: ``F = vectors diag(values) vectorsᵀ``."""

    values: Tensor  # d, ascending, clamped at 0
    vectors: Tensor  # Q, eigenvectors in its columns


class InverseData(NamedTuple):
    """The inverse method's data: the damped inverse of the factor."""

    inverse: Tensor  # (F + λI)⁻¹


class DiagonalData(NamedTuple):
    """A diagonal factor's data (an Embedding's A, a factor over max_factor_bytes)."""

    values: Tensor  # eigen: the diagonal clamped at 0; inverse: 1 / (diagonal + λ)


SecondOrder = EigenData | InverseData | DiagonalData
