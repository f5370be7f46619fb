"""The whole training step on N data-parallel ranks: SGD, and K-FAC on top of it.

Per rank and step, amortised over the update intervals (``Intervals``):

SGD: forward + backward (the workload's FLOPs at the profile's rate), the ring
all-reduce of the gradients (``Network``), no overlap of the two, and ``host_s``:
the part of a step nothing below explains (input pipeline), a property of the run
that ``kfac_ext.scaling.calibrate`` fits to a published step.

Host work the model sets (``HostCost``, off by default): every aten op of the step
costs the host ``per_op_s`` (Python, dispatcher, kernel launch): the workload's
counted forward and backward ops, and ``optimizer_ops_per_tensor`` kernels per
parameter tensor (6 for 2020's non-foreach SGD with momentum and weight decay:
zero_grad's zero_, the accumulation into .grad, the weight-decay add, the momentum
mul_ and add_, the update add_). Kernels run asynchronously, so the GPU waits on the
host only when issuing is the slower: forward + backward take max(FLOP time, ops x
per_op_s) (a lower bound: per-op maxima would add up to more). A synchronising
collective (a blocking all-reduce of a metric, the wait for the gradient all-reduce)
issued after other work waits ``sync_s`` more each: ``syncs`` a step, one more on N > 1
ranks for the gradients; one issued as soon as the previous one returns waits
``chained_sync_s`` (``chained_syncs`` a step: a cycle-driven runtime such as Horovod
picks it up only at its next cycle, a whole cycle later on average). On N > 1 ranks
the gradients' release adds ``grad_ops_per_tensor`` ops per parameter tensor at
``per_op_s`` after the wait (Horovod's averaging: one ``div_`` per gradient before
its handle is released), in series with the step, and each parameter tensor's
gradient hook costs ``grad_hook_s`` during backward (a data-parallel runtime's
per-gradient Python hook), added to the issue time. Where the runtime copies each
gradient into a fusion buffer and back with one call each way (``fusion_copy_s`` a
call; ``HostCost.fusion_copy_time``), the copies in precede the all-reduce and the
copies out overlap it.

K-FAC adds, for the slowest rank:
- factor computation (on factor-update steps): A and G of every layer as full
  GEMMs over the rank's batch;
- factor all-reduce (on factor-update steps): the factors, packed upper
  triangles (kfac_ext) or full matrices (``packed_factors=False``, as kfac-pytorch
  of 2020 sent them), in buckets of ``bucket_cap_mb``;
- eigendecompositions (on eigen-update steps): the slowest rank's share under the
  makespan assignment (``kfac_ext.scaling.assign``) of layers to grad-worker
  blocks and, inside a block, of each layer's pair (A, G) to one of its g ranks;
- eigenbasis broadcast (on eigen-update steps) to the block's g ranks;
- preconditioning (every step): the 4 basis-change GEMMs of each layer in the
  rank's block;
- preconditioned-gradient broadcast (every step, N/g > 1 blocks): every layer
  outside the rank's block arrives from its block.
A diagonal factor (``FactorLayer.a_diagonal``/``g_diagonal``: an Embedding's A, one
over ``max_factor_bytes``) is n numbers everywhere (covariance, all-reduce, memory,
second-order data) and has no eigendecomposition.
Memory per rank: the tensors autograd saves for backward (activations), parameters,
gradients and a momentum buffer, every factor (all ranks hold them after the
all-reduce), and (Q, d) of each layer in its block. Workspace and the allocator's
slack are not counted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

from kfac_ext.scaling.assign import assign
from kfac_ext.scaling.network import Network, broadcast_time, ring_allreduce_time
from kfac_ext.scaling.profiles import DeviceProfile
from kfac_ext.scaling.workload import Workload

__all__ = ["HostCost", "Intervals", "StepTime", "predict", "strategies", "update_fraction"]

Interval = int | Callable[[int], int]


def update_fraction(interval: Interval, steps: int) -> float:
    """Share of ``steps`` steps that update, for a constant interval or a schedule of the step,
    by the preconditioner's own rule (kfac_ext.schedules.IntervalTracker, kfac-pytorch's):
    step 0 updates, then every step ``s`` with ``s % interval(s) == 0``."""
    if not callable(interval):
        k = int(interval)
        if k < 1:
            raise ValueError(f"an update interval must be >= 1, got {interval!r}")
        return math.ceil(steps / k) / steps
    updates = 0
    for s in range(steps):
        k = int(interval(s))
        if k < 1:
            raise ValueError(f"the interval schedule gave {k} at step {s}; it must be >= 1")
        if s == 0 or s % k == 0:
            updates += 1
    return updates / steps


@dataclasses.dataclass(frozen=True)
class Intervals:
    """Factor and eigendecomposition update intervals, constant or a schedule of the step."""

    factor: Interval = 1
    inv: Interval = 1
    steps: int = 1000  # the horizon a schedule is averaged over
    label: str = ""  # how to print a schedule (default "schedule")

    def fractions(self) -> tuple[float, float]:
        if self.steps < 1:
            raise ValueError(f"Intervals.steps must be >= 1, got {self.steps!r}")
        return update_fraction(self.factor, self.steps), update_fraction(self.inv, self.steps)

    def describe(self) -> str:
        if self.label:
            return self.label
        show = lambda v: "schedule" if callable(v) else str(v)  # noqa: E731
        return f"{show(self.factor)}/{show(self.inv)}"


@dataclasses.dataclass(frozen=True)
class HostCost:
    """The host's time per step that the model's op count and the training loop set
    (module docstring); the default costs nothing."""

    per_op_s: float = 0.0  # host time per dispatched op: Python, dispatcher, kernel launch
    optimizer_ops_per_tensor: int = 6  # 2020's SGD, momentum, weight decay, non-foreach
    sync_s: float = 0.0  # wait of one synchronising collective issued after other work
    syncs: int = 0  # such collectives a step besides the gradients' (metrics)
    chained_sync_s: float = 0.0  # wait of one issued as soon as the previous one returned
    chained_syncs: int = 0  # such chained collectives a step, on top of ``syncs``
    grad_ops_per_tensor: int = 0  # ops per gradient tensor releasing the all-reduce (N > 1)
    grad_hook_s: float = 0.0  # host time per gradient hook fired in backward (N > 1)
    fusion_copy_s: float = 0.0  # host time per copy call into or out of a fusion buffer (N > 1)
    source: str = ""

    def __post_init__(self):
        for field in ("per_op_s", "sync_s", "chained_sync_s", "grad_hook_s", "fusion_copy_s"):
            v = getattr(self, field)
            if not 0 <= v < math.inf:
                raise ValueError(f"HostCost.{field} must be finite seconds >= 0, got {v!r}")
        counts = (self.optimizer_ops_per_tensor, self.syncs, self.chained_syncs, self.grad_ops_per_tensor)
        if min(counts) < 0:
            raise ValueError(f"HostCost counts must be >= 0, got {counts}")

    def ops(self, work: Workload) -> int:
        """Ops the host dispatches in one SGD step."""
        return work.forward_ops + work.backward_ops + self.optimizer_ops_per_tensor * work.param_tensors

    def launch_time(self, work: Workload) -> float:
        return self.ops(work) * self.per_op_s

    def sync_time(self, ranks: int) -> float:
        """Waits of the step's synchronising collectives: ``syncs`` after other work (one
        more for the gradients on N > 1 ranks), ``chained_syncs`` right after another."""
        return self.sync_s * (self.syncs + (1 if ranks > 1 else 0)) + self.chained_sync_s * self.chained_syncs

    def hook_time(self, work: Workload, ranks: int) -> float:
        """Gradient hooks fired during backward, one per parameter tensor (N > 1 only), on
        the thread that issues backward's ops, so in series with them."""
        return work.param_tensors * self.grad_hook_s if ranks > 1 else 0.0

    def fusion_copy_time(self, work: Workload, ranks: int, allreduce_s: float) -> float:
        """What copying every gradient into a fusion buffer and back, one call each way per
        parameter tensor at ``fusion_copy_s`` each (Horovod before v0.21), adds to the
        gradients' all-reduce of ``allreduce_s`` (N > 1 only): the copies in are issued
        before the all-reduce and the copies out behind it on the same stream, so the
        exchange takes t + max(allreduce_s, t) for t = tensors x ``fusion_copy_s`` (the
        all-reduce runs while the host issues the copies out) instead of allreduce_s."""
        if ranks == 1 or self.fusion_copy_s == 0:
            return 0.0
        t = work.param_tensors * self.fusion_copy_s
        return t + max(allreduce_s, t) - allreduce_s

    def grad_release_time(self, work: Workload, ranks: int) -> float:
        """Ops between the gradients' all-reduce and the optimizer (N > 1 only)."""
        return self.grad_ops_per_tensor * work.param_tensors * self.per_op_s if ranks > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class StepTime:
    """Seconds per step of the slowest rank and bytes each rank holds."""

    ranks: int
    batch: int
    strategy: str
    grad_workers: int
    intervals: str
    host: float
    forward_backward: float
    grad_allreduce: float
    factor_compute: float
    factor_comm: float
    eigen_compute: float
    eigen_comm: float
    precondition: float
    grad_comm: float
    memory: dict
    launch: float = 0.0  # host time issuing the SGD step's ops (HostCost)
    sync: float = 0.0  # waits of the step's synchronising collectives, gradients' release and copies (HostCost)

    @property
    def sgd(self) -> float:
        return self.host + max(self.forward_backward, self.launch) + self.sync + self.grad_allreduce

    @property
    def kfac_overhead(self) -> float:
        return (
            self.factor_compute
            + self.factor_comm
            + self.eigen_compute
            + self.eigen_comm
            + self.precondition
            + self.grad_comm
        )

    @property
    def kfac(self) -> float:
        return self.sgd + self.kfac_overhead

    @property
    def memory_total(self) -> float:
        return sum(self.memory.values())

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(sgd=self.sgd, kfac_overhead=self.kfac_overhead, kfac=self.kfac, memory_total=self.memory_total)
        return out


def strategies(ranks: int) -> dict[str, int]:
    """Grad workers per layer: COMM-OPT g = N, MEM-OPT g = 1, HYBRID-OPT the power of two
    nearest sqrt(N) (when it lies strictly between)."""
    out = {"COMM-OPT": ranks}
    g = 2 ** round(math.log2(math.sqrt(ranks)))
    if 1 < g < ranks and ranks % g == 0:
        out["HYBRID-OPT"] = g
    if ranks > 1:
        out["MEM-OPT"] = 1
    return out


def _strategy_name(g: int, ranks: int) -> str:
    return "COMM-OPT" if g == ranks else "MEM-OPT" if g == 1 else "HYBRID-OPT"


@functools.lru_cache(maxsize=256)  # the planner asks again for every pair of intervals
def _eigen_makespan(layer_cost: tuple[float, ...], n_blocks: int, g: int) -> tuple[tuple[int, ...], float]:
    """Layers to blocks, then each block's layers to its g ranks: (block of each layer,
    the slowest rank's summed cost)."""
    blocks = assign(layer_cost, n_blocks)
    worst = 0.0
    for b in sorted(set(blocks)):  # a block without layers has nothing to decompose
        mine = [c for c, owner in zip(layer_cost, blocks) if owner == b]
        owners = assign(mine, g)
        loads = [0.0] * g
        for c, w in zip(mine, owners):
            loads[w] += c
        worst = max([worst, *loads])
    return tuple(blocks), worst


def predict(
    work: Workload,
    ranks: int,
    profile: DeviceProfile,
    net: Network,
    *,
    batch: int,
    grad_workers: int | None = None,
    intervals: Intervals = Intervals(),
    bucket_cap_mb: float = 25.0,
    packed_factors: bool = True,
    eigen_allreduce: bool = False,
    host_s: float = 0.0,
    host_cost: HostCost = HostCost(),
    dtype_bytes: int = 4,
) -> StepTime:
    """Step time and memory of one rank out of ``ranks``; ``grad_workers`` g (default N:
    COMM-OPT) must divide N. ``packed_factors=False, eigen_allreduce=True`` is kfac-pytorch
    of 2020 (kfac-lw): full factors all-reduced, and every (Q, d) all-reduced (summed, each
    rank contributing the ones it computed) over all ranks instead of broadcast."""
    if ranks < 1 or batch < 1:
        raise ValueError(f"ranks and batch must be >= 1, got {ranks} and {batch}")
    g = ranks if grad_workers is None else grad_workers
    if not 1 <= g <= ranks or ranks % g:
        raise ValueError(f"grad_workers must divide ranks={ranks}, got {g}")
    if not 0 <= host_s < math.inf:
        raise ValueError(f"host_s must be finite seconds >= 0, got {host_s}")
    if not bucket_cap_mb > 0:
        raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
    f_factor, f_inv = intervals.fractions()
    eb = dtype_bytes
    n_blocks = ranks // g
    layers = work.layers

    fb = profile.compute_time(work.step_flops(batch))
    grad_ar = ring_allreduce_time(work.params * eb, ranks, net)

    factor_compute = f_factor * profile.compute_time(work.factor_flops(batch))
    elems = sum(lay.factor_elements(packed_factors) for lay in layers)
    cap = bucket_cap_mb * 1024 * 1024
    nbytes = elems * eb
    full, rest = divmod(nbytes, cap)
    factor_comm = f_factor * (full * ring_allreduce_time(cap, ranks, net) + ring_allreduce_time(rest, ranks, net))

    layer_eig = tuple(sum(profile.eigh_time(n) for n in lay.dense_dims()) for lay in layers)
    block_of, makespan = _eigen_makespan(layer_eig, n_blocks, g)
    eigen_compute = f_inv * makespan

    # Every block is alike up to its layers: report the busiest one. Blocks without
    # layers are all alike, so one of them stands for the rest (65536 ranks stay fast).
    owning = set(block_of)
    empty = next((b for b in range(n_blocks) if b not in owning), None)
    worst, eig_bytes_max = None, 0.0
    for b in sorted(owning) + ([] if empty is None else [empty]):
        mine = [lay for lay, owner in zip(layers, block_of) if owner == b]
        others = [lay for lay, owner in zip(layers, block_of) if owner != b]
        eig_bytes = sum(lay.eigen_elements() * eb for lay in mine)
        if eigen_allreduce:
            all_bytes = sum(lay.eigen_elements() * eb for lay in layers)
            ec = f_inv * ring_allreduce_time(all_bytes, ranks, net)
        else:
            ec = f_inv * (broadcast_time(eig_bytes, g, net) + 2 * len(mine) * net.alpha if g > 1 and mine else 0.0)
        pc = profile.compute_time(sum(lay.precondition_flops() for lay in mine))
        p_bytes = sum(lay.dim_a * lay.dim_g * eb for lay in others)
        gc = broadcast_time(p_bytes, n_blocks, net) + len(others) * net.alpha if n_blocks > 1 and others else 0.0
        eig_bytes_max = max(eig_bytes_max, eig_bytes)
        cand = (ec + pc + gc, ec, pc, gc)
        if worst is None or cand[0] > worst[0]:
            worst = cand
    _, eigen_comm, precondition, grad_comm = worst

    memory = {
        "activations": float(batch * work.activation_bytes),
        "params_grads_momentum": 3.0 * work.params * eb,
        "factors": float(sum(lay.factor_elements() * eb for lay in layers)),
        "eigenbases": float(eig_bytes_max),
    }
    return StepTime(
        ranks,
        batch,
        _strategy_name(g, ranks),
        g,
        intervals.describe(),
        host_s,
        fb,
        grad_ar,
        factor_compute,
        factor_comm,
        eigen_compute,
        eigen_comm,
        precondition,
        grad_comm,
        memory,
        host_cost.launch_time(work) + host_cost.hook_time(work, ranks),
        host_cost.sync_time(ranks)
        + host_cost.grad_release_time(work, ranks)
        + host_cost.fusion_copy_time(work, ranks, grad_ar),
    )
