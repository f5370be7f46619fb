"""The second-order methods behind one interface: what a factor turns into and how a
gradient is preconditioned with it.

``KFACPreconditioner`` holds one :class:`Method` (``compute_method='eigen'`` or
``'inverse'``) and never branches on the method's name: solving factors,
the shapes of their data (to receive a broadcast or validate a state dict),
the identity fallback, and the two preconditioning paths all go through it.

- :class:`EigenMethod`: ``F = Q diag(d) Qᵀ``; the damping is added when
  preconditioning, ``P = Q_G [(Q_Gᵀ Γ Q_A) / (d_G d_Aᵀ + λ)] Q_Aᵀ``.
- :class:`InverseMethod`: ``(F + λI)⁻¹``; ``P = G⁻¹ Γ A⁻¹``.

A factor may be diagonal (a 1-D tensor of its diagonal: an Embedding's A, or a
factor too large to hold densely, docs/design.md §2a). Its data is a
:class:`~kfac_ext.second_order.DiagonalData` under either method (the eigen
method's eigenvalues are the diagonal itself; the inverse method's values are
``1/(d + λ)``), and a layer with one is preconditioned on the per-layer path.

Two preconditioning paths:

- :meth:`Method.precondition_fused_`: the fused op over every layer at once,
  reading and writing the gradients in place (all factors dense);
- :meth:`Method.precondition`: one layer's ``P`` from its ``Γ`` (any factor kind).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kfac_ext import ops
from kfac_ext.precision import precondition_grads_
from kfac_ext.second_order import DiagonalData, EigenData, InverseData, SecondOrder


class Method:
    """Interface of a second-order method (see the module docstring)."""

    name = ""

    def solve(self, factors: Sequence[Tensor], damping: float) -> list[SecondOrder]:
        raise NotImplementedError

    def empty(self, n: int, diagonal: bool, dtype: torch.dtype, device: torch.device | str | None) -> SecondOrder:
        """Data of the right shapes (what a broadcast fills in; what a state dict holds)."""
        raise NotImplementedError

    def identity(
        self, n: int, diagonal: bool, dtype: torch.dtype, device: torch.device | str | None, damping: float
    ) -> SecondOrder:
        """Data of an identity factor (the fallback when a factor's first solve fails)."""
        raise NotImplementedError

    def from_tensors(self, tensors: Sequence[Tensor], diagonal: bool) -> SecondOrder:
        kind: type[SecondOrder] = DiagonalData if diagonal else self._dense
        if len(tensors) != len(kind._fields):
            raise ValueError(
                f"{self.name} second-order data has {len(kind._fields)} tensors "
                f"({', '.join(kind._fields)}), got {len(tensors)}"
            )
        return kind(*tensors)

    def precondition(self, grad: Tensor, a: SecondOrder, g: SecondOrder, damping: float) -> Tensor:
        raise NotImplementedError

    def precondition_many(
        self, grads: Sequence[Tensor], a: Sequence[SecondOrder], g: Sequence[SecondOrder], damping: float
    ) -> list[Tensor]:
        return [self.precondition(x, a_, g_, damping) for x, a_, g_ in zip(grads, a, g)]

    def precondition_fused_(
        self,
        weight_grads: list[Tensor],
        bias_grads: list[Tensor],
        a: Sequence[SecondOrder],
        g: Sequence[SecondOrder],
        damping: float,
        kl_clip: float | None,
        kl_factor: float,
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        raise NotImplementedError

    _dense: type[EigenData | InverseData] = EigenData  # a dense factor's data


class EigenMethod(Method):
    """The eigen method: factors kept as eigendecompositions, the gradient divided by d_G d_Aᵀ + λ in their basis."""

    name = "eigen"
    _dense = EigenData

    def solve(self, factors, damping):
        dense = [f for f in factors if f.dim() == 2]
        values, vectors = ops.batched_eigh(dense) if dense else ([], [])
        solved = iter(zip(values, vectors))
        return [EigenData(*next(solved)) if f.dim() == 2 else DiagonalData(f.clamp(min=0)) for f in factors]

    def empty(self, n, diagonal, dtype, device):
        if diagonal:
            return DiagonalData(torch.zeros(n, dtype=dtype, device=device))
        return EigenData(torch.zeros(n, dtype=dtype, device=device), torch.eye(n, dtype=dtype, device=device))

    def identity(self, n, diagonal, dtype, device, damping):
        data = self.empty(n, diagonal, dtype, device)
        data.values.fill_(1.0)
        return data

    def precondition(self, grad, a, g, damping):
        v = grad if isinstance(g, DiagonalData) else g.vectors.T @ grad
        if not isinstance(a, DiagonalData):
            v = v @ a.vectors
        v = v / (torch.outer(g.values, a.values) + damping)
        if not isinstance(a, DiagonalData):
            v = v @ a.vectors.T
        return v if isinstance(g, DiagonalData) else g.vectors @ v

    def precondition_many(self, grads, a, g, damping):
        """The layers whose factors are all dense in one batched op, the rest one by one."""
        dense = [k for k in range(len(grads)) if isinstance(a[k], EigenData) and isinstance(g[k], EigenData)]
        out: list[Tensor | None] = [None] * len(grads)
        if dense:
            done = ops.eigen_precondition(
                [grads[k] for k in dense],
                [a[k].vectors for k in dense],
                [a[k].values for k in dense],
                [g[k].vectors for k in dense],
                [g[k].values for k in dense],
                damping,
            )
            for k, p in zip(dense, done):
                out[k] = p
        for k in range(len(grads)):
            if out[k] is None:
                out[k] = self.precondition(grads[k], a[k], g[k], damping)
        return out

    def precondition_fused_(self, weight_grads, bias_grads, a, g, damping, kl_clip, kl_factor, dtype=torch.float32):
        precondition_grads_(
            dtype,
            weight_grads,
            bias_grads,
            [x.vectors for x in a],
            [x.values for x in a],
            [x.vectors for x in g],
            [x.values for x in g],
            float(damping),
            kl_clip,
            kl_factor,
        )


class InverseMethod(Method):
    """The inverse method: factors kept as damped inverses, P = (G + λI)⁻¹ Γ (A + λI)⁻¹."""

    name = "inverse"
    _dense = InverseData

    def solve(self, factors, damping):
        dense = damped_inverses([f for f in factors if f.dim() == 2], damping)
        solved = iter(dense)
        return [DiagonalData(1.0 / (f + damping)) if f.dim() == 1 else InverseData(next(solved)) for f in factors]

    def empty(self, n, diagonal, dtype, device):
        if diagonal:
            return DiagonalData(torch.ones(n, dtype=dtype, device=device))
        return InverseData(torch.eye(n, dtype=dtype, device=device))

    def identity(self, n, diagonal, dtype, device, damping):
        # (I + λI)⁻¹ would be the exact inverse; the identity itself is what the
        # preconditioner has always used for a failed first inverse.
        return self.empty(n, diagonal, dtype, device)

    def precondition(self, grad, a, g, damping):
        v = grad * g.values.unsqueeze(1) if isinstance(g, DiagonalData) else g.inverse @ grad
        return v * a.values if isinstance(a, DiagonalData) else v @ a.inverse

    def precondition_many(self, grads, a, g, damping):
        """The layers whose factors are all dense in one op (small ones concurrently), the rest one by one."""
        dense = [k for k in range(len(grads)) if isinstance(a[k], InverseData) and isinstance(g[k], InverseData)]
        out: list[Tensor | None] = [None] * len(grads)
        if dense:
            done = ops.inverse_precondition(
                [grads[k] for k in dense], [a[k].inverse for k in dense], [g[k].inverse for k in dense]
            )
            for k, p in zip(dense, done):
                out[k] = p
        return [p if p is not None else self.precondition(x, a_, g_, damping) for p, x, a_, g_ in zip(out, grads, a, g)]

    def precondition_fused_(self, weight_grads, bias_grads, a, g, damping, kl_clip, kl_factor, dtype=torch.float32):
        # The raw op: every list is built by the caller, the wrapper's checks would repeat
        # the kernel's own. kl_clip 0 is the op's "off".
        torch.ops.kfac_ext.precondition_grads_inverse_(
            weight_grads,
            bias_grads,
            [x.inverse for x in a],
            [x.inverse for x in g],
            0.0 if kl_clip is None else float(kl_clip),
            float(kl_factor),
        )


def damped_inverses(factors: Sequence[Tensor], damping: float) -> list[Tensor]:
    """(F + λI)⁻¹ of each dense factor (its lower triangle read, as Cholesky reads it).

    On the CPU (float32, float64) by :func:`kfac_ext.ops.damped_inverses`: Y = L⁻¹ of
    the Cholesky factor and then YᵀY, both by recursive blocks whose flops are GEMMs,
    blocks of ≤ 80 rows by vectorised loops (csrc/cpu/damped_inverses.cpp); 1.6-3× cheaper
    than LAPACK's Cholesky + ``cholesky_inverse`` at 64-257 rows with one thread, as
    accurate (docs/cost-model.md). Elsewhere by :func:`cholesky_inverses`. Either way a
    factor is accepted when every Cholesky pivot is positive and finite (which a NaN or
    Inf anywhere in the lower triangle reaches) and one host synchronisation covers every
    check; a factor that fails goes alone through :func:`damped_inverse` (its float64
    retry, its error). Each result is its own tensor.
    """
    out: list[Tensor | None] = [None] * len(factors)
    on_cpu = [k for k, f in enumerate(factors) if f.device.type == "cpu" and f.dtype in _BLOCK_DTYPES]
    if on_cpu:
        inverses, ok = ops.damped_inverses([factors[k] for k in on_cpu], damping)
        for k, x, good in zip(on_cpu, inverses, ok.tolist()):
            out[k] = x if good else damped_inverse(factors[k], damping)
    rest = [k for k in range(len(factors)) if out[k] is None]
    for k, x in zip(rest, cholesky_inverses([factors[k] for k in rest], damping)):
        out[k] = x
    return out  # type: ignore[return-value]


_BLOCK_DTYPES = (torch.float32, torch.float64)


def cholesky_inverses(factors: Sequence[Tensor], damping: float) -> list[Tensor]:
    """(F + λI)⁻¹ of each dense factor by LAPACK (cuSOLVER on a GPU): the factors of one
    shape (and dtype, device) stacked into one batched Cholesky and ``cholesky_inverse``
    call, and one host synchronisation for every check.

    A factor's Cholesky is accepted when ``info`` is 0 and the diagonal of its
    Cholesky factor is finite: a NaN or Inf anywhere in the (lower triangle of the)
    factor reaches that diagonal (each L_jj is sqrt(F_jj + λ - sum_k L_jk^2)), so
    checking n numbers does what checking the n^2 of L did (a sixth of the update's
    time on the LM, benchmarks/RESULTS.md). A factor that fails goes alone through
    :func:`damped_inverse` (its float64 retry, its error). Each result is its own
    tensor (a copy out of the batch), so a state dict saves n^2 numbers, not the batch.
    """
    out: list[Tensor | None] = [None] * len(factors)
    groups: dict[tuple, list[int]] = {}
    for k, f in enumerate(factors):
        groups.setdefault((tuple(f.shape), f.dtype, f.device), []).append(k)
    batches = []
    for ks in groups.values():
        damped = torch.stack([factors[k] for k in ks])
        damped.diagonal(dim1=-2, dim2=-1).add_(damping)
        chol, info = torch.linalg.cholesky_ex(damped)
        ok = (info == 0) & torch.isfinite(chol.diagonal(dim1=-2, dim2=-1)).all(-1)
        batches.append((ks, chol, ok))
    flags = torch.cat([ok.to(batches[0][2].device) for _, _, ok in batches]).tolist() if batches else []
    at = 0
    for ks, chol, _ in batches:
        good = flags[at : at + len(ks)]
        at += len(ks)
        if all(good):
            inverses = torch.cholesky_inverse(chol)
            for j, k in enumerate(ks):
                out[k] = inverses[j] if len(ks) == 1 else inverses[j].clone()
            continue
        for j, k in enumerate(ks):  # a failed one alone, the rest as they are
            out[k] = torch.cholesky_inverse(chol[j]) if good[j] else damped_inverse(factors[k], damping)
    return out  # type: ignore[return-value]


def damped_inverse(f: Tensor, damping: float) -> Tensor:
    """(F + λI)⁻¹ through Cholesky; retried in float64 when float32 fails (one factor;
    :func:`damped_inverses` batches many)."""
    damped = f + damping * torch.eye(f.shape[0], dtype=f.dtype, device=f.device)
    chol, info = torch.linalg.cholesky_ex(damped)
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        if f.dtype == torch.float64:
            raise RuntimeError(f"Cholesky of a {f.shape[0]}x{f.shape[0]} factor failed")
        return damped_inverse(f.double(), damping).to(f.dtype)
    return torch.cholesky_inverse(chol)


METHODS = {"eigen": EigenMethod, "inverse": InverseMethod}


def method(name: str) -> Method:
    """The method object of a validated ``compute_method`` name."""
    return METHODS[name]()
