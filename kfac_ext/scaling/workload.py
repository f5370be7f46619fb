"""What one training step of a model asks of a device: FLOPs, activations, K-FAC layers.

``workload_of(factory, input_shape)`` builds the model on the meta device (no
memory, no arithmetic), runs one forward and one backward of a single sample
under ``torch.utils.flop_counter.FlopCounterMode``, and sums the bytes autograd
saves for backward (parameters excluded). The K-FAC layers are the preconditioner's
own: a ``KFACPreconditioner`` is built on the meta model (so every layer type of
``kfac_ext.layers`` counts, a user's registered ones included: Linear, Conv2d
and its channel groups, HF Conv1D, the q/k/v/out projections of
``nn.MultiheadAttention``, ``nn.Embedding``; ``skip_layers``, ``max_factor_bytes``,
``kfac_approx`` and tied weights as the preconditioner takes them), and each layer's
dims and diagonal flags come from its ``KFACLayer``. The rows per sample entering
its factors are counted where the layer would capture them, during the same
forward and backward (its capture methods are replaced by counters on the throwaway
meta model: nothing is computed). Convolution and matmul FLOPs are linear in the
batch, so per-sample figures times the batch per rank give the step.

The host work of a step is counted in the same pass: the aten operators one forward
(with the loss's sum) and one backward dispatch, views excluded (``forward_ops``,
``backward_ops``; a batch-independent count, as each op is one kernel launch whatever
the batch), and the trainable parameter tensors (``param_tensors``), which set the
optimizer's per-tensor kernels (``kfac_ext.scaling.step.HostCost``).

A diagonal factor (an Embedding's A, a factor over ``max_factor_bytes``) costs O(n):
its covariance is n squares per row (a one-hot input, token ids, one count per
row), it has no eigendecomposition (its eigenvalues are its entries), and it is
stored, sent and kept as n numbers.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from kfac_ext.comm import LocalComm
from kfac_ext.layers import KFACLayer
from kfac_ext.preconditioner import KFACPreconditioner

__all__ = ["FactorLayer", "Workload", "workload_of"]


@dataclasses.dataclass(frozen=True)
class FactorLayer:
    """One K-FAC layer: A is dim_a x dim_a, G is dim_g x dim_g (or their diagonals);
    ``rows`` rows per sample enter each factor (output positions of a conv, the
    leading dims of a Linear, tokens of an Embedding); ``a_onehot``: A's rows are
    one-hot (token ids), so its diagonal is a count per row."""

    name: str
    dim_a: int
    dim_g: int
    rows: int
    a_diagonal: bool = False
    g_diagonal: bool = False
    a_onehot: bool = False

    def factors(self) -> tuple[tuple[int, bool], tuple[int, bool]]:
        """(n, diagonal) of A and of G."""
        return (self.dim_a, self.a_diagonal), (self.dim_g, self.g_diagonal)

    def dense_dims(self) -> tuple[int, ...]:
        """The sizes of the factors that are eigendecomposed (the dense ones)."""
        return tuple(n for n, diag in self.factors() if not diag)

    def factor_elements(self, packed: bool = False) -> int:
        """Numbers held (or sent) for A and G: n for a diagonal factor, n^2 for a dense
        one (n (n + 1) / 2 ``packed``: the upper triangle)."""
        return sum(n if diag else n * (n + 1) // 2 if packed else n * n for n, diag in self.factors())

    def eigen_elements(self) -> int:
        """Numbers of the second-order data: (Q, d) of a dense factor, d of a diagonal one."""
        return sum(n if diag else n * n + n for n, diag in self.factors())

    def factor_flops(self, batch: int) -> float:
        """Multiply-adds x 2 of the two covariances: a dense factor as a full GEMM
        (rows x n by n x rows), a diagonal one n squares per row (one count per row
        for one-hot rows)."""
        total = 0.0
        for i, (n, diag) in enumerate(self.factors()):
            if not diag:
                total += 2.0 * batch * self.rows * n * n
            elif i == 0 and self.a_onehot:
                total += float(batch * self.rows)
            else:
                total += 2.0 * batch * self.rows * n
        return total

    def precondition_flops(self) -> float:
        """The basis changes each way, Q_G^T Γ Q_A and Q_G V Q_A^T with Γ of g x a (two
        GEMMs per dense factor, none for a diagonal one), and the division by the
        eigenvalues' outer product (2 g a)."""
        dense = sum(n for n, diag in self.factors() if not diag)
        return 4.0 * self.dim_g * self.dim_a * dense + 2.0 * self.dim_g * self.dim_a


@dataclasses.dataclass(frozen=True)
class Workload:
    """Per-sample costs of one model."""

    name: str
    forward_flops: float
    backward_flops: float
    params: int
    activation_bytes: float  # saved for backward, per sample
    layers: tuple[FactorLayer, ...]
    forward_ops: int = 0  # aten ops dispatched by one forward and the loss (views excluded)
    backward_ops: int = 0  # the same for one backward
    param_tensors: int = 0  # trainable parameter tensors (the optimizer's kernels are per tensor)

    def step_flops(self, batch: int) -> float:
        return batch * (self.forward_flops + self.backward_flops)

    def factor_flops(self, batch: int) -> float:
        return sum(layer.factor_flops(batch) for layer in self.layers)


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched under it that do work: views (``is_view``), which
    launch no kernel, and the profiler's record-function markers are left out."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.namespace != "profiler":
            self.ops += 1
        return func(*args, **(kwargs or {}))


def _hooked(layer) -> bool:
    """Whether ``layer`` is fed by its module's forward hook (KFACLayer's own), not by a
    type-specific capture (an attention projection's F.linear calls)."""
    return type(layer)._install_hooks is KFACLayer._install_hooks


def _counting(layer, rows: dict, onehot: dict) -> None:
    """Replace ``layer``'s capture methods (instance attributes, on a throwaway meta
    model) by counters of the rows that reach its G, and of whether A's input is ids.
    A layer not fed by its module's hook is counted by ``_linear_counter`` instead
    where F.linear sees its weight (an attention projection: its own capture tells the
    views of one packed weight apart by address, and every meta tensor has address 0);
    its own capture's count stands only where F.linear never sees it."""
    key = id(layer)

    def add_gradient_rows(g: torch.Tensor) -> None:
        rows[key] = rows.get(key, 0) + int(g.shape[0])

    def add_gradient(g: torch.Tensor) -> None:
        if layer.is_conv:  # (N, C, H, W): a row per output position, or per sample (reduce)
            g = layer.as_image(g)
            per_sample = g.shape[0] if g.dim() == 4 else 1
            rows[key] = rows.get(key, 0) + (
                per_sample if layer.kfac_approx == "reduce" else g.numel() // g.shape[1 if g.dim() == 4 else 0]
            )
        else:
            add_gradient_rows(layer.rows(g, "sum"))

    def add_activation(x: torch.Tensor) -> None:
        onehot[key] = not x.is_floating_point()

    layer.add_gradient_rows = add_gradient_rows
    layer._add_gradient = add_gradient
    layer._add_activation = add_activation
    layer.add_activation_rows = lambda x: None


def _linear_counter(layers: list, rows: dict, linear: Callable) -> Callable:
    """F.linear, counting the input rows of every call on (a row slice of) the weight of
    a layer in ``layers``: the weight itself or a view of it (``_base``), told apart by
    storage offset, which the meta device keeps."""

    query_len: dict[int, int] = {}  # per module: L of its first (L, N, E) input, the query's

    def counted(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        for layer in layers:
            base = layer.weight
            if weight is not base and weight._base is not base:
                continue
            offset = (weight.storage_offset() - base.storage_offset()) // max(base.stride(0), 1)
            lo, hi = layer.out_slice.start, layer.out_slice.stop
            if offset <= lo and hi <= offset + weight.shape[0]:
                x = input
                if x.dim() == 3:
                    query_len.setdefault(id(layer.module), x.shape[0])
                elif x.dim() == 2 and id(layer.module) in query_len:  # (L·N, E): the output projection's
                    x = x.unflatten(0, (query_len[id(layer.module)], -1))
                rows[id(layer)] = rows.get(id(layer), 0) + int(layer.rows(x, "mean").shape[0])
        return linear(input, weight, bias)

    return counted


def _preconditioner_layers(model: nn.Module, options: dict):
    """The KFACLayer objects a one-process KFACPreconditioner registers for ``model``,
    capturing (the preconditioner's first step updates the factors)."""
    with warnings.catch_warnings():  # "no layer registered", "kept diagonal": reported by the tool
        warnings.simplefilter("ignore")
        pre = KFACPreconditioner(model, comm=LocalComm(), **options)
    for layer in pre.layers:
        layer.capture = True
    return pre.layers


def workload_of(
    factory: Callable[[], nn.Module],
    input_shape: Sequence[int],
    name: str | None = None,
    input_dtype: torch.dtype = torch.float32,
    **preconditioner_options,
) -> Workload:
    """Measure one sample of ``factory()`` on the meta device; ``input_shape`` excludes the batch
    (``input_dtype=torch.long`` for token ids). ``preconditioner_options`` (``skip_layers``,
    ``max_factor_bytes``, ``kfac_approx``, ``factor_dtype``) go to the KFACPreconditioner
    whose layers are counted."""
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive sizes without the batch, got {input_shape!r}")
    with torch.device("meta"):
        model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"the model factory returned {type(model).__name__}, not an nn.Module")
    model = model.to("meta")
    kfac_layers = _preconditioner_layers(model, preconditioner_options)
    rows: dict[int, int] = {}  # from the layers' own captures
    linear_rows: dict[int, int] = {}  # from F.linear, for the layers not fed by a module hook
    onehot: dict[int, bool] = {}
    for layer in kfac_layers:
        _counting(layer, rows, onehot)
    x = torch.zeros((1, *shape), device="meta", dtype=input_dtype)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):  # one entry per tensor object: a tensor saved twice counts once
        saved[id(t)] = t.numel() * t.element_size()
        return t

    functional = [layer for layer in kfac_layers if not _hooked(layer)]
    linear = torch.nn.functional.linear
    if functional:
        torch.nn.functional.linear = _linear_counter(functional, linear_rows, linear)
    try:
        with (
            FlopCounterMode(display=False) as fwd,
            OpCounter() as fwd_ops,
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            out = model(x)
            loss = out.float().sum() if isinstance(out, torch.Tensor) else sum(o.float().sum() for o in out)
        with FlopCounterMode(display=False) as bwd, OpCounter() as bwd_ops:
            if loss.requires_grad:  # a model without trainable parameters has no backward
                loss.backward()
    finally:
        torch.nn.functional.linear = linear
        for layer in kfac_layers:
            layer.remove_hooks()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    param_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    param_ids = {id(p) for p in model.parameters()}
    activation = sum(b for key, b in saved.items() if key not in param_ids)
    layers = tuple(
        FactorLayer(
            layer.name,
            layer.a_dim,
            layer.g_dim,
            linear_rows.get(id(layer), rows.get(id(layer), 0)),
            layer.a_diagonal,
            layer.g_diagonal,
            onehot.get(id(layer), False),
        )
        for layer in kfac_layers
    )
    return Workload(
        name or type(model).__name__,
        float(fwd.get_total_flops()),
        float(bwd.get_total_flops()),
        params,
        float(activation),
        layers,
        fwd_ops.ops,
        bwd_ops.ops,
        param_tensors,
    )
