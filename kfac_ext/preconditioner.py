"""KFACPreconditioner: drop-in K-FAC for an ordinary PyTorch training loop.

    preconditioner = KFACPreconditioner(model, factor_update_steps=10, inv_update_steps=100)
    ...
    loss.backward()
    preconditioner.step()     # .grad of every registered layer <- K-FAC preconditioned gradient
    optimizer.step()

The math is docs/design.md §2 and goes through :mod:`kfac_ext.ops`. Distribution
goes through a comm object (:mod:`kfac_ext.comm`): ``comm=None`` picks
:class:`~kfac_ext.distributed.DistributedComm` when torch.distributed is
initialised with more than one rank, else :class:`~kfac_ext.comm.LocalComm`.

Documented behaviours a user may rely on:

- Registration: every module a layer type of :mod:`kfac_ext.layers.registry` takes
  (``nn.Linear``, ``nn.Conv2d``, ``nn.Conv1d``, HF ``Conv1D``, ``nn.Embedding``,
  ``nn.MultiheadAttention``, and any registered with ``register_layer_type``) with a
  trainable weight (a frozen bias is left out of the factor), not matched by
  ``skip_layers``; a grouped conv becomes one block-diagonal K-FAC layer per channel
  group (``"name[group k]"``), an attention module one per projection
  (``"name[q]"`` … ``"name[out]"``); modules inside DDP/DataParallel keep their own
  names. A weight tied between layers is preconditioned per use and summed, under
  every distribution strategy (docs/design.md §2a).

- Capture: the hooks capture only on factor-update steps, only in training
  mode with grad enabled (``model.eval()`` or ``torch.no_grad()`` forwards are
  ignored). Micro-batches captured before one ``step()`` are averaged, which is
  the combined-batch factor when each micro-batch loss is divided by
  ``accumulation_steps`` (the usual gradient-accumulation loop).
- ``step()`` before any ``backward()`` (no registered layer has a ``.grad``)
  raises ``RuntimeError``. A layer with a gradient but no factors yet (its hooks
  never fired, e.g. a weight used functionally) is left unpreconditioned, with
  one warning.
- Data parallel: each rank's loss is a local mean, so its output gradients are
  ``world_size`` times the combined-batch ones; G is multiplied by
  ``1/world_size**2`` before the cross-rank average, so N ranks reproduce the
  single-process result on the combined batch.
- ``grad_scaler`` (``torch.amp.GradScaler``): ``.grad`` is assumed still scaled
  when ``step()`` runs (backward, preconditioner.step(), scaler.step(optimizer)).
  G is divided by scale² and the KL-clip sum by scale², so the result is the
  scaled version of the unscaled computation.
- Host synchronisations on a GPU, each where a decision needs a value on the
  host:
  - A factor-update step makes one sync for the finiteness check of all new
    factor batches, which decides whether to skip a NaN/Inf batch.
  - An eigendecomposition step makes one sync in ``batched_eigh``, which reads
    cuSOLVER's info codes and decides on a retry or an error; a float64 retry
    adds a second.
  - An inverse-update step of the inverse method makes one sync for the Cholesky checks
    of all its factors (a failed factor adds its own, and a float64 retry another).
  - With an enabled ``grad_scaler``, reading its scale makes one per step.
  - Otherwise a plain step makes none: the KL-clip scale stays on the device
    (``ops.precondition_grads_`` or ``precondition_grads_inverse_`` in one
    process and COMM-OPT; the per-layer path of HYBRID/MEM-OPT likewise).
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from enum import Enum
from typing import Any, NoReturn

import torch
from torch import nn

from kfac_ext import arguments as args
from kfac_ext import ops
from kfac_ext import schedules as sch
from kfac_ext.adaptive_damping import AdaptiveDamping
from kfac_ext.auto_step import AutoStep
from kfac_ext.background import BackgroundSolver, PendingSecondOrder
from kfac_ext.comm import Comm, EigenItem, LocalComm
from kfac_ext.eigen_refresh import SkipTest, check_eigen_refresh
from kfac_ext.enums import AllreduceMethod, AssignmentStrategy, ComputeMethod, DistributedStrategy  # noqa: F401  (kfac-pytorch's kfac.preconditioner has them too)
from kfac_ext.factor_init import check_factor_init, check_g_scale, update_running
from kfac_ext.kfac_pytorch_names import KfacPytorchNames, refuse_internal
from kfac_ext.layers.base import KFACLayer, factor_size_limit, is_computed_weight
from kfac_ext.layers.registry import layer_type_for
from kfac_ext.layers.tied import mark_tied
from kfac_ext.methods import method as make_method
from kfac_ext.precision import check_precondition_dtype
from kfac_ext.preconditioner_state import build_state, check_state
from kfac_ext.second_order import SecondOrder

logger = logging.getLogger(__name__)


def __getattr__(name: str) -> NoReturn:
    raise refuse_internal(f"module {__name__!r}", name)


def _grad(p: torch.Tensor) -> torch.Tensor:
    """``p.grad`` of a parameter being preconditioned (it has one)."""
    assert p.grad is not None
    return p.grad


def _use_grad(layer: KFACLayer) -> torch.Tensor:
    """A tied layer's Γ_u (one without was left out of the step)."""
    assert layer.use_grad is not None
    return layer.use_grad


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _auto_comm(grad_worker_fraction: float, **options: Any) -> Comm:
    if _world_size() > 1:
        from kfac_ext.distributed import DistributedComm

        return DistributedComm(grad_worker_fraction=grad_worker_fraction, **options)
    return LocalComm()


def _all_finite_pairs(tensors: list[torch.Tensor]) -> list[bool]:
    """For consecutive pairs (A, G): whether both are finite, with one sync per device.

    One sum per factor in its own dtype (a NaN/Inf entry makes it NaN/Inf), stacked,
    one host read; a sum that is not finite is redone in float64, which finite
    float32 entries cannot overflow, so only a non-finite entry fails. Each factor
    is read once: the former ``cat`` of every factor into one vector and its
    float64 copy cost ~10x that (0.3 s a factor step on the 4-layer transformer of
    benchmarks/table_transformer_step.py under load, more than its covariance GEMMs).
    """
    if not tensors:
        return []
    flags = [True] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for k, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(k)
    for ks in by_device.values():
        finite = torch.isfinite(torch.stack([tensors[k].sum() for k in ks])).tolist()
        for k, ok in zip(ks, finite):
            flags[k] = ok or bool(torch.isfinite(tensors[k].sum(dtype=torch.float64)))
    return [flags[k] and flags[k + 1] for k in range(0, len(flags), 2)]


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / DataParallel: register the inner modules under their own names, so a
    # checkpoint of a wrapped model loads into an unwrapped one and back.
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


class KFACPreconditioner(KfacPytorchNames):
    """K-FAC preconditioning of the layers of a model (docs/design.md §2a for the types).

    Every hyperparameter may be a number or a callable ``f(step)``.
    factor_update_steps / inv_update_steps: interval of factor / eigendecomposition
    updates (a step s updates when s % interval(s) == 0, kfac-pytorch's rule).
    damping: λ; eigen method: added to the eigenvalue outer product; inverse
    method: added to each factor. factor_decay: running-average weight β in [0, 1).
    kl_clip: κ of the KL clipping, None disables it. lr: the optimizer's learning
    rate (only used by KL clipping). accumulation_steps: micro-batches per step
    (their factors are averaged; a warning if a different number was captured).
    compute_method: 'eigen' or 'inverse'. skip_layers: regexes matched (search,
    case-insensitive) against module names and class names. factor_dtype: dtype
    of the factors (None: the weight's, float32 for half types). inv_dtype: dtype
    of eigendecompositions / inverses and of the preconditioning math (float32
    or float64: the kernels take no half types).
    grad_scaler: a GradScaler whose scale divides G, or a callable returning
    that scale. comm: distribution seam (None = auto).
    grad_worker_fraction (in (0, 1]), colocate_factors, allreduce_bucket_cap_mb
    (0: one all-reduce per factor), assignment_strategy ('compute': balance the
    ~n³ eigendecomposition time, 'memory': the ~n² memory): passed to the
    distributed comm (kfac_ext.distributed.DistributedComm).

    kfac-pytorch's whole constructor is accepted (its enums are read by name,
    see :mod:`kfac_ext.arguments`): compute_eigenvalue_outer_product (the
    division by d_G d_Aᵀ + λ is fused into the preconditioning kernel either way;
    True, as kfac-pytorch, divides with the λ of the last eigendecomposition step,
    False with the current step's: they differ only while a damping that changes
    waits for the next eigendecomposition), symmetry_aware (either value: only
    upper triangles of the exactly symmetric factors are ever sent),
    update_factors_in_hook (True: with more than one rank a layer's factor
    all-reduce starts from its backward hook; False: all of them start in
    ``step()``; same results), defaults (kept as
    ``self.defaults``), loglevel (the level at which the registered layers and
    the comm are logged, on the ``kfac_ext.preconditioner`` logger).
    inv_lag_steps: 0 decomposes the factors inside ``step()`` when due; k >= 1
    installs the decomposition of a snapshot of them k steps later and
    preconditions with the old basis meanwhile; on a CPU model the solves run on
    a background thread in between (:mod:`kfac_ext.background`), on a GPU they
    run when the update lands. The first decomposition of a layer is done at once.
    eigen_refresh: None (exact eigh at every update) or a
    :class:`kfac_ext.eigen_refresh.SkipTest` that keeps a factor's basis while it
    still diagonalises the factor within a tolerance. precondition_dtype:
    torch.float32, 'tf32' or torch.bfloat16 for the preconditioning GEMMs of the
    eigen method in one process / COMM-OPT (:mod:`kfac_ext.precision`).
    factor_init: 'identity' (kfac-pytorch) or 'first_batch' (the running averages
    start from the first captured factors), g_scale: multiplies every captured G
    (batch_size**2: Martens & Grosse's per-example scale); :mod:`kfac_ext.factor_init`.
    damping may be a :class:`kfac_ext.adaptive_damping.AdaptiveDamping`
    (Levenberg–Marquardt λ); ``step`` then needs ``closure``.
    auto_step: None (kfac-pytorch: the optimizer's lr scales the step), or a
    :class:`kfac_ext.auto_step.AutoStep` that chooses step length and momentum
    from the exact quadratic model and writes the whole step into ``.grad`` (apply
    it with ``SGD(lr=1.0)``, no momentum or weight decay); it needs
    ``kl_clip=None``, a fixed-number or scheduled damping, one process, and
    ``step(closure=...)`` returning (inputs, loss_of_outputs).
    max_factor_bytes: a factor whose dense size exceeds it is kept diagonal, whatever
    the layer type (named in a warning; None: no limit); ``memory()`` reports bytes per
    layer. kfac_approx: 'expand' or 'reduce' for layers applied to sequences and for
    Conv2d's output positions (docs/design.md §2a, which
    also lists the layer types: Linear, Conv2d, HF Conv1D, Embedding,
    MultiheadAttention, and ``kfac_ext.register_layer_type`` for others).
    relative_damping: False (kfac-pytorch: λ is added to the factors as they are) or
    True: each factor is divided by its mean eigenvalue (trace / n) before it is
    decomposed or inverted, so λ is relative to each layer's own curvature scale
    (layers whose factors are orders of magnitude apart, as in a CNN whose loss is a
    mean, then all see the same damping); not with an AdaptiveDamping.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        factor_update_steps: sch.NumberOrSchedule = 1,
        inv_update_steps: sch.NumberOrSchedule = 1,
        damping: sch.NumberOrSchedule = 0.001,
        factor_decay: sch.NumberOrSchedule = 0.95,
        kl_clip: sch.NumberOrSchedule | None = 0.001,
        lr: sch.NumberOrSchedule = 0.1,
        accumulation_steps: int = 1,
        allreduce_bucket_cap_mb: float = 25.0,
        assignment_strategy: str | Enum = "compute",
        colocate_factors: bool = True,
        compute_method: str | Enum = "eigen",
        compute_eigenvalue_outer_product: bool = True,
        grad_worker_fraction: float | Enum = 1.0,
        symmetry_aware: bool = False,
        grad_scaler: object = None,
        factor_dtype: torch.dtype | None = None,
        inv_dtype: torch.dtype = torch.float32,
        skip_layers: None | str | Iterable[str] = (),
        update_factors_in_hook: bool = True,
        defaults: dict | None = None,
        loglevel: int | str = logging.DEBUG,
        comm: Comm | None = None,
        inv_lag_steps: int = 0,
        eigen_refresh: SkipTest | None = None,
        precondition_dtype: torch.dtype | str = torch.float32,
        factor_init: str = "identity",
        g_scale: float = 1.0,
        auto_step: AutoStep | None = None,
        max_factor_bytes: int | None = 2**30,
        kfac_approx: str = "expand",
        relative_damping: bool = False,
    ):
        # Every argument is checked before a hook touches the model: a refused
        # configuration leaves the model exactly as it was.
        self.factor_update_steps = sch.Hyperparameter("factor_update_steps", factor_update_steps, sch.positive_int)
        self.inv_update_steps = sch.Hyperparameter("inv_update_steps", inv_update_steps, sch.positive_int)
        self.damping = sch.Hyperparameter("damping", damping, sch.positive)
        self.factor_decay = sch.Hyperparameter("factor_decay", factor_decay, sch.decay)
        self.kl_clip = sch.Hyperparameter("kl_clip", kl_clip, sch.positive_or_none)
        self.lr = sch.Hyperparameter("lr", lr, sch.non_negative)
        self.accumulation_steps = args.accumulation_steps(accumulation_steps)
        self.compute_method = compute_method = args.compute_method(compute_method)
        self._method = make_method(compute_method)
        self.factor_dtype = args.kernel_dtype("factor_dtype", factor_dtype, allow_none=True)
        self.inv_dtype = args.kernel_dtype("inv_dtype", inv_dtype, allow_none=False)
        self.grad_scaler = args.grad_scaler(grad_scaler)
        self.skip_layers = args.skip_patterns(skip_layers)
        self.assignment_strategy = args.assignment_strategy(assignment_strategy)
        world_size = comm.world_size if comm is not None else _world_size()
        self.grad_worker_fraction = args.grad_worker_fraction(grad_worker_fraction, world_size)
        self.allreduce_bucket_cap_mb = args.bucket_cap_mb(allreduce_bucket_cap_mb)
        self.colocate_factors = args.flag("colocate_factors", colocate_factors)
        self.compute_eigenvalue_outer_product = args.flag(
            "compute_eigenvalue_outer_product", compute_eigenvalue_outer_product
        )
        self.symmetry_aware = args.flag("symmetry_aware", symmetry_aware)
        self.update_factors_in_hook = args.flag("update_factors_in_hook", update_factors_in_hook)
        self.defaults = args.defaults(defaults)
        self.loglevel = args.loglevel(loglevel)
        self.max_factor_bytes = args.max_factor_bytes(max_factor_bytes)
        self.kfac_approx = args.kfac_approx(kfac_approx)
        self.inv_lag_steps = args.inv_lag_steps(inv_lag_steps)
        self.eigen_refresh = check_eigen_refresh(eigen_refresh, compute_method, inv_lag_steps)
        self.precondition_dtype = check_precondition_dtype(precondition_dtype)
        if self.precondition_dtype is not torch.float32 and compute_method != "eigen":
            raise ValueError(
                f"precondition_dtype applies to compute_method='eigen', got compute_method={compute_method!r}"
            )
        self.factor_init = check_factor_init(factor_init)
        self.g_scale = check_g_scale(g_scale)
        self._adaptive = damping if isinstance(damping, AdaptiveDamping) else None
        self.relative_damping = args.flag("relative_damping", relative_damping)
        if self.relative_damping and self._adaptive is not None:
            raise ValueError(
                "relative_damping=True does not combine with an AdaptiveDamping: its "
                "Levenberg-Marquardt rule tunes λ against the factors as they are"
            )
        self._auto = self._check_auto_step(auto_step, kl_clip, grad_scaler, comm)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self._model = _unwrap(model)

        self.layers: list[KFACLayer] = self._register(self._model)
        try:
            self.comm = comm if comm is not None else self._default_comm()
            self._check_layers_against_comm()
            self.comm.setup([l.name for l in self.layers], [(l.a_dim, l.g_dim) for l in self.layers])
        except BaseException:
            self.remove_hooks()
            raise
        for layer in self.layers:
            logger.log(self.loglevel, "KFACPreconditioner: registered %r", layer)
        logger.log(self.loglevel, "KFACPreconditioner: comm %r", self.comm)
        self._init_step_state()

    def _default_comm(self) -> Comm:
        return _auto_comm(
            self.grad_worker_fraction,
            colocate_factors=self.colocate_factors,
            allreduce_bucket_cap_mb=self.allreduce_bucket_cap_mb,
            assignment_cost=self.assignment_strategy,
        )

    def _check_layers_against_comm(self) -> None:
        """Refuse (or warn about) options the registered layers and the comm cannot honour.
        (Tied weights are preconditioned per use under every comm: docs/design.md §2a.)"""
        if self.precondition_dtype is torch.float32:
            return
        if not self.comm.replicates_preconditioning:
            raise ValueError(
                "precondition_dtype other than torch.float32 needs a comm that "
                "preconditions every layer on every rank (one process, COMM-OPT)"
            )
        if any(l.a_diagonal or l.g_diagonal or l.tied for l in self.layers):
            warnings.warn(
                "KFACPreconditioner: precondition_dtype applies to the fused path; this "
                "model has diagonal factors or tied weights, whose per-layer path runs "
                f"in inv_dtype={self.inv_dtype}",
                stacklevel=3,
            )

    def _init_step_state(self) -> None:
        """Counters, schedules and per-layer wiring of a preconditioner that has taken no step."""
        # CPU models only for now: on a GPU the lagged solve runs on this thread when
        # it lands (same results; a side thread would need its own CUDA stream).
        self._background = all(l.device.type == "cpu" for l in self.layers)
        self._solver = BackgroundSolver()
        self._pending: PendingSecondOrder | None = None
        # Layers that went through an inverse update, on every rank alike (which
        # ranks hold a layer's second-order data differs under HYBRID/MEM-OPT,
        # and whether an update is lagged must not: it decides the collectives).
        self._has_basis: set = set()
        self.steps = 0
        self.skipped_factor_updates = 0
        self.failed_inverse_updates = 0
        self._factor_tracker = sch.IntervalTracker(self.factor_update_steps)
        self._inv_tracker = sch.IntervalTracker(self.inv_update_steps)
        # λ of the last eigendecomposition step (see _precondition_damping)
        self._basis_damping: float | None = None
        # second-order data per layer index and factor: {"A": EigenData | InverseData, "G": ...}
        self._second: dict[int, dict[str, SecondOrder]] = {}
        self._warned: set = set()
        # Layers whose batch factors were handed to the all-reduce from their
        # backward hook (see _start_factor_reduce), with those factors.
        self._reducing: dict[KFACLayer, tuple] = {}
        for layer in self.layers:
            layer.kfac_approx = self.kfac_approx
            if self.comm.world_size > 1 and self.update_factors_in_hook:
                layer.on_gradient_captured = self._start_factor_reduce
            # An empty micro-batch adds nothing and is not counted; with more than one
            # rank it adds zeros instead, so every rank reduces the same factors.
            layer.skip_empty = self.comm.world_size == 1
        # (weakref to each preconditioned .grad, its version) after the last step():
        # an unchanged set means no backward since, and step() must not run twice.
        self._grad_marks: list[tuple] = []
        self._set_capture()

    # ------------------------------------------------------- registration ----
    def _check_auto_step(self, auto_step: object, kl_clip: Any, grad_scaler: Any, comm: Comm | None) -> AutoStep | None:
        if auto_step is None:
            return None
        if not isinstance(auto_step, AutoStep):
            raise TypeError(f"auto_step must be a kfac_ext.auto_step.AutoStep or None; got {type(auto_step).__name__}")
        if kl_clip is not None:
            raise ValueError(
                "auto_step chooses the step length itself; pass kl_clip=None "
                "(the KL clip would rescale the K-FAC layers against the others)"
            )
        if self._adaptive is not None:
            raise ValueError(
                "auto_step adapts the quadratic model's damping itself; give the "
                "preconditioner a fixed damping, not an AdaptiveDamping"
            )
        if grad_scaler is not None:
            raise ValueError("auto_step does not take a grad_scaler (it reads unscaled gradients)")
        if (comm.world_size if comm is not None else _world_size()) > 1:
            raise ValueError("auto_step runs in one process only")
        return auto_step

    def _skipped_by_user(self, name: str, module: nn.Module) -> bool:
        return any(p.search(name) or p.search(type(module).__name__) for p in self.skip_layers)

    def _candidates(self, model: nn.Module) -> dict[int, tuple]:
        """id -> (name, module, layer type) of every module registration takes: one a
        layer type matches (kfac_ext.layers.registry), not skipped, not inside a module
        whose type claims its children (an attention module's out_proj), and not one
        whose weight is computed (weight_norm, spectral_norm, any parametrization: its
        gradient is not a parameter's, so the layer is left out with a warning)."""
        out: dict[int, tuple] = {}
        claimed: list[str] = []
        computed: list[str] = []
        for name, module in model.named_modules():
            if any(name.startswith(prefix + ".") or (prefix == "" and name) for prefix in claimed):
                continue  # inside a module whose layer type took its children
            if is_computed_weight(module):
                if layer_type_for(module) is not None and not self._skipped_by_user(name, module):
                    computed.append(name)
                continue
            layer_type = layer_type_for(module)
            if layer_type is None or self._skipped_by_user(name, module):
                continue
            if layer_type.claims_children:
                claimed.append(name)
            out[id(module)] = (name, module, layer_type)
        if computed:
            warnings.warn(
                f"KFACPreconditioner: layers {computed} have a computed weight "
                "(weight_norm, spectral_norm or another parametrization); they are not "
                "registered and their parameters keep their plain gradients",
                stacklevel=3,
            )
        return out

    def _register(self, model: nn.Module) -> list[KFACLayer]:
        candidates = self._candidates(model)
        self._known_modules = set(candidates)
        layers: list[KFACLayer] = []
        try:
            with factor_size_limit(self.max_factor_bytes):
                for name, module, layer_type in candidates.values():
                    layers += layer_type.factory(name, module, self.factor_dtype)
            dropped = mark_tied(layers, lambda msg, names: logger.log(self.loglevel, msg, names))
        except Exception:
            for layer in layers:  # a layer type refused its module: leave the model as it was
                layer.remove_hooks()
            raise
        layers = [l for l in layers if l not in dropped]
        big = [f"{l.name!r} ({'/'.join(l.over_limit)})" for l in layers if l.over_limit]
        if big:
            warnings.warn(
                f"KFACPreconditioner: factors over max_factor_bytes="
                f"{self.max_factor_bytes} are kept diagonal: {', '.join(big)}",
                stacklevel=3,
            )
        if not layers:
            warnings.warn(
                "KFACPreconditioner: no layer registered (it preconditions the layer types "
                "of kfac_ext.layers.registry with a trainable weight, not matched by "
                "skip_layers); "
                "step() will leave every gradient as is",
                stacklevel=3,
            )
        return layers

    def _check_model(self) -> None:
        """Warn once per module about supported modules put into the model after
        construction (not preconditioned) and registered ones no longer in it."""
        current = self._candidates(self._model)
        for key, (name, _, _) in current.items():
            if key not in self._known_modules:
                self._warn_once(
                    ("added", key),
                    f"KFACPreconditioner: module {name!r} was added "
                    "to the model after the preconditioner was built; it is not "
                    "preconditioned (build the preconditioner once the model is final)",
                )
        present = {id(m) for m in self._model.modules()}
        for layer in self.layers:
            if id(layer.module) not in present:
                self._warn_once(
                    ("gone", layer.name),
                    f"KFACPreconditioner: layer {layer.name!r} "
                    "is no longer part of the model (replaced after the preconditioner "
                    "was built?); it is not preconditioned",
                )

    def _raise_no_grad(self) -> None:
        present = {id(m) for m in self._model.modules()}
        if not any(id(l.module) in present for l in self.layers):
            raise RuntimeError(
                "KFACPreconditioner.step(): none of the registered layers is part of "
                "the model any more (were its modules replaced after the "
                "preconditioner was built?); build the preconditioner once the "
                "model is final"
            )
        lost = [l.name for l in self.layers if is_computed_weight(l.module) or not l.module.weight.requires_grad]
        if lost:
            raise RuntimeError(
                f"KFACPreconditioner.step(): no registered layer has a gradient to "
                f"precondition; the weights of {lost} were frozen or parametrized "
                "after the preconditioner was built"
            )
        raise RuntimeError("KFACPreconditioner.step() called before backward(): no registered layer has a gradient")

    def _follow_layer_changes(self) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Follow a bias frozen after registration: its layer continues as weight-only
        K-FAC (the factor's bias row/column sliced off, the basis recomputed this step),
        so neither is the weight left unpreconditioned nor a stale bias .grad moved. A
        bias unfrozen after registration keeps its plain gradient; a weight frozen or
        parametrized after it is not preconditioned (each warned once). Returns each
        layer's current (weight, bias), which step() hands on to ``has_grad``."""
        current = [layer.current_params() for layer in self.layers]
        for i, (layer, (weight, bias)) in enumerate(zip(self.layers, current)):
            if not isinstance(weight, nn.Parameter) or not weight.requires_grad:
                self._warn_once(
                    ("weight lost", i),
                    f"KFACPreconditioner: the weight of layer "
                    f"{layer.name!r} was frozen or parametrized after the "
                    "preconditioner was built; it is not preconditioned",
                )
            elif layer.has_bias and (bias is None or not bias.requires_grad):
                # a bias set to None after registration is one frozen for good
                if self.comm.world_size > 1:  # the comm's buffers have the registered sizes
                    raise RuntimeError(
                        f"KFACPreconditioner: the bias of layer {layer.name!r} was "
                        "frozen after the preconditioner was built; with more than "
                        "one process freeze it before building it"
                    )
                if self._pending is not None:  # a lagged update of the old size lands first
                    pending, self._pending = self._pending, None
                    self._install(pending.todo, self._finish(pending))
                layer.drop_bias()
                self._second.pop(i, None)
                self._has_basis.discard(i)
                self._warn_once(
                    ("bias frozen", i),
                    f"KFACPreconditioner: the bias of layer "
                    f"{layer.name!r} was frozen after the preconditioner was built; "
                    "the layer continues as weight-only K-FAC",
                )
            elif not layer.has_bias and bias is not None and bias.requires_grad and bias.grad is not None:
                self._warn_once(
                    ("bias unfrozen", i),
                    f"KFACPreconditioner: the bias of layer "
                    f"{layer.name!r} was frozen when the preconditioner was built and "
                    "is trainable now; it keeps its plain gradient",
                )
        return current

    def _warn_once(self, key: Hashable, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    # -------------------------------------------------------------- step ----
    def _set_capture(self) -> None:
        self._capturing = self._factor_tracker.is_due(self.steps)
        for layer in self.layers:
            layer.capture = self._capturing

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:
        """Replace ``.grad`` of every registered layer by its preconditioned gradient.

        ``closure``: returns the current batch's loss (adaptive damping), or
        (inputs, loss_of_outputs) of it (auto_step)."""
        step = self.steps
        current = self._follow_layer_changes()
        with_grad = [i for i, (l, params) in enumerate(zip(self.layers, current)) if l.has_grad(params)]
        if self.layers and not with_grad:
            self._raise_no_grad()
        if with_grad and self._grads_unchanged(with_grad):
            warnings.warn(
                "KFACPreconditioner.step() called again with no backward() since the "
                "last call: the gradients are preconditioned already; this call does "
                "nothing",
                stacklevel=2,
            )
            return
        if closure is not None and self._adaptive is None and self._auto is None:
            self._warn_once(
                "closure",
                "KFACPreconditioner.step(closure=...): the closure is "
                "not used (it serves an AdaptiveDamping damping or auto_step; this "
                "preconditioner has neither)",
            )
        if self._adaptive is not None:  # reads the raw gradients: before any change
            self._adaptive.observe(self.layers, step, closure)
        if self._auto is not None:  # adds weight decay to every gradient, keeps g
            self._auto.before(self._model, closure)
            try:
                self._precondition_step(step, with_grad)
                for layer in self.layers:  # its forwards are not training batches
                    layer.capture = False
                self._auto.after(self._model)
            except BaseException:  # the gradients go back as they came (no double retry)
                self._auto.restore(self._model)
                self._set_capture()
                raise
        else:
            self._precondition_step(step, with_grad)
        self._grad_marks = self._mark_grads(with_grad)
        for layer in self.layers:
            layer.use_grad = None  # a tied weight's per-use gradients were used up
        self.steps += 1
        self._set_capture()

    def _precondition_step(self, step: int, with_grad: Sequence[int]) -> None:
        if self._capturing:
            self._check_model()
            self._update_factors(step)
        self._update_second_order(step)
        self._precondition(step, with_grad)

    def _param_grads(self, i: int) -> Iterator[torch.Tensor]:
        """The gradients of layer i (one in with_grad: has_grad() saw them)."""
        for p in self.layers[i].params():
            assert p.grad is not None
            yield p.grad

    def _mark_grads(self, with_grad: Sequence[int]) -> list[tuple]:
        return [(i, weakref.ref(g), g._version) for i in with_grad for g in self._param_grads(i)]

    def _grads_unchanged(self, with_grad: Sequence[int]) -> bool:
        """Whether every gradient is the very tensor, at the very version (in-place
        writes bump it; a backward writes or replaces every one it reaches), that the
        last step() left."""
        marks = iter(self._grad_marks)
        for i in with_grad:  # after a backward this stops at the first gradient
            for g in self._param_grads(i):
                j, ref, version = next(marks, (None, None, None))
                if j != i or ref() is not g or g._version != version:
                    return False
        return next(marks, None) is None

    def _g_scale(self) -> float:
        scale = self.g_scale / float(self.comm.world_size) ** 2
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            scale /= float(self.grad_scaler.get_scale()) ** 2
        return scale

    def _start_factor_reduce(self, layer: KFACLayer) -> None:
        """Overlap communication with backward: once a layer has captured every
        micro-batch of this step, its (scaled) batch factors go to the all-reduce
        at once, while backward still runs for the layers below it. Every rank
        runs the same backward, so every rank starts the same reductions in the
        same order. Layers that do not complete here (e.g. a module used twice per
        forward) are reduced in step() as before."""
        if (
            layer in self._reducing
            or layer.a_count != self.accumulation_steps
            or layer.g_count != self.accumulation_steps
        ):
            return
        a, g = layer.batch_factors()
        scale = self._g_scale()
        if scale != 1.0:
            g.mul_(scale)
        self.comm.allreduce_factors([a, g])
        self._reducing[layer] = (a, g)

    def _update_factors(self, step: int) -> None:
        reducing, self._reducing = self._reducing, {}
        ready, empty = [], []
        for layer in self.layers:
            if layer in reducing:
                ready.append(layer)
            elif layer.has_batch():
                ready.append(layer)
                if layer.a_count != self.accumulation_steps or layer.g_count != self.accumulation_steps:
                    self._warn_once(
                        ("accum", layer.name),
                        f"KFACPreconditioner: layer {layer.name!r} captured "
                        f"{layer.a_count} forward / {layer.g_count} backward passes "
                        f"before step(), accumulation_steps={self.accumulation_steps}; "
                        "the captured passes are averaged",
                    )
            elif layer.empty_batches:
                empty.append(layer.name)
                layer.clear_batch()
            elif layer.ever_fired:
                layer.clear_batch()  # e.g. forward seen but output unused: nothing to pair
        if empty:
            self.skipped_factor_updates += len(empty)
            warnings.warn(
                f"KFACPreconditioner: only empty batches (0 rows) reached layers {empty} "
                f"at step {step}; their factor update is skipped (skipped so far: "
                f"{self.skipped_factor_updates})"
            )
        if not ready:
            return
        g_scale = self._g_scale()
        batches, late = [], []
        for layer in ready:
            if layer in reducing:
                a, g = reducing[layer]
            else:
                a, g = layer.batch_factors()
                if g_scale != 1.0:
                    g.mul_(g_scale)
                late += [a, g]
            batches += [a, g]
        self.comm.wait(self.comm.allreduce_factors(late))
        decay = self.factor_decay(step)
        # One float64 reduction per factor and one host sync for all: a NaN/Inf entry
        # makes the sum NaN/Inf.
        finite = _all_finite_pairs(batches)
        for k, layer in enumerate(ready):
            a, g = batches[2 * k], batches[2 * k + 1]
            if finite[k]:
                update_running(layer, a, g, decay, self.factor_init)
            else:
                self.skipped_factor_updates += 1
                scaled = (
                    f" (G is multiplied by g_scale={self.g_scale:g}: too large for {layer.factor_dtype}?)"
                    if self.g_scale != 1.0
                    else ""
                )
                warnings.warn(
                    f"KFACPreconditioner: non-finite activations or gradients in layer "
                    f"{layer.name!r} at step {step}{scaled}; its factor update is "
                    f"skipped (skipped so far: {self.skipped_factor_updates})"
                )
            layer.clear_batch()
        self._factor_tracker.mark(step)

    def _update_second_order(self, step: int) -> None:
        due = self._inv_tracker.is_due(step)
        pending = self._pending
        # A lagged update lands at its step, or earlier when the next one is due
        # (an interval shorter than the lag): never two in flight.
        if pending is not None and (step >= pending.apply_step or due):
            self._pending = None
            self._install(pending.todo, self._finish(pending))
            self._basis_damping = pending.damping
        todo = [i for i, l in enumerate(self.layers) if l.factor_updates > 0 and (due or i not in self._second)]
        if not todo:
            return
        rank = self.comm.rank
        owned = [(i, w) for i in todo for w in ("A", "G") if self.comm.eigen_owner(i, w) == rank]
        factors = [self._factor(i, w) for i, w in owned]
        damping = self.damping(step)
        # Only a due update is lagged: a layer's first basis is needed now, and a rank
        # that holds no data for a layer lists it in `todo` on every step.
        if (
            self.inv_lag_steps
            and due
            and self._inv_tracker.last is not None
            and all(i in self._has_basis for i in todo)
        ):
            # Snapshot: the running factors may change before the thread reads them.
            factors = [f.clone() for f in factors]
            self._pending = PendingSecondOrder(step, step + self.inv_lag_steps, todo, owned, factors, damping)
            if self._background:
                self._pending.future = self._solver.submit(self._solve, factors, damping)
        else:
            self._install(
                todo,
                self._compute_second_order(
                    owned,
                    factors,
                    damping,
                    step,
                    lambda: (
                        self._solve(factors, damping)
                        if self.eigen_refresh is None
                        else self.eigen_refresh.solve(
                            factors,
                            [
                                self._second.get(i, {}).get(w) if f.dim() == 2 else None
                                for (i, w), f in zip(owned, factors)
                            ],
                            lambda fs: self._solve(fs, damping),
                        )
                    ),
                ),
            )
            if due or self._basis_damping is None:  # not for one late layer's first basis
                self._basis_damping = damping
        if due:
            self._inv_tracker.mark(step)

    def _finish(self, pending: PendingSecondOrder) -> dict[tuple, SecondOrder]:
        """The result of a lagged update (waiting for the thread if needed)."""
        job = (
            pending.future.result
            if pending.future is not None
            else (lambda: self._solve(pending.factors, pending.damping))
        )
        return self._compute_second_order(pending.owned, pending.factors, pending.damping, pending.step, job)

    def _install(self, todo: list[int], computed: dict[tuple, SecondOrder]) -> None:
        """Store this rank's new second-order data and exchange it (every rank, same order)."""
        comm, rank = self.comm, self.comm.rank
        self._has_basis.update(todo)
        items: list[EigenItem] = []
        for i in todo:
            if not (comm.is_grad_worker(i) or any(comm.eigen_owner(i, w) == rank for w in "AG")):
                continue
            slot = self._second.setdefault(i, {})
            for w in ("A", "G"):
                if (i, w) in computed:
                    slot[w] = computed[(i, w)]
                elif w not in slot:
                    slot[w] = self._empty_second_order(self.layers[i], w)
                items.append((i, w, slot[w]))
        comm.wait(comm.broadcast_eigens(items))

    @staticmethod
    def _shape(layer: KFACLayer, which: str) -> tuple[int, bool]:
        return (layer.a_dim, layer.a_diagonal) if which == "A" else (layer.g_dim, layer.g_diagonal)

    def _empty_second_order(self, layer: KFACLayer, which: str) -> SecondOrder:
        return self._method.empty(*self._shape(layer, which), self.inv_dtype, layer.device)

    def _identity_second_order(self, layer: KFACLayer, which: str, damping: float) -> SecondOrder:
        """Second-order data of an identity factor (fallback when the first one fails)."""
        return self._method.identity(*self._shape(layer, which), self.inv_dtype, layer.device, damping)

    def _factor(self, i: int, which: str) -> torch.Tensor:
        """The factor to decompose or invert, in inv_dtype (a new tensor when it is
        rescaled: the running average itself is never changed)."""
        layer = self.layers[i]
        f = (layer.A if which == "A" else layer.G).to(self.inv_dtype)
        if self.relative_damping:  # mean eigenvalue 1: trace / n, the mean of the diagonal
            mean = (f if f.dim() == 1 else f.diagonal()).mean()
            f = f / mean.clamp_min(torch.finfo(f.dtype).tiny)
        return f

    def _solve(self, factors: list[torch.Tensor], damping: float) -> list[SecondOrder]:
        """Second-order data of each factor. Reads only its arguments, so it may run on
        the background thread."""
        return self._method.solve(factors, damping)

    def _compute_second_order(
        self,
        owned: list[tuple],
        factors: list[torch.Tensor],
        damping: float,
        step: int,
        batch: Callable[[], Sequence[Sequence[torch.Tensor]]],
    ) -> dict[tuple, SecondOrder]:
        """``batch()`` (all owned factors at once), or when it fails one factor at a time;
        a factor that fails even in float64 keeps its old data (or the identity)."""
        if not owned:
            return {}
        try:
            return {key: self._method.from_tensors(data, f.dim() == 1) for key, data, f in zip(owned, batch(), factors)}
        except RuntimeError:
            pass  # redo one by one, keep the rest
        out: dict[tuple, SecondOrder] = {}
        for key, f in zip(owned, factors):
            try:
                out[key] = self._solve([f], damping)[0]
            except RuntimeError as exc:
                self.failed_inverse_updates += 1
                i, w = key
                kept = (
                    "the previous one is kept"
                    if w in self._second.get(i, {})
                    else "the identity is used for this factor until one succeeds"
                )
                if w not in self._second.get(i, {}):
                    out[key] = self._identity_second_order(self.layers[i], w, damping)
                warnings.warn(
                    f"KFACPreconditioner: {self.compute_method} of factor {w} of layer "
                    f"{self.layers[i].name!r} failed at step {step} ({exc}); {kept}"
                )
        return out

    def _precondition(self, step: int, with_grad: Sequence[int]) -> None:
        comm = self.comm
        active = []
        for i in with_grad:
            slot = self._second.get(i)
            # A rank that is not among the layer's grad workers holds no second-order data
            # (HYBRID/MEM-OPT): it receives P, and must join that broadcast, once factors exist.
            receives = not comm.is_grad_worker(i) and self.layers[i].factor_updates > 0
            if (slot is not None and "A" in slot and "G" in slot) or receives:
                active.append(i)
            else:
                layer = self.layers[i]
                if not layer.ever_called:
                    why = "its hooks never fired (is its weight used outside its forward?)"
                elif not layer.ever_fired:
                    why = (
                        "it has no factors yet (no forward pass was captured: they ran in "
                        "eval mode, without grad, or on empty batches)"
                    )
                else:
                    why = "it has no factors yet"
                self._warn_once(
                    ("noprecond", i),
                    f"KFACPreconditioner: layer {layer.name!r} is "
                    f"not preconditioned: {why}; its gradient is left as is",
                )
        if not active:
            return
        if comm.replicates_preconditioning:
            self._precondition_in_place(step, active)
            return
        # HYBRID/MEM-OPT: a layer's grad workers precondition its Γ (a tied use's Γ_u,
        # averaged over every rank first) and send P down their column; then every rank
        # holds every P and writes the same gradients (a tied weight: its per-use sum).
        active, gammas = self._gammas(active)
        grads = dict(zip(active, gammas))
        mine = [i for i in active if comm.is_grad_worker(i)]
        precond: dict[int, torch.Tensor] = {}
        if mine:
            s = [self._second[i] for i in mine]
            precond.update(
                zip(
                    mine,
                    self._method.precondition_many(
                        [grads[i] for i in mine],
                        [x["A"] for x in s],
                        [x["G"] for x in s],
                        self._precondition_damping(step),
                    ),
                )
            )
        for i in active:
            if i not in precond:
                precond[i] = torch.empty_like(grads[i])
        comm.wait(comm.broadcast_preconditioned([(i, precond[i]) for i in active]))
        self._write_back(step, active, [precond[i] for i in active], gammas)

    def _precondition_in_place(self, step: int, active: Sequence[int]) -> None:
        """Every rank preconditions every layer (one process, COMM-OPT), so nothing is
        sent: one fused op call builds Γ, computes P and the KL-clip scale, and writes
        ν·P back into the gradients (on small models the Python version of these steps
        cost more than the GEMMs). A layer whose Γ is not a view of its ``.grad`` (a
        transposed weight) goes in as a Γ copy written back after; a layer with a
        diagonal factor sends the whole step down the per-layer path."""
        second = [self._second[i] for i in active]
        layers = [self.layers[i] for i in active]
        if any(l.a_diagonal or l.g_diagonal or l.tied for l in layers):
            self._precondition_per_layer(step, active)
            return
        weight_grads, bias_grads, copies = [], [], []
        for layer in layers:
            if layer.direct_grads:
                w, b = layer.grad_tensors()
                weight_grads.append(w)
                if b is not None:
                    bias_grads.append(b)
            else:  # Γ has a_dim columns: the op sees a layer without a bias
                copies.append((layer, layer.grad_matrix(self.inv_dtype)))
                weight_grads.append(copies[-1][1])
        kl_clip = self.kl_clip(step)
        self._method.precondition_fused_(
            weight_grads,
            bias_grads,
            [s["A"] for s in second],
            [s["G"] for s in second],
            self._precondition_damping(step),
            None if kl_clip is None else float(kl_clip),
            float(self._kl_factor(step)) if kl_clip is not None else 1.0,
            self.precondition_dtype,
        )
        for layer, p in copies:
            layer.set_grad(p)

    def _precondition_per_layer(self, step: int, active: Sequence[int]) -> None:
        """Γ, P per layer (any factor kind), one KL-clip scale over all, ν·P written back."""
        active, grads = self._gammas(active)
        second = [self._second[i] for i in active]
        ps = self._method.precondition_many(
            grads, [s["A"] for s in second], [s["G"] for s in second], self._precondition_damping(step)
        )
        self._write_back(step, active, ps, grads)

    def _gammas(self, active: Sequence[int]) -> tuple[list[int], list[torch.Tensor]]:
        """The layers to precondition and their Γ in inv_dtype: a tied layer's is its own
        use's Γ_u (docs/design.md §2a), averaged over the ranks as data parallelism
        averaged ``.grad`` (every rank joins, whatever it preconditions); a tied layer
        whose use saw no backward since the last step is left out."""
        active = [i for i in active if not self.layers[i].tied or self.layers[i].use_grad is not None]
        layers = [self.layers[i] for i in active]
        tied_uses = [_use_grad(l) for l in layers if l.tied]
        if tied_uses and self.comm.world_size > 1:
            self.comm.wait(self.comm.average(tied_uses))
        return active, [_use_grad(l).to(self.inv_dtype) if l.tied else l.grad_matrix(self.inv_dtype) for l in layers]

    def _write_back(
        self, step: int, active: Sequence[int], ps: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
    ) -> None:
        """Write ν·P into the gradients of the layers ``active`` (P, Γ in their order).

        A tied weight's new gradient is Σ_u P_u plus whatever of ``.grad`` the registered
        uses do not explain (a use outside them: left as is), and the KL sum reads that
        whole update against the whole ``.grad``."""
        layers = [self.layers[i] for i in active]
        pairs = [(p, g) for l, p, g in zip(layers, ps, grads) if not l.tied]
        tied: dict[int, torch.Tensor] = {}  # id(weight) -> its new gradient
        for l, p, g in zip(layers, ps, grads):
            if not l.tied:
                continue
            w = l.weight
            if id(w) not in tied:  # a copy: .grad itself is the KL sum's Γ below
                tied[id(w)] = _grad(w).to(self.inv_dtype, copy=True)
            part = torch.zeros_like(tied[id(w)])
            l.write_weight(part, g[:, : g.shape[1] - int(l.has_bias)])
            tied[id(w)].sub_(part)
            l.write_weight(part, p[:, : p.shape[1] - int(l.has_bias)])
            tied[id(w)].add_(part)
            if l.has_bias:
                pairs.append((p[:, -1:], g[:, -1:]))
        weights = {id(l.weight): l.weight for l in layers if l.tied}
        pairs += [
            (t.reshape(t.shape[0], -1), _grad(weights[k]).to(t.dtype).reshape(t.shape[0], -1)) for k, t in tied.items()
        ]
        nu = self._kl_scale(step, [p for p, _ in pairs], [g for _, g in pairs])

        def scaled(t):
            return t if nu is None else t.mul_(nu.to(t.dtype))

        for l, p in zip(layers, ps):
            if not l.tied:
                l.set_grad(scaled(p))
            elif l.has_bias:
                assert l.bias is not None  # has_bias
                l.bias_rows(_grad(l.bias)).copy_(scaled(p[:, -1].clone()))
        for k, t in tied.items():
            _grad(weights[k]).copy_(scaled(t))

    def _precondition_damping(self, step: int) -> float:
        """λ of the eigen method's division by d_G d_Aᵀ + λ. With
        compute_eigenvalue_outer_product=True (the default) kfac-pytorch forms that
        divisor at the eigendecomposition step, so a damping that changes in between
        (a schedule, a LambdaParamScheduler) takes effect at the next one: the same
        here. False, or an AdaptiveDamping (its rule reads the step's own λ): this
        step's damping."""
        if self.compute_eigenvalue_outer_product and self._adaptive is None and self._basis_damping is not None:
            return self._basis_damping
        return self.damping(step)

    def _kl_factor(self, step: int) -> float:
        """lr², divided by a gradient scaler's scale² (the gradients are still scaled)."""
        factor = float(self.lr(step)) ** 2
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            factor /= float(self.grad_scaler.get_scale()) ** 2
        return factor

    def _kl_scale(self, step: int, ps: Sequence[torch.Tensor], gs: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """ν = min(1, sqrt(κ / |Σ lr²⟨P, Γ⟩|)), 1 for a zero or non-finite sum, as a 0-d
        tensor where the gradients live (no host synchronisation); None without KL clipping."""
        kl_clip = self.kl_clip(step)
        if kl_clip is None:
            return None
        vg = ops.kl_clip_sum(ps, gs).mul(self._kl_factor(step)).abs()
        clipped = (kl_clip / vg).sqrt().clamp(max=1.0)
        return torch.where(torch.isfinite(vg) & (vg != 0), clipped, torch.ones_like(vg))

    # ------------------------------------------------ hyperparameters ----
    def _hyperparameters(self) -> list[sch.Hyperparameter]:
        return [self.factor_update_steps, self.inv_update_steps, self.damping, self.factor_decay, self.kl_clip, self.lr]

    def set_hyperparameters(self, **values: Any) -> None:
        """Give hyperparameters that were numbers new numbers, e.g.
        ``set_hyperparameters(damping=1e-4, inv_update_steps=50)`` (what
        :class:`kfac_ext.scheduler.LambdaParamScheduler` does). Every value is checked
        before any is set; a hyperparameter given as a schedule is refused. A new
        ``factor_update_steps`` applies from the next forward pass."""
        for h, value in sch.checked_values(self._hyperparameters(), values):
            h.value = value
        self._set_capture()

    # -------------------------------------------------------- state ----
    def state_dict(self, include_eigens: bool = True, include_factors: bool = True) -> dict:
        """Step counters, factors and (``include_eigens``) this rank's eigendecompositions.

        With the eigendecompositions a loaded preconditioner gives bit-identical
        results at the next step; without them they are recomputed from the
        factors on the first step after loading (identical when that step is an
        inverse-update step). ``include_factors``: kfac-pytorch's; only True (a state
        without factors would restart them from the identity).
        """
        if include_factors is not True:
            raise ValueError(
                "state_dict(include_factors=False) is not supported: a kfac_ext "
                "state always holds the factors (include_eigens=False leaves out "
                "the eigendecompositions)"
            )
        return build_state(self, include_eigens)

    def load_state_dict(self, state: dict, compute_inverses: bool = True) -> None:
        """Load a :meth:`state_dict`; everything is validated before anything is assigned.
        Eigendecompositions the state lacks are computed at the next ``step()``, from
        the loaded factors, whatever kfac-pytorch's ``compute_inverses`` says."""
        args.flag("compute_inverses", compute_inverses)
        checked = check_state(self, state)
        # all checks passed: assign
        self._second = {}
        self._pending = checked.pending
        if checked.pending is not None and self.inv_lag_steps and self._background:  # else: when it lands
            checked.pending.future = self._solver.submit(self._solve, checked.pending.factors, checked.pending.damping)
        for i, l in enumerate(self.layers):
            e = checked.layers[l.name]
            l.A.copy_(e["A"])
            l.G.copy_(e["G"])
            l.factor_updates = int(e.get("factor_updates", 1))
            l.clear_batch()
            if "second_order" in e:
                self._second[i] = {
                    w: self._method.from_tensors(
                        [t.to(dtype=self.inv_dtype, device=l.device).clone() for t in ts], self._shape(l, w)[1]
                    )
                    for w, ts in e["second_order"].items()
                }
        self.steps = checked.steps
        for h, value in checked.numbers:
            h.value = value
        self._basis_damping = checked.basis_damping
        if self._adaptive is not None and "adaptive_damping" in state:
            self._adaptive.load_state_dict(state["adaptive_damping"], self.layers)
        self.skipped_factor_updates = checked.skipped_factor_updates
        self._factor_tracker.load_state_dict(checked.factor_tracker)
        self._inv_tracker.load_state_dict(checked.inv_tracker)
        if any(l.factor_updates > 0 for l in self.layers) and not self._second:
            self._inv_tracker.last = None  # recompute eigens from the loaded factors next step
        # A layer gets its first basis in the step of its first factor update.
        self._has_basis = {i for i, l in enumerate(self.layers) if l.factor_updates > 0}
        self._grad_marks = []
        self._set_capture()

    def reset(self) -> None:
        """Back to the state after construction: identity factors, no eigens, step 0."""
        if self._reducing:  # finish reductions started by a backward pass
            self.comm.wait(self.comm.allreduce_factors([]))
            self._reducing = {}
        for l in self.layers:
            l.A.copy_(l.identity_factor("A"))
            l.G.copy_(l.identity_factor("G"))
            l.factor_updates = 0
            l.clear_batch()
        self._second = {}
        self._grad_marks = []
        self._pending = None  # a lagged update still running is dropped
        self._has_basis = set()
        self.steps = 0
        self.skipped_factor_updates = 0
        self._factor_tracker.last = self._inv_tracker.last = None
        self._basis_damping = None
        if self._auto is not None:
            self._auto.reset()
        self._set_capture()

    def remove_hooks(self) -> None:
        """Detach from the model (the hooks stop capturing for good)."""
        for l in self.layers:
            l.remove_hooks()

    # ---------------------------------------------------- introspection ----
    def memory_usage(self) -> dict[str, int]:
        """Bytes held, by kind: running factors, micro-batch sums, second-order data,
        and the factor snapshot of a lagged update in flight (``inv_lag_steps``); and
        their ``total``, as kfac-pytorch reports it."""

        def nbytes(ts):
            return sum(t.numel() * t.element_size() for t in ts if t is not None)

        kind = self._method.name
        usage = {
            "factors": nbytes(t for l in self.layers for t in (l.A, l.G)),
            "batch_factors": nbytes(t for l in self.layers for t in (l.A_sum, l.G_sum)),
            kind: nbytes(t for s in self._second.values() for ts in s.values() for t in ts),
            "pending_snapshot": nbytes(self._pending.factors) if self._pending else 0,
        }
        usage["total"] = sum(usage.values())
        return usage

    def memory(self) -> dict[str, dict[str, int]]:
        """Bytes per layer, as held once every factor has been captured and solved:
        ``A``/``G`` (running factors), ``batch`` (their micro-batch sums),
        ``second_order`` (eigenbases and eigenvalues, or inverses, in ``inv_dtype``),
        ``total``. Diagonal factors count n elements, dense ones n²."""
        inv = torch.empty((), dtype=self.inv_dtype).element_size()
        report = {}
        for l in self.layers:
            a, g = l.A.numel() * l.A.element_size(), l.G.numel() * l.G.element_size()
            second = 0
            for n, diag in ((l.a_dim, l.a_diagonal), (l.g_dim, l.g_diagonal)):
                second += n if diag else n * n + (n if self._method.name == "eigen" else 0)
            entry = {"A": a, "G": g, "batch": a + g, "second_order": second * inv}
            entry["total"] = sum(entry.values())
            report[l.name] = entry
        return report

    def __repr__(self) -> str:
        hp = ", ".join(
            repr(h)
            for h in (
                self.factor_update_steps,
                self.inv_update_steps,
                self.damping,
                self.factor_decay,
                self.kl_clip,
                self.lr,
            )
        )
        lines = [
            f"KFACPreconditioner({hp}, compute_method={self.compute_method!r}, "
            f"steps={self.steps}, comm={self.comm!r}, {len(self.layers)} layers:"
        ]
        lines += [f"  {l!r}" for l in self.layers]
        return "\n".join(lines) + "\n)"
