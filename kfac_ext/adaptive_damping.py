"""Levenberg–Marquardt adaptive damping for KFACPreconditioner (Martens & Grosse 2015, §6.5).

Pass an :class:`AdaptiveDamping` as the preconditioner's ``damping`` and a
closure that recomputes the loss of the current batch to ``step``::

    damping = AdaptiveDamping(initial=0.1, interval=5, curvature_scale=batch_size ** 2)
    preconditioner = KFACPreconditioner(model, damping=damping, ...)
    ...
    loss = loss_fn(model(x), y); loss.backward()
    preconditioner.step(closure=lambda: loss_fn(model(x), y))
    optimizer.step()

Every ``interval`` steps, at step t, the preconditioner hands it the raw
gradient g of the registered layers, their parameters θ_t and the closure (of
batch t). At the next ``step()`` (after the optimizer moved the parameters to
θ_t + δ) it evaluates the closure again, under ``torch.no_grad()`` — the
same batch's loss at the new parameters — and compares the actual change
with the K-FAC quadratic model

    M(δ) = gᵀδ + ½ c · Σ_layers tr(Δᵀ G Δ A)

(the Kronecker factors A ⊗ G of each registered layer, Δ its (out, in+1)
move, c = ``curvature_scale``). The reduction ratio ρ = ΔL / M(δ) decides:
ρ > 3/4 (the model is trustworthy) multiplies λ by ω, ρ < 1/4 divides it by
ω, with ω = ``decay`` (default (19/20)**interval, as in the paper), λ kept in
[``min_damping``, ``max_damping``]. A step whose model predicts no decrease
(M ≥ 0) or whose loss is not finite raises λ.

``curvature_scale``: the running factors follow the kfac-pytorch convention,
in which G is built from the gradient of the batch-*mean* loss and so is
1/N² of the per-example Fisher factor; c = N² (global batch size squared)
makes A ⊗ G the curvature of the mean loss. Use 1 with ``g_scale=N**2`` on the
preconditioner (the factors are then per-example already).

The closure runs the model in whatever mode it is in (a dropout or BatchNorm
model should be evaluated in the same mode as the step's forward for ρ to be
meaningful); the extra forward costs one forward pass every ``interval``
steps. Only the registered layers enter δ and M; layers skipped by the
preconditioner still move, and their effect lands in the actual change.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch

__all__ = ["AdaptiveDamping"]


def _layer_params(layer) -> torch.Tensor:
    """(out, in[+1]) parameters of a K-FAC layer, bias last: the layout of its gradient."""
    w = layer.weight_matrix(layer.weight.detach())  # any layer type's layout (kfac_ext.layers)
    if layer.has_bias:
        w = torch.cat([w, layer.bias_rows(layer.bias.detach()).reshape(-1, 1)], dim=1)
    return w.to(torch.float64, copy=True)


class AdaptiveDamping:
    """λ as a callable ``f(step)`` for KFACPreconditioner, adapted from observed loss changes."""

    def __init__(self, initial: float, interval: int = 5, decay: Optional[float] = None,
                 curvature_scale: float = 1.0, min_damping: float = 1e-8,
                 max_damping: float = 1e4):
        for name, value in (("initial", initial), ("curvature_scale", curvature_scale),
                            ("min_damping", min_damping), ("max_damping", max_damping)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"AdaptiveDamping: {name} must be a finite number > 0, "
                                 f"got {value!r}")
        if not (isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1):
            raise ValueError(f"AdaptiveDamping: interval must be an integer >= 1, got {interval!r}")
        if decay is None:
            decay = (19 / 20) ** interval
        if not (isinstance(decay, (int, float)) and 0 < decay < 1):
            raise ValueError(f"AdaptiveDamping: decay must be in (0, 1), got {decay!r}")
        if not min_damping <= initial <= max_damping:
            raise ValueError(f"AdaptiveDamping: initial {initial} outside [min_damping "
                             f"{min_damping}, max_damping {max_damping}]")
        self.value = float(initial)
        self.interval = interval
        self.decay = float(decay)
        self.curvature_scale = float(curvature_scale)
        self.min_damping, self.max_damping = float(min_damping), float(max_damping)
        self.last_rho: Optional[float] = None
        self.updates = 0
        self._pending: Optional[tuple] = None  # (closure, loss, grads, params) of step t

    def __call__(self, step: int) -> float:
        return self.value

    # ---------------------------------------------------------------- observe
    def observe(self, preconditioner, step: int, closure: Optional[Callable]) -> None:
        """Called by ``KFACPreconditioner.step`` before it changes any gradient."""
        if self._pending is not None:
            self._finish(preconditioner.layers)
        if step % self.interval != 0:
            return
        if closure is None:
            raise ValueError("KFACPreconditioner.step(closure=...): adaptive damping needs a "
                             "closure that returns the loss of the current batch")
        layers = preconditioner.layers
        if not all(l.has_grad() and l.factor_updates > 0 for l in layers):
            return  # no factors yet (or a layer without gradient): nothing to model
        with torch.no_grad():
            loss = float(closure())
        grads = [l.grad_matrix(torch.float64) for l in layers]
        params = [_layer_params(l) for l in layers]
        self._pending = (closure, loss, grads, params)

    def _finish(self, layers: List) -> None:
        closure, loss, grads, params = self._pending
        self._pending = None
        with torch.no_grad():
            new_loss = float(closure())
            linear, curvature = 0.0, 0.0
            for layer, g, p in zip(layers, grads, params):
                d = _layer_params(layer) - p
                linear += float((g * d).sum())
                a = layer.A.to(torch.float64)
                gf = layer.G.to(torch.float64)
                # A diagonal factor (a 1-D tensor, docs/design.md §2a) scales rows/columns.
                gd = gf.unsqueeze(1) * d if gf.dim() == 1 else gf @ d
                gda = gd * a if a.dim() == 1 else gd @ a
                curvature += float((gda * d).sum())
        model = linear + 0.5 * self.curvature_scale * curvature
        if model >= 0 or not math.isfinite(new_loss):
            rho = -math.inf  # the model predicts no decrease, or the step blew up
        else:
            rho = (new_loss - loss) / model
        self.update(rho)

    def update(self, rho: float) -> None:
        """The Levenberg–Marquardt rule on one reduction ratio."""
        self.last_rho = rho
        self.updates += 1
        if rho > 0.75:
            self.value *= self.decay
        elif rho < 0.25:
            self.value /= self.decay
        self.value = min(self.max_damping, max(self.min_damping, self.value))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"value": self.value, "updates": self.updates, "last_rho": self.last_rho}

    def load_state_dict(self, state: dict) -> None:
        value = float(state["value"])
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"AdaptiveDamping.load_state_dict: value must be > 0, got {value}")
        self.value = value
        self.updates = int(state.get("updates", 0))
        self.last_rho = state.get("last_rho")
        self._pending = None
