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

The closure must return the loss as a number or a one-element tensor; any
other result is a ``TypeError`` naming the closure, raised before λ or a
gradient changes. A loss that is not finite is not measured: at the first
step (the loss at θ_t) the measurement is skipped, at the second (the loss
after the move) λ is raised as for a step that blew up; either way with a
warning, since a closure that always returns NaN would otherwise only show as
a λ that climbs.

Checkpoints: a measurement started at step t is pending until step t + 1, so a
checkpoint taken between them holds it (``state_dict()["pending"]``: the loss,
gradients and parameters of step t). The closure of batch t cannot be saved;
after ``load_state_dict`` give it again with :meth:`AdaptiveDamping.resume`
(the same batch), and the resumed run matches the uninterrupted one bit for
bit. Without it the measurement is dropped at the next step, with a warning.

The closure runs the model in whatever mode it is in (a dropout or BatchNorm
model should be evaluated in the same mode as the step's forward for ρ to be
meaningful); the extra forward costs one forward pass every ``interval``
steps. Only the registered layers enter δ and M; layers skipped by the
preconditioner still move, and their effect lands in the actual change.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from kfac_ext.layers.base import KFACLayer

__all__ = ["AdaptiveDamping"]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _loss_value(result: object) -> float:
    """The closure's loss as a float; anything but a number or a one-element tensor is
    refused with what it was (the bare float() error would not say)."""
    if isinstance(result, torch.Tensor) and result.numel() == 1:
        return float(result)
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return float(result)
    got = (
        f"a tensor of shape {tuple(result.shape)}"
        if isinstance(result, torch.Tensor)
        else f"{type(result).__name__} {result!r}"[:120]
    )
    raise TypeError(
        "KFACPreconditioner.step(closure=...): with adaptive damping the closure "
        f"must return the batch's loss (a number or a one-element tensor), got {got}"
    )


def _layer_params(layer: KFACLayer) -> torch.Tensor:
    """(out, in[+1]) parameters of a K-FAC layer, bias last: the layout of its gradient."""
    w = layer.weight_matrix(layer.weight.detach())  # any layer type's layout (kfac_ext.layers)
    if layer.has_bias:
        assert layer.bias is not None  # has_bias: the layer keeps its bias
        w = torch.cat([w, layer.bias_rows(layer.bias.detach()).reshape(-1, 1)], dim=1)
    return w.to(torch.float64, copy=True)


class AdaptiveDamping:
    """λ as a callable ``f(step)`` for KFACPreconditioner, adapted from observed loss changes."""

    def __init__(
        self,
        initial: float,
        interval: int = 5,
        decay: float | None = None,
        curvature_scale: float = 1.0,
        min_damping: float = 1e-8,
        max_damping: float = 1e4,
    ):
        for name, value in (
            ("initial", initial),
            ("curvature_scale", curvature_scale),
            ("min_damping", min_damping),
            ("max_damping", max_damping),
        ):
            if not _positive(value):
                raise ValueError(f"AdaptiveDamping: {name} must be a finite number > 0, got {value!r}")
        if not (isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1):
            raise ValueError(f"AdaptiveDamping: interval must be an integer >= 1, got {interval!r}")
        if decay is None:
            decay = (19 / 20) ** interval
        if not (isinstance(decay, (int, float)) and not isinstance(decay, bool) and 0 < decay < 1):
            raise ValueError(f"AdaptiveDamping: decay must be in (0, 1), got {decay!r}")
        if not min_damping <= initial <= max_damping:
            raise ValueError(
                f"AdaptiveDamping: initial {initial} outside [min_damping {min_damping}, max_damping {max_damping}]"
            )
        self.value = float(initial)
        self.interval = interval
        self.decay = float(decay)
        self.curvature_scale = float(curvature_scale)
        self.min_damping, self.max_damping = float(min_damping), float(max_damping)
        self.last_rho: float | None = None
        self.updates = 0
        # (closure, loss, grads, params) of step t; closure None after a load until resume()
        self._pending: tuple | None = None

    def __call__(self, step: int) -> float:
        return self.value

    @property
    def pending(self) -> bool:
        """Whether a measurement is started and waits for the next step (a checkpoint
        taken now holds it; see :meth:`resume`)."""
        return self._pending is not None

    # ---------------------------------------------------------------- observe
    def observe(self, layers: list[KFACLayer], step: int, closure: Callable | None) -> None:
        """Called by ``KFACPreconditioner.step`` (with its layers) before it changes any gradient. The new
        measurement's closure is checked (and its loss taken) before the pending one
        finishes, so a bad closure changes nothing."""
        measure = step % self.interval == 0 and all(l.has_grad() and l.factor_updates > 0 for l in layers)
        if step % self.interval == 0 and closure is None:
            raise ValueError(
                "KFACPreconditioner.step(closure=...): adaptive damping needs a "
                "closure that returns the loss of the current batch"
            )
        if closure is not None and not callable(closure):
            raise TypeError(
                f"KFACPreconditioner.step(closure=...): closure must be callable, got {type(closure).__name__}"
            )
        if measure:  # else: no factors yet (or a layer without gradient): nothing to model
            assert closure is not None  # a measuring step without one was refused above
            with torch.no_grad():
                loss = _loss_value(closure())
        if self._pending is not None:
            self._finish(layers, step)
        if not measure:
            return
        if not math.isfinite(loss):
            warnings.warn(
                f"AdaptiveDamping: the closure's loss is {loss} at step {step}; no "
                f"measurement this time (damping stays {self.value:g})",
                stacklevel=4,
            )
            return
        grads = [l.grad_matrix(torch.float64) for l in layers]
        params = [_layer_params(l) for l in layers]
        self._pending = (closure, loss, grads, params)

    def resume(self, closure: Callable) -> None:
        """After ``load_state_dict``: the closure of the batch whose measurement the
        checkpoint holds (the last batch before saving), to finish it at the next step."""
        if not callable(closure):
            raise TypeError(f"AdaptiveDamping.resume: closure must be callable, got {type(closure).__name__}")
        if self._pending is None:
            raise ValueError(
                "AdaptiveDamping.resume: no measurement is pending (the state loaded had none); nothing to resume"
            )
        self._pending = (closure,) + self._pending[1:]

    def _finish(self, layers: list, step: int) -> None:
        assert self._pending is not None  # called only with a measurement pending
        closure, loss, grads, params = self._pending
        self._pending = None
        if closure is None:
            warnings.warn(
                "AdaptiveDamping: the measurement pending in the loaded state was "
                "dropped (give the closure of its batch with resume() after "
                "load_state_dict to finish it)",
                stacklevel=5,
            )
            return
        now = [_layer_params(layer) for layer in layers]
        if [t.shape for t in now] != [p.shape for p in params]:
            warnings.warn(
                "AdaptiveDamping: a registered layer changed shape since the pending "
                "measurement started (a bias frozen?); the measurement is dropped",
                stacklevel=5,
            )
            return
        with torch.no_grad():
            new_loss = _loss_value(closure())
            linear, curvature = 0.0, 0.0
            for layer, g, p, q in zip(layers, grads, params, now):
                d = q - p
                linear += float((g * d).sum())
                a = layer.A.to(torch.float64)
                gf = layer.G.to(torch.float64)
                # A diagonal factor (a 1-D tensor, docs/design.md §2a) scales rows/columns.
                gd = gf.unsqueeze(1) * d if gf.dim() == 1 else gf @ d
                gda = gd * a if a.dim() == 1 else gd @ a
                curvature += float((gda * d).sum())
        model = linear + 0.5 * self.curvature_scale * curvature
        if not math.isfinite(new_loss):
            warnings.warn(
                f"AdaptiveDamping: the closure's loss after the step is {new_loss} at step {step}; damping raised",
                stacklevel=5,
            )
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
        """λ, counters and the pending measurement (without its closure, see resume())."""
        state: dict[str, Any] = {
            "value": self.value,
            "updates": self.updates,
            "last_rho": self.last_rho,
            "pending": None,
        }
        if self._pending is not None:
            _, loss, grads, params = self._pending
            state["pending"] = {
                "loss": loss,
                "grads": [g.clone() for g in grads],
                "params": [p.clone() for p in params],
            }
        return state

    def check_state_dict(self, state: dict, layers: list | None = None) -> None:
        """Raise ValueError naming the entry if ``state`` cannot be loaded (into a
        preconditioner with these ``layers``); assigns nothing."""
        if not isinstance(state, dict) or "value" not in state:
            raise ValueError(f"adaptive_damping: not an AdaptiveDamping state dict ({type(state).__name__})")
        value = state["value"]
        if not (_positive(value) and self.min_damping <= value <= self.max_damping):
            raise ValueError(
                f"adaptive_damping: value must be a finite number in [min_damping "
                f"{self.min_damping:g}, max_damping {self.max_damping:g}], got "
                f"{value!r}"
            )
        updates = state.get("updates", 0)
        if not (isinstance(updates, int) and not isinstance(updates, bool) and updates >= 0):
            raise ValueError(f"adaptive_damping: updates must be an integer >= 0, got {updates!r}")
        rho = state.get("last_rho")
        if rho is not None and not (isinstance(rho, (int, float)) and not isinstance(rho, bool)):
            raise ValueError(f"adaptive_damping: last_rho must be a number or None, got {rho!r}")
        pending = state.get("pending")
        if pending is None:
            return
        try:
            loss, grads, params = pending["loss"], list(pending["grads"]), list(pending["params"])
        except (KeyError, TypeError):
            raise ValueError("adaptive_damping: pending must hold loss, grads and params") from None
        if not (isinstance(loss, float) and math.isfinite(loss)):
            raise ValueError(f"adaptive_damping: pending loss must be a finite float, got {loss!r}")
        if layers is not None:
            want = [(l.g_dim, l.a_dim) for l in layers]
            for key, ts in (("grads", grads), ("params", params)):
                got = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in ts]
                if got != want:
                    raise ValueError(f"adaptive_damping: pending {key} have shapes {got}, the registered layers {want}")

    def load_state_dict(self, state: dict, layers: list | None = None) -> None:
        """Checked first (:meth:`check_state_dict`); a pending measurement comes back
        without its closure: give it with :meth:`resume`."""
        self.check_state_dict(state, layers)
        self.value = float(state["value"])
        self.updates = int(state.get("updates", 0))
        self.last_rho = state.get("last_rho")
        pending = state.get("pending")
        if pending is None:
            self._pending = None
            return
        devices = [l.device for l in layers] if layers is not None else [t.device for t in pending["grads"]]
        self._pending = (
            None,
            float(pending["loss"]),
            [t.to(d, torch.float64, copy=True) for t, d in zip(pending["grads"], devices)],
            [t.to(d, torch.float64, copy=True) for t, d in zip(pending["params"], devices)],
        )
