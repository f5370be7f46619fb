"""Eigenbasis refreshes that cost less than a full eigh (``KFACPreconditioner(eigen_refresh=...)``).

By default every due update decomposes every factor again (``ops.batched_eigh``).
Between two updates a factor is a running average that moves slowly, so its old
eigenbasis often still (nearly) diagonalises it. :class:`SkipTest` checks that,
at the cost of two GEMMs instead of an eigendecomposition, and keeps the old
basis when the check passes:

    With Q the previous eigenvectors and M = QᵀFQ, keeping Q means using
    F̂ = Q diag(M) Qᵀ for F. Q is orthogonal, so ‖F − F̂‖_F = ‖offdiag(M)‖_F:
    the basis is kept only when ‖offdiag(M)‖_F ≤ tol·‖F‖_F, so the factor the
    preconditioner inverts is never further than tol (relative, Frobenius)
    from the true one. The eigenvalues are refreshed to diag(M) (the Rayleigh
    quotients), clamped at 0 like ``batched_eigh``'s.

The error bound is on the factor, by construction; what it does to the
preconditioned gradient is measured on real factor sequences by
``benchmarks/table_eigen_refresh.py`` (benchmarks/RESULTS.md).

A warm start (orthogonal iteration or Jacobi sweeps from the old basis) was
measured there too and is not offered: see RESULTS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Decomposition = Sequence[Tensor]  # [eigenvalues, eigenvectors]: a list or an EigenData


class SkipTest:
    """Keep a factor's previous eigenbasis while ‖offdiag(QᵀFQ)‖_F ≤ tol·‖F‖_F.

    ``checked`` counts the factors tested (those with a previous basis),
    ``kept`` those whose basis was kept, ``nonfinite`` the non-finite factors
    that kept their previous basis. The counters are statistics of this
    process (not part of the preconditioner's state dict); everything the
    decision needs, the previous bases, is.
    """

    def __init__(self, tol: float):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or not 0.0 <= tol < 1.0:
            raise ValueError(f"SkipTest: tol must be a number in [0, 1), got {tol!r}")
        self.tol = float(tol)
        self.checked = self.kept = self.nonfinite = 0

    @property
    def skip_rate(self) -> float:
        """Fraction of the tested factors that kept their basis (0 before any test)."""
        return self.kept / self.checked if self.checked else 0.0

    @torch.no_grad()
    def test(self, factor: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """(eigenvalues diag(QᵀFQ) clamped at 0, ‖offdiag‖_F / ‖F‖_F as a 0-d tensor)."""
        m = q.T @ factor @ q
        d = m.diagonal().clone()
        off = (m - torch.diag_embed(d)).norm()
        # A zero factor has ratio 0 (its old basis is exact for it), not 0/0.
        return d.clamp_(min=0.0), off / factor.norm().clamp(min=torch.finfo(factor.dtype).tiny)

    def solve(
        self,
        factors: Sequence[Tensor],
        previous: Sequence[Decomposition | None],
        exact: Callable[[list[Tensor]], Sequence[Decomposition]],
    ) -> list[Decomposition]:
        """[eigenvalues, eigenvectors] of each factor: the previous basis where the test
        passes, ``exact`` (one call, for all the others) elsewhere.

        ``previous[k]`` is factor k's current [eigenvalues, eigenvectors] or None.
        A non-finite factor keeps its previous decomposition; without one it goes
        to ``exact`` (whose own failure handling then applies).
        """
        out: list[Decomposition | None] = [None] * len(factors)
        tested: list[tuple[int, Decomposition, Tensor, Tensor]] = []
        for k, (f, prev) in enumerate(zip(factors, previous)):
            if prev is not None:
                d, ratio = self.test(f, prev[1])
                tested.append((k, prev, d, ratio))
        # One host synchronisation for all the decisions.
        ratios = torch.stack([r.to(torch.float64).cpu() for _, _, _, r in tested]).tolist() if tested else []
        for (k, prev, d, _), ratio in zip(tested, ratios):
            self.checked += 1
            if not math.isfinite(ratio) and not bool(torch.isfinite(factors[k]).all()):
                self.nonfinite += 1
                out[k] = prev
            elif ratio <= self.tol:
                self.kept += 1
                out[k] = _with_values(prev, d)
        redo = [k for k in range(len(factors)) if out[k] is None]
        if redo:
            for k, dq in zip(redo, exact([factors[k] for k in redo])):
                out[k] = dq
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"SkipTest(tol={self.tol}, checked={self.checked}, kept={self.kept})"


def _with_values(decomposition: Decomposition, values: Tensor) -> Decomposition:
    """``decomposition`` (a list or a named tuple, values first) with new eigenvalues."""
    rest = list(decomposition[1:])
    return type(decomposition)(values, *rest) if isinstance(decomposition, tuple) else [values, *rest]


def check_eigen_refresh(value: object, compute_method: str, inv_lag_steps: int) -> SkipTest | None:
    """The validated ``eigen_refresh`` argument of KFACPreconditioner (None: exact eigh)."""
    if value is None:
        return None
    if not isinstance(value, SkipTest):
        raise ValueError(
            "eigen_refresh must be None (exact eigh at every update) or a "
            f"kfac_ext.eigen_refresh.SkipTest, got {value!r}"
        )
    if compute_method != "eigen":
        raise ValueError(f"eigen_refresh applies to compute_method='eigen', got compute_method={compute_method!r}")
    if inv_lag_steps:
        raise ValueError(
            "eigen_refresh is not supported with inv_lag_steps > 0 (the lagged "
            f"update always decomposes), got inv_lag_steps={inv_lag_steps}"
        )
    return value
