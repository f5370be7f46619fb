"""kfac-pytorch's enums, under the names and values ``kfac.enums`` gives them.

A program written for kfac-pytorch passes these to the constructor
(``compute_method=kfac.enums.ComputeMethod.EIGEN``,
``grad_worker_fraction=kfac.enums.DistributedStrategy.COMM_OPT``, ...); with
``import kfac_ext as kfac`` it finds them here. The constructor reads any enum
by its member name (:mod:`kfac_ext.arguments`), so kfac-pytorch's own members
work too, and so do the plain strings ('eigen', 'comm_opt', ...).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["AllreduceMethod", "AssignmentStrategy", "ComputeMethod", "DistributedStrategy"]


class AllreduceMethod(Enum):
    """How factors are all-reduced. kfac-pytorch derives it from
    ``allreduce_bucket_cap_mb`` (0: ALLREDUCE, else ALLREDUCE_BUCKETED); so does
    kfac_ext, which takes no argument of this type."""

    ALLREDUCE = 1
    ALLREDUCE_BUCKETED = 2


class AssignmentStrategy(Enum):
    """What the assignment of eigendecompositions to ranks balances: COMPUTE
    (~n³ time per factor) or MEMORY (~n² bytes of its result)."""

    COMPUTE = 1
    MEMORY = 2


class ComputeMethod(Enum):
    """Second-order data of the factors: EIGEN (eigendecompositions, damping
    added to the eigenvalue products) or INVERSE (damped inverses)."""

    EIGEN = 1
    INVERSE = 2


class DistributedStrategy(Enum):
    """Shorthands for ``grad_worker_fraction``: COMM_OPT = 1, HYBRID_OPT = 1/2,
    MEM_OPT = 1/world_size."""

    COMM_OPT = 1
    MEM_OPT = 2
    HYBRID_OPT = 3
