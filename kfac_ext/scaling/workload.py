"""What one training step of a model asks of a device: FLOPs, activations, K-FAC layers.

``workload_of(factory, input_shape)`` builds the model on the meta device (no
memory, no arithmetic), runs one forward and one backward of a single sample
under ``torch.utils.flop_counter.FlopCounterMode``, sums
the bytes autograd saves for backward (parameters excluded), and records every Linear/Conv2d K-FAC would register with the
shapes its factors take (the other layer types of docs/design.md §2a — attention,
embeddings, HF Conv1D — are not modelled yet: their cost is left out). Convolution and matmul FLOPs are linear in
the batch, so per-sample figures times the batch per rank give the step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FactorLayer", "Workload", "workload_of"]

# The layer types whose factor shapes _factor_layer knows.
MODELLED_TYPES = (nn.Linear, nn.Conv2d)


@dataclasses.dataclass(frozen=True)
class FactorLayer:
    """One K-FAC layer: A is dim_a x dim_a, G is dim_g x dim_g; ``rows`` rows per sample
    enter each factor (output positions of a conv, leading dims of a Linear)."""

    name: str
    dim_a: int
    dim_g: int
    rows: int

    def factor_flops(self, batch: int) -> float:
        """Multiply-adds x 2 of the two covariances as full GEMMs (rows x n by n x rows)."""
        return 2.0 * batch * self.rows * (self.dim_a**2 + self.dim_g**2)

    def precondition_flops(self) -> float:
        """The two basis changes each way: Q_G^T Γ Q_A and Q_G V Q_A^T, Γ of g x a."""
        return 4.0 * self.dim_g * self.dim_a * (self.dim_g + self.dim_a)


@dataclasses.dataclass(frozen=True)
class Workload:
    """Per-sample costs of one model."""

    name: str
    forward_flops: float
    backward_flops: float
    params: int
    activation_bytes: float  # saved for backward, per sample
    layers: tuple[FactorLayer, ...]

    def step_flops(self, batch: int) -> float:
        return batch * (self.forward_flops + self.backward_flops)

    def factor_flops(self, batch: int) -> float:
        return sum(layer.factor_flops(batch) for layer in self.layers)


def _factor_layer(name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> FactorLayer:
    bias = 1 if module.bias is not None else 0
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        dim_a = module.in_channels // module.groups * kh * kw + bias
        return FactorLayer(name, dim_a, module.out_channels, out.shape[-2] * out.shape[-1])
    rows = math.prod(out.shape[1:-1]) if out.dim() > 2 else 1
    return FactorLayer(name, module.in_features + bias, module.out_features, rows)


def workload_of(
    factory: Callable[[], nn.Module],
    input_shape: Sequence[int],
    name: str | None = None,
    input_dtype: torch.dtype = torch.float32,
) -> Workload:
    """Measure one sample of ``factory()`` on the meta device; ``input_shape`` excludes the batch
    (``input_dtype=torch.long`` for token ids)."""
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive sizes without the batch, got {input_shape!r}")
    with torch.device("meta"):
        model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"the model factory returned {type(model).__name__}, not an nn.Module")
    model = model.to("meta")
    layers: dict[str, FactorLayer] = {}

    def record(name):
        def hook(module, args, out):  # returns None: the output is left as it is
            layers.setdefault(name, _factor_layer(name, module, args[0], out))

        return hook

    hooks = [
        m.register_forward_hook(record(n))
        for n, m in model.named_modules()
        if isinstance(m, MODELLED_TYPES) and m.weight.requires_grad
    ]
    x = torch.zeros((1, *shape), device="meta", dtype=input_dtype)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):  # one entry per tensor object: a tensor saved twice counts once
        saved[id(t)] = t.numel() * t.element_size()
        return t

    try:
        with FlopCounterMode(display=False) as fwd, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
            loss = out.float().sum() if isinstance(out, torch.Tensor) else sum(o.float().sum() for o in out)
        with FlopCounterMode(display=False) as bwd:
            if loss.requires_grad:  # a model without trainable parameters has no backward
                loss.backward()
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    param_ids = {id(p) for p in model.parameters()}
    activation = sum(b for key, b in saved.items() if key not in param_ids)
    ordered = tuple(layers[n] for n, _ in model.named_modules() if n in layers)
    return Workload(
        name or type(model).__name__,
        float(fwd.get_total_flops()),
        float(bwd.get_total_flops()),
        params,
        float(activation),
        ordered,
    )
