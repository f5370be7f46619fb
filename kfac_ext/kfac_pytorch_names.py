"""Names kfac-pytorch's ``KFACPreconditioner`` has that kfac_ext's spells otherwise.

A mixin of :class:`kfac_ext.preconditioner.KFACPreconditioner`, kept apart so the
preconditioner's own code does not carry them. kfac_ext keeps
``grad_worker_fraction`` and ``allreduce_bucket_cap_mb`` and derives kfac-pytorch's
enums from them; ``reset_batch`` forgets the captured micro-batches, as there.

kfac-pytorch's internals, which its ``kfac.preconditioner`` and ``kfac.scheduler``
modules also expose, have no counterpart: :func:`refuse_internal` makes asking for
one an AttributeError that says so (docs/kfac-pytorch.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from kfac_ext.enums import AllreduceMethod, DistributedStrategy

if TYPE_CHECKING:
    from kfac_ext.comm import Comm
    from kfac_ext.layers.base import KFACLayer

# kfac-pytorch's own machinery (its base class, work assignment, layer objects,
# communicator): what kfac_ext does in its own way, with no objects of these kinds.
INTERNALS = frozenset(
    {
        "BaseKFACPreconditioner",
        "KAISAAssignment",
        "KFACBaseLayer",
        "KFACEigenLayer",
        "KFACInverseLayer",
        "TorchDistributedCommunicator",
        "register_modules",
        "tdc",
        "base_preconditioner",
        "tracing",
    }
)


def refuse_internal(owner: str, name: str) -> AttributeError:
    """The AttributeError for ``owner.name``, saying why when it is kfac-pytorch's."""
    if name in INTERNALS:
        return AttributeError(
            f"{owner} has no {name!r}: that is an internal of kfac-pytorch, "
            "which kfac_ext does not provide (see docs/kfac-pytorch.md)"
        )
    return AttributeError(f"{owner} has no attribute {name!r}")


class KfacPytorchNames:
    """kfac-pytorch's attribute names on a preconditioner (``distributed_strategy``, ``allreduce_method``, ``reset_batch``), mixed into KFACPreconditioner."""

    # What this mixin reads, set by KFACPreconditioner's __init__.
    grad_worker_fraction: float
    allreduce_bucket_cap_mb: float
    comm: Comm
    layers: list[KFACLayer]
    _reducing: dict[KFACLayer, tuple]

    @property
    def distributed_strategy(self) -> DistributedStrategy:
        """COMM_OPT (every rank a grad worker), MEM_OPT (one per layer) or HYBRID_OPT,
        as kfac-pytorch names ``grad_worker_fraction``."""
        if self.grad_worker_fraction == 1.0:
            return DistributedStrategy.COMM_OPT
        if self.grad_worker_fraction <= 1.0 / self.comm.world_size:
            return DistributedStrategy.MEM_OPT
        return DistributedStrategy.HYBRID_OPT

    @property
    def allreduce_method(self) -> AllreduceMethod:
        """ALLREDUCE_BUCKETED when factors are bucketed (``allreduce_bucket_cap_mb > 0``)."""
        return AllreduceMethod.ALLREDUCE_BUCKETED if self.allreduce_bucket_cap_mb > 0 else AllreduceMethod.ALLREDUCE

    @property
    def tdc(self) -> NoReturn:
        raise refuse_internal(type(self).__name__, "tdc")

    def reset_batch(self) -> None:
        """Forget the micro-batches captured since the last ``step()`` (factors, step
        count and eigendecompositions are kept)."""
        if self._reducing:  # finish reductions that backward hooks started
            self.comm.wait(self.comm.allreduce_factors([]))
            self._reducing = {}
        for layer in self.layers:
            layer.clear_batch()
