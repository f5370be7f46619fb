"""K-FAC over torch.distributed (KAISA, docs/design.md §3).

Pieces, each usable alone:
- ``FactorAllReduce``: averages symmetric factors across ranks. Only upper
  triangles travel (``ops.pack_triu``), packed into flat buckets of at most
  ``bucket_cap_mb``, each bucket all-reduced asynchronously as soon as it is
  full; ``wait()`` is called where the factors are needed and unpacks the
  averages in place. Every rank must add the same factors in the same order
  (they do: the layer order is checked at construction).
- ``GradWorkerLayout``: the process groups of ``grad_worker_fraction`` f,
  created once. With g = f*N grad workers per layer, the world is cut into
  N/g blocks of g consecutive ranks (the "grad worker groups": every rank of a
  block holds the eigendecompositions of the block's layers and preconditions
  them) and g columns {i, i+g, i+2g, ...} (the "receiver groups": the rank of
  a column that is in a layer's block broadcasts the preconditioned gradient
  to the rest of its column). f = 1 is COMM-OPT (one block: eigenbases go to
  everyone, no gradient broadcast); f = 1/N is MEM-OPT (blocks of one rank:
  the owner preconditions and broadcasts the result to all).
- ``WorkPlan``: which block preconditions each layer and which rank of it
  eigendecomposes A and G (``assign_work`` with the n^3 + broadcast cost).
- ``DistributedComm``: the communicator the preconditioner talks to (see
  kfac_ext/comm.py for the single-process interface it implements).

Faults: construction checks that every rank registered the same layers
(names and factor shapes) and names the first mismatch; every wait on a
collective turns a Gloo/NCCL failure (a peer that raised and exited, or the
process-group timeout expiring on a peer that hangs) into a RuntimeError that
says which collective failed.

Without DDP the user must average gradients before ``preconditioner.step()``
(e.g. ``dist.all_reduce(p.grad); p.grad /= world_size`` for every
parameter): K-FAC averages its factors, not the gradients it preconditions.
Each rank's loss must be the mean over its local batch, as under DDP (the
preconditioner's 1/world_size^2 correction of G assumes it).

Overlap: ``allreduce_factors`` may be called several times before ``wait``
(e.g. once per layer from a backward hook); full buckets go out at once, so
the reductions then run while the backward pass goes on. The preconditioner
currently calls it once per factor-update step, after backward; buckets still
overlap one another's packing.

On NCCL, set ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1`` (torchrun's default in
recent versions) so that a timed-out collective raises instead of hanging.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from kfac_ext import ops
from kfac_ext.assignment import assign_work, eigen_cost
from kfac_ext.comm import Comm, EigenItem, Handle, PrecondItem

__all__ = [
    "FactorAllReduce",
    "GradWorkerLayout",
    "WorkPlan",
    "LayerWork",
    "check_same_layers",
    "DistributedComm",
    "strategy_name",
]


# --------------------------------------------------------------------------- helpers
def _wait(work: Any, what: str) -> None:  # an async collective's Work
    """Wait on an async collective; a failure or timeout becomes a clear RuntimeError."""
    try:
        work.wait()
    except Exception as exc:  # Gloo raises RuntimeError/DistBackendError with a terse text
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise RuntimeError(
            f"kfac_ext: {what} failed on rank {rank}: a peer rank exited, raised, or did not "
            f"join within the process-group timeout ({type(exc).__name__}: {exc})"
        ) from exc


# --------------------------------------------------------------------------- factor all-reduce
class FactorAllReduce:
    """Bucketed, packed, asynchronous averaging of symmetric factors across ``group``."""

    def __init__(self, group: dist.ProcessGroup | None = None, bucket_cap_mb: float = 25.0) -> None:
        if not bucket_cap_mb >= 0:  # 0: every factor in an all-reduce of its own
            raise ValueError(f"allreduce_bucket_cap_mb must be >= 0, got {bucket_cap_mb!r}")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.cap_bytes = int(bucket_cap_mb * 1024 * 1024)
        self._pending: dict[tuple, list[torch.Tensor]] = {}  # (dtype, device) -> factors
        self._pending_bytes: dict[tuple, int] = {}
        self._in_flight: list[tuple] = []  # (work, packed, factors)
        self.elements_sent = 0  # packed elements handed to all_reduce, for accounting/tests
        self.buckets_sent = 0

    def add(self, factor: torch.Tensor) -> None:
        """Queue one square symmetric factor; its bucket is launched once full. A 1-D
        factor (a diagonal one, docs/design.md §2a) goes out at once, as it is."""
        if factor.dim() == 1:
            work = dist.all_reduce(factor, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
            self.elements_sent += factor.numel()
            self.buckets_sent += 1
            self._in_flight.append((work, None, [factor]))
            return
        if factor.dim() != 2 or factor.shape[0] != factor.shape[1]:
            raise ValueError(f"FactorAllReduce.add: factor must be square 2-D, got {tuple(factor.shape)}")
        key = (factor.dtype, factor.device)
        n = factor.shape[0]
        nbytes = n * (n + 1) // 2 * factor.element_size()
        if self._pending.get(key) and self._pending_bytes[key] + nbytes > self.cap_bytes:
            self._launch(key)
        self._pending.setdefault(key, []).append(factor)
        self._pending_bytes[key] = self._pending_bytes.get(key, 0) + nbytes
        if self._pending_bytes[key] >= self.cap_bytes:
            self._launch(key)

    def _launch(self, key: tuple) -> None:
        factors = self._pending.pop(key, [])
        self._pending_bytes.pop(key, None)
        if not factors:
            return
        packed = ops.pack_triu(factors)
        self.elements_sent += packed.numel()
        self.buckets_sent += 1
        # SUM then scale at unpack: ReduceOp.AVG exists on NCCL only.
        work = dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        self._in_flight.append((work, packed, factors))

    def flush(self) -> None:
        """Launch every partly filled bucket (in a deterministic order)."""
        for key in sorted(self._pending, key=str):
            self._launch(key)

    def wait(self) -> None:
        """Finish all reductions and write the averaged factors back in place."""
        self.flush()
        in_flight, self._in_flight = self._in_flight, []
        for work, packed, factors in in_flight:
            _wait(work, "factor all-reduce")
            if packed is None:  # a diagonal factor, reduced in place
                factors[0].div_(self.world_size)
            else:
                ops.unpack_triu_(packed, factors, 1.0 / self.world_size)

    def reduce(self, factors: Sequence[torch.Tensor]) -> None:
        """Average ``factors`` in place (add all, then wait)."""
        for f in factors:
            self.add(f)
        self.wait()


# --------------------------------------------------------------------------- layout and plan
def strategy_name(grad_workers: int, world_size: int) -> str:
    """KAISA's name of the trade-off: COMM-OPT, MEM-OPT or HYBRID-OPT."""
    if grad_workers == world_size:
        return "COMM-OPT"
    if grad_workers == 1:
        return "MEM-OPT"
    return "HYBRID-OPT"


def _new_group(ranks: list[int], world_size: int) -> dist.ProcessGroup | None:
    if len(ranks) == world_size:
        return dist.group.WORLD
    return dist.new_group(ranks)  # every rank must call this, in the same order, for every group


class GradWorkerLayout:
    """Grad-worker blocks and receiver columns for ``grad_worker_fraction``; groups made once."""

    def __init__(self, world_size: int, rank: int, grad_worker_fraction: float, create_groups: bool = True):
        f = float(grad_worker_fraction)
        if not (1.0 / world_size - 1e-9 <= f <= 1.0 + 1e-9):
            raise ValueError(
                f"grad_worker_fraction must be in [1/world_size, 1] = "
                f"[{1 / world_size:.4g}, 1], got {grad_worker_fraction!r}"
            )
        g = max(1, round(f * world_size))
        if world_size % g:
            raise ValueError(
                f"grad_worker_fraction * world_size = {f} * {world_size} must divide "
                f"world_size (grad workers per layer {g} does not)"
            )
        self.world_size, self.rank, self.grad_workers = world_size, rank, g
        self.n_blocks = world_size // g
        self.blocks = [list(range(j * g, (j + 1) * g)) for j in range(self.n_blocks)]
        self.columns = [list(range(i, world_size, g)) for i in range(g)]
        self.strategy = strategy_name(g, world_size)
        self.block_groups: list = [None] * self.n_blocks
        self.column_groups: list = [None] * g
        if create_groups:
            # Blocks of one rank and columns of one rank never communicate: no group.
            if g > 1:
                self.block_groups = [_new_group(b, world_size) for b in self.blocks]
            if self.n_blocks > 1:
                self.column_groups = [_new_group(c, world_size) for c in self.columns]

    def block_of(self, rank: int) -> int:
        return rank // self.grad_workers

    def column_of(self, rank: int) -> int:
        return rank % self.grad_workers


@dataclasses.dataclass(frozen=True)
class LayerWork:
    """Where one layer's second-order work runs."""

    block: int  # the grad-worker block that preconditions this layer
    a_owner: int  # global rank that eigendecomposes A
    g_owner: int  # global rank that eigendecomposes G


class WorkPlan:
    """Per layer: its block and the owners of its two eigendecompositions."""

    def __init__(
        self,
        factor_sizes: Sequence[tuple[int, int]],
        layout: GradWorkerLayout,
        colocate_factors: bool = True,
        method: str = "auto",
        layers: Sequence[LayerWork] | None = None,
        cost: str = "compute",
    ):
        """``layers``: a plan computed elsewhere (rank 0's), adopted as is. ``cost``:
        "compute" balances predicted seconds (eigendecomposition plus broadcast),
        "memory" the bytes of the (Q, d) each rank holds."""
        g = layout.grad_workers
        if cost == "compute":
            # broadcasting (Q, d) reaches the g-1 other grad workers of the block
            def of(n: int) -> float:
                return eigen_cost(n, receivers=g - 1)
        elif cost == "memory":

            def of(n: int) -> float:
                return 4.0 * (n * n + n)
        else:
            raise ValueError(f"WorkPlan: cost must be 'compute' or 'memory', got {cost!r}")
        costs = [(of(na), of(ng)) for na, ng in factor_sizes]
        self.layout = layout
        if layers is not None:
            self._set_layers(list(layers), costs)
            return
        layer_cost = [ca + cg for ca, cg in costs]
        blocks = assign_work(layer_cost, layout.n_blocks, method=method).owner
        a_owner = [0] * len(costs)
        g_owner = [0] * len(costs)
        for j, ranks in enumerate(layout.blocks):
            members = [i for i, b in enumerate(blocks) if b == j]  # the block's layers
            if colocate_factors or g == 1:
                owner = assign_work([layer_cost[i] for i in members], g, method=method).owner
                for i, w in zip(members, owner):
                    a_owner[i] = g_owner[i] = ranks[w]
            else:
                tasks = [c for i in members for c in costs[i]]
                owner = assign_work(tasks, g, method=method).owner
                for k, i in enumerate(members):
                    a_owner[i], g_owner[i] = ranks[owner[2 * k]], ranks[owner[2 * k + 1]]
        self._set_layers([LayerWork(b, a, gw) for b, a, gw in zip(blocks, a_owner, g_owner)], costs)

    def _set_layers(self, layers: list[LayerWork], cost: Sequence[tuple[float, float]]) -> None:
        self.layers = layers
        # predicted cost per rank, seconds or bytes (for reports and tests)
        self.rank_cost = [0.0] * self.layout.world_size
        for (ca, cg), w in zip(cost, self.layers):
            self.rank_cost[w.a_owner] += ca
            self.rank_cost[w.g_owner] += cg

    def is_grad_worker(self, layer: int, rank: int) -> bool:
        return self.layout.block_of(rank) == self.layers[layer].block


# --------------------------------------------------------------------------- consistency check
def check_same_layers(layers: Sequence[tuple[str, tuple[int, ...]]], group: dist.ProcessGroup | None = None) -> None:
    """Raise on every rank, naming the first mismatch, unless all ranks registered the same layers.

    ``layers``: (name, factor shapes) in registration order.
    """
    mine = [(str(n), tuple(int(s) for s in shape)) for n, shape in layers]
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, mine, group=group)
    ref = gathered[0]
    for r, theirs in enumerate(gathered[1:], start=1):
        if theirs == ref:
            continue
        for i, (a, b) in enumerate(zip(ref, theirs)):
            if a != b:
                raise RuntimeError(
                    f"kfac_ext: ranks registered different layers: layer #{i} is {a[0]!r} "
                    f"(factor sizes {a[1]}) on rank 0 but {b[0]!r} (factor sizes {b[1]}) on rank {r}"
                )
        longer, shorter, who = (ref, theirs, r) if len(ref) > len(theirs) else (theirs, ref, 0)
        extra = longer[len(shorter)]
        raise RuntimeError(
            f"kfac_ext: ranks registered different layers: rank 0 has {len(ref)} layers, rank {r} "
            f"has {len(theirs)}; first unmatched: {extra[0]!r} (missing on rank {who})"
        )


# --------------------------------------------------------------------------- coalesced broadcasts
class _Broadcasts:
    """Handle for a set of coalesced broadcasts: (work, flat buffer, tensors to fill or None)."""

    def __init__(self, what: str):
        self.what = what
        self.works: list[tuple] = []

    def wait(self) -> None:
        works, self.works = self.works, []
        for work, flat, receivers in works:
            _wait(work, self.what)
            if receivers is not None:
                offset = 0
                for t in receivers:
                    n = t.numel()
                    t.copy_(flat[offset : offset + n].view_as(t))
                    offset += n


def _broadcast_coalesced(
    handle: _Broadcasts, tensors: list[torch.Tensor], src: int, group: dist.ProcessGroup | None, rank: int
) -> int:
    """One broadcast of all ``tensors`` (same dtype and device) from ``src``; returns elements."""
    if rank == src:
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        receivers = None
    else:
        numel = sum(t.numel() for t in tensors)
        flat = torch.empty(numel, dtype=tensors[0].dtype, device=tensors[0].device)
        receivers = tensors
    work = dist.broadcast(flat, src=src, group=group, async_op=True)
    handle.works.append((work, flat, receivers))
    return flat.numel()


# --------------------------------------------------------------------------- the communicator
class DistributedComm(Comm):
    """The torch.distributed implementation of the preconditioner's comm seam (kfac_ext/comm.py).

    grad_worker_fraction: f in [1/N, 1]; 1 = COMM-OPT, 1/N = MEM-OPT, between = HYBRID-OPT.
    colocate_factors: eigendecompose a layer's A and G on the same rank.
    allreduce_bucket_cap_mb: size cap of one packed factor all-reduce.
    assignment: "auto" (optimal makespan solver, LPT fallback) or "lpt".
    assignment_cost: what the assignment balances, "compute" (predicted seconds of
    the eigendecompositions and broadcasts) or "memory" (bytes of their results).
    timeout: seconds the construction-time barrier waits for every rank (Gloo
    names the ranks that did not arrive); collectives during training fail
    after the process group's own timeout (``init_process_group(timeout=...)``).
    """

    def __init__(
        self,
        grad_worker_fraction: float = 1.0,
        colocate_factors: bool = True,
        allreduce_bucket_cap_mb: float = 25.0,
        assignment: str = "auto",
        timeout: float | None = None,
        group: dist.ProcessGroup | None = None,
        assignment_cost: str = "compute",
    ) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "DistributedComm needs torch.distributed initialised (dist.init_process_group, or run under torchrun)"
            )
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if group is not None and group is not dist.group.WORLD and self.world_size != dist.get_world_size():
            raise ValueError("DistributedComm: only the default (WORLD) process group is supported")
        self.grad_worker_fraction = grad_worker_fraction
        self.colocate_factors = colocate_factors
        self.assignment = assignment
        if assignment_cost not in ("compute", "memory"):
            raise ValueError(f"assignment_cost must be 'compute' or 'memory', got {assignment_cost!r}")
        self.assignment_cost = assignment_cost
        self.timeout = timeout
        self.layout = GradWorkerLayout(self.world_size, self.rank, grad_worker_fraction)
        self.reducer = FactorAllReduce(group, allreduce_bucket_cap_mb)
        self.plan: WorkPlan | None = None
        # elements sent, by kind: what a benchmark reports as bytes per step
        self.eigen_elements = 0
        self.precond_elements = 0

    @property
    def strategy(self) -> str:
        return self.layout.strategy

    @property
    def factor_elements(self) -> int:
        return self.reducer.elements_sent

    def setup(self, layer_names: Sequence[str], factor_shapes: Sequence[tuple[int, int]]) -> None:
        names = list(layer_names)
        shapes = [(int(a), int(g)) for a, g in factor_shapes]
        if len(names) != len(shapes):
            raise ValueError("DistributedComm.setup: layer_names and factor_shapes differ in length")
        self._barrier("construction")
        check_same_layers(list(zip(names, shapes)), self.group)
        self.layer_names = names
        self.factor_shapes = shapes
        # Rank 0 plans and the others adopt its plan: a time-limited solver could
        # otherwise return different (equally good) assignments on different ranks.
        plan = [
            WorkPlan(shapes, self.layout, self.colocate_factors, self.assignment, cost=self.assignment_cost).layers
            if self.rank == 0
            else None
        ]
        dist.broadcast_object_list(plan, src=0, group=self.group)
        self.plan = WorkPlan(
            shapes, self.layout, self.colocate_factors, self.assignment, layers=plan[0], cost=self.assignment_cost
        )

    def _barrier(self, where: str) -> None:
        kwargs: dict[str, datetime.timedelta] = {}
        if self.timeout is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=float(self.timeout))
        try:
            if dist.get_backend(self.group) == "gloo":
                # names the ranks that did not arrive, instead of hanging silently
                dist.monitored_barrier(self.group, wait_all_ranks=True, **kwargs)
            else:
                dist.barrier(self.group)
        except Exception as exc:
            raise RuntimeError(
                f"kfac_ext: ranks did not all reach the {where} barrier on rank {self.rank}: {exc}"
            ) from exc

    def _plan(self) -> WorkPlan:
        if self.plan is None:
            raise RuntimeError("DistributedComm: setup() must be called before communicating")
        return self.plan

    # -- factors
    def allreduce_factors(self, tensors: list[torch.Tensor]) -> FactorAllReduce:
        for t in tensors:
            self.reducer.add(t)
        return self.reducer  # waiting on it flushes and finishes everything queued

    def wait(self, handle: Handle) -> None:
        if handle is not None:
            handle.wait()

    def average(self, tensors: list[torch.Tensor]) -> None:
        # Few and small (a tied weight's per-use gradients): one blocking all-reduce each.
        for t in tensors:
            _wait(
                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group, async_op=True), "per-use gradient all-reduce"
            )
            t.div_(self.world_size)
        return None

    # -- work split
    def eigen_owner(self, layer_idx: int, which: str) -> int:
        work = self._plan().layers[layer_idx]
        if which == "A":
            return work.a_owner
        if which == "G":
            return work.g_owner
        raise ValueError(f"eigen_owner: which must be 'A' or 'G', got {which!r}")

    def is_grad_worker(self, layer_idx: int) -> bool:
        return self._plan().is_grad_worker(layer_idx, self.rank)

    # -- second-order data: owner -> the grad workers of the layer's block
    def broadcast_eigens(self, items: list[EigenItem]) -> _Broadcasts:
        plan, layout = self._plan(), self.layout
        handle = _Broadcasts("eigendecomposition broadcast")
        if layout.grad_workers == 1:
            return handle  # MEM-OPT: the owner is the only grad worker
        by_src: dict[tuple, list[torch.Tensor]] = {}
        for layer, which, tensors in sorted(items, key=lambda it: (it[0], it[1])):
            work = plan.layers[layer]
            if work.block != layout.block_of(self.rank):
                continue  # not this rank's business (no collective involves it)
            src = self.eigen_owner(layer, which)
            for t in tensors:
                by_src.setdefault((work.block, src, t.dtype, t.device), []).append(t)
        for (block, src, _, _), tensors in sorted(by_src.items(), key=lambda kv: str(kv[0])):
            sent = _broadcast_coalesced(handle, tensors, src, layout.block_groups[block], self.rank)
            if self.rank == src:
                self.eigen_elements += sent
        return handle

    # -- preconditioned gradients: a grad worker -> the rest of its column
    def broadcast_preconditioned(self, items: list[PrecondItem]) -> _Broadcasts:
        plan, layout = self._plan(), self.layout
        handle = _Broadcasts("preconditioned-gradient broadcast")
        if layout.n_blocks == 1:
            return handle  # COMM-OPT: every rank preconditioned every layer itself
        column = layout.column_of(self.rank)
        by_src: dict[tuple, list[torch.Tensor]] = {}
        for layer, precond in sorted(items, key=lambda it: it[0]):
            block = plan.layers[layer].block
            src = layout.blocks[block][column]
            by_src.setdefault((src, precond.dtype, precond.device), []).append(precond)
        for (src, _, _), tensors in sorted(by_src.items(), key=lambda kv: str(kv[0])):
            sent = _broadcast_coalesced(handle, tensors, src, layout.column_groups[column], self.rank)
            if self.rank == src:
                self.precond_elements += sent
        return handle

    @property
    def replicates_preconditioning(self) -> bool:
        return self.layout.n_blocks == 1

    def __repr__(self) -> str:
        return (
            f"DistributedComm({self.strategy}, world_size={self.world_size}, "
            f"grad_workers={self.layout.grad_workers}, colocate_factors={self.colocate_factors})"
        )
