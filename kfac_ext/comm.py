"""The seam between the K-FAC preconditioner and distribution.

:class:`~kfac_ext.preconditioner.KFACPreconditioner` never talks to
``torch.distributed`` itself. At every point where a data-parallel run must
communicate or divide work it calls a method of a *comm* object; this module
defines that interface (:class:`Comm`) and its single-process implementation
(:class:`LocalComm`, where every call is trivial). The torch.distributed
implementation lives in ``kfac_ext/distributed.py``.

Call order inside one ``KFACPreconditioner.step()`` (every rank makes the same
calls in the same order with the same layer indices and shapes):

1. once, after layer registration: ``setup(layer_names, factor_shapes)``.
2. on a factor-update step: ``allreduce_factors([A_i, G_i])`` for each layer as
   soon as its backward hook has captured every micro-batch of the step (when
   ``world_size > 1``, so the reduction overlaps the rest of backward), then in
   ``step()`` one ``wait(allreduce_factors(rest))`` for the layers not sent yet;
   the wait must finish every reduction started since the last one (symmetric
   square matrices; only an upper triangle need travel). The comm must leave the **mean over ranks** in place. The
   preconditioner multiplies G by ``1 / world_size**2`` itself (each rank's
   loss is a local mean, so its output grads are ``world_size`` times the
   combined-batch ones), so N ranks reproduce the 1-rank, combined-batch
   factors; the comm must not rescale. A non-finite entry on any rank makes the
   mean non-finite on all ranks, so every rank skips that layer consistently.
3. on an inverse-update step, for each layer ``i`` and factor ``which`` in
   ``("A", "G")``: the rank ``eigen_owner(i, which)`` computes the second-order
   data of that factor (eigen method: ``[eigenvalues, eigenvectors]``; inverse
   method: ``[inverse]``). Then ``wait(broadcast_eigens(items))`` with
   ``items = [(i, which, tensors), ...]`` for every (layer, factor) this rank
   owns or needs: the comm copies the owner's tensors into the same-shaped
   tensors on every rank with ``is_grad_worker(i)`` (in place).
4. every step: each rank with ``is_grad_worker(i)`` computes layer ``i``'s
   preconditioned gradient P (shape ``(out, in[+1])``); then
   ``wait(broadcast_preconditioned(items))`` with ``items = [(i, P), ...]`` for
   all layers: the comm fills P in place on ranks that are not grad workers of
   layer ``i``. After it, every rank holds every P (KL clipping needs them all).

``world_size``/``rank`` describe the data-parallel group the batch is split
over. Handles returned by the ``*`` methods are opaque; ``wait(None)`` must be
accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Handle = Any
EigenItem = tuple[int, str, Sequence[torch.Tensor]]  # a SecondOrder is a sequence of tensors
PrecondItem = tuple[int, torch.Tensor]


class Comm:
    """Interface the preconditioner calls; see the module docstring for the order."""

    world_size: int = 1
    rank: int = 0

    def setup(self, layer_names: Sequence[str], factor_shapes: Sequence[tuple[int, int]]) -> None:
        """Called once after registration. ``factor_shapes[i] = (dim_A, dim_G)``."""
        raise NotImplementedError

    def allreduce_factors(self, tensors: list[torch.Tensor]) -> Handle:
        """Start averaging the batch factors over ranks, in place."""
        raise NotImplementedError

    def wait(self, handle: Handle) -> None:
        """Block until the operation behind ``handle`` has finished."""
        raise NotImplementedError

    def average(self, tensors: list[torch.Tensor]) -> Handle:
        """Start averaging arbitrary tensors over ranks, in place (a tied weight's
        per-use gradients, which data parallelism averages like ``.grad``)."""
        raise NotImplementedError

    def eigen_owner(self, layer_idx: int, which: str) -> int:
        """Rank that computes the eigendecomposition (or inverse) of factor ``which``."""
        raise NotImplementedError

    def is_grad_worker(self, layer_idx: int) -> bool:
        """Whether this rank preconditions layer ``layer_idx``'s gradient."""
        raise NotImplementedError

    def broadcast_eigens(self, items: list[EigenItem]) -> Handle:
        """Start sending each owner's second-order tensors to the layer's grad workers."""
        raise NotImplementedError

    def broadcast_preconditioned(self, items: list[PrecondItem]) -> Handle:
        """Start sending each preconditioned gradient from a grad worker to the other ranks."""
        raise NotImplementedError

    @property
    def replicates_preconditioning(self) -> bool:
        """True when every rank preconditions every layer itself, so that no
        preconditioned gradient is ever sent (one process, or COMM-OPT)."""
        return False


class LocalComm(Comm):
    """One process: it owns every factor, preconditions every layer, sends nothing."""

    world_size = 1
    rank = 0

    def setup(self, layer_names: Sequence[str], factor_shapes: Sequence[tuple[int, int]]) -> None:
        self.layer_names = list(layer_names)
        self.factor_shapes = list(factor_shapes)

    def allreduce_factors(self, tensors: list[torch.Tensor]) -> Handle:
        return None  # the mean over one rank is the tensor itself

    def average(self, tensors: list[torch.Tensor]) -> Handle:
        return None  # the mean over one rank is the tensor itself

    def wait(self, handle: Handle) -> None:
        return None

    def eigen_owner(self, layer_idx: int, which: str) -> int:
        return 0

    def is_grad_worker(self, layer_idx: int) -> bool:
        return True

    def broadcast_eigens(self, items: list[EigenItem]) -> Handle:
        return None

    def broadcast_preconditioned(self, items: list[PrecondItem]) -> Handle:
        return None

    @property
    def replicates_preconditioning(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "LocalComm(world_size=1)"
