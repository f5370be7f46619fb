"""Automatic learning rate and momentum from the exact quadratic model (Martens & Grosse 2015, §7).

Pass an :class:`AutoStep` to the preconditioner, a closure that gives the
batch's inputs and its loss as a function of the model's outputs to ``step``,
and apply the result with plain SGD at learning rate 1::

    auto = AutoStep(damping=1.0, weight_decay=5e-4)
    preconditioner = KFACPreconditioner(model, kl_clip=None, auto_step=auto)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)   # no momentum, no weight decay
    ...
    loss = F.cross_entropy(model(x), y); loss.backward()
    preconditioner.step(closure=lambda: (x, lambda out: F.cross_entropy(out, y)))
    optimizer.step()

At step t, with g the gradient of h(θ) = mean loss + η/2·||θ||² (``weight_decay``
η is added to every ``.grad`` here, so the optimizer must not add it again),
Δ the K-FAC direction (-(preconditioned g) on registered layers, -g on every
other trainable parameter) and δ the parameters' actual change at the last
step, (α, μ) minimise

    M(αΔ + μδ) = gᵀv + ½ vᵀ(C + (λ + η) I) v,

C the exact Gauss–Newton matrix of the batch-mean loss (vᵀCw = (Jv)ᵀ H (Jw):
J v by forward-mode AD through ``torch.func.functional_call`` of the model,
both directions in one vmapped call; H the Hessian of the loss with respect to
the outputs, applied to both J d by one batched double backward). That is a
2×2 linear system (1×1 at the first step, or when the set of parameters with a
gradient changed); ``.grad`` becomes -(αΔ + μδ), so
``SGD(lr=1)`` moves the parameters by exactly αΔ + μδ.

λ (``damping``, in the units of the mean loss's curvature, unlike the
preconditioner's own damping) is adapted by the Levenberg–Marquardt rule of
:class:`~kfac_ext.adaptive_damping.AdaptiveDamping` every ``interval`` steps:
the same step evaluates the batch's loss at θ + v, the parameters SGD(lr=1)
will produce (one forward pass without grad, through ``functional_call``, so
the model's own parameters and buffers are not touched), and compares the
change of h with the undamped model's prediction (C + ηI). The measurement
ends inside the step, so nothing is pending between steps and a checkpoint
taken between two steps resumes bit-identically. ``interval=0`` keeps λ fixed.

BatchNorm in training mode: both the jvp and that forward use the batch's
statistics, as the training forward did (the gradient g is of that function),
and update no running statistics (they are not part of the model's outputs
in training mode; updating them from these extra passes would count the batch
twice). Other modules that change buffers in place inside a forward are not
supported under the vmapped jvp.

The closure is called once per step, before any gradient changes, and its
result is checked (a pair (inputs, callable)); a model that does not return
one tensor is refused with its gradients restored as they were.

Guards: a non-finite or not positive-definite 2×2 system falls back to the
1-D problem in Δ (μ = 0); when that too is degenerate the step is skipped
(every ``.grad`` zero, one warning each time). The parameters' change between
two steps is checked against the step this object wrote: an optimizer that did
not apply it (another lr, momentum, weight decay, clipping) is refused with a
``RuntimeError`` at the next step.

Costs per step: one jvp of the model vmapped over the two directions (about a
forward and backward pass), one batched double backward through the loss, and
one forward every ``interval`` steps; a few host synchronisations (the
fallback decisions and the optimizer check read numbers); memory: flat float64 copies of the parameters,
the gradient (as it came, to restore it if the step fails, and with weight decay), δ and the step. Single process only. Dropout or
other randomness in the forward makes C that of another network than the one
the step's gradient came from; evaluate such models deterministically.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from kfac_ext.adaptive_damping import AdaptiveDamping

__all__ = ["AutoStep", "curvature_products", "solve_step"]

# A 2x2 system whose determinant is below this fraction of its diagonal product is
# treated as singular (δ nearly parallel to Δ): the 1-D problem is solved instead.
_SINGULAR = 1e-10


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode normalise by the batch's statistics and leave
    their running statistics alone (``track_running_stats`` off for the duration)."""
    changed = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m in changed:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


def _one_tensor(out: object) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"AutoStep: the model returned a {type(out).__name__}; the auto step "
            "needs a model whose forward returns one tensor (wrap it in a module "
            "that returns the output the loss uses)"
        )
    return out


def _grad(p: torch.Tensor) -> torch.Tensor:
    """``p.grad`` of a parameter that AutoStep._params listed (it has one)."""
    assert p.grad is not None
    return p.grad


def curvature_products(
    model: nn.Module,
    names: list[str],
    params: list[torch.Tensor],
    directions: torch.Tensor,
    inputs: Any,
    loss_of_outputs: Callable,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(k×k float64 matrix of d_iᵀ C d_j, the loss at ``params``) for the k rows of
    ``directions`` (each the parameters ``names`` flattened and concatenated in order).

    C is the Gauss–Newton matrix of ``loss_of_outputs(model(*inputs))`` with
    respect to the parameters ``names`` (the others stay as they are)."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    # Copies: a BatchNorm in training mode updates its running statistics in place.
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    primals = {n: p.detach() for n, p in zip(names, params)}

    def outputs(p):
        return _one_tensor(functional_call(model, {**p, **buffers}, args))

    k = directions.shape[0]
    tangents = {
        n: t.reshape(k, *p.shape).to(p.dtype)
        for n, p, t in zip(names, params, directions.split([p.numel() for p in params], dim=1))
    }
    with torch.enable_grad(), batch_statistics(model):
        # torch's stub for out_dims leaves out None (an output not batched), which vmap
        # takes; jvp without has_aux gives (output, its jvp).
        batched = vmap(lambda t: jvp(outputs, (primals,), (t,)), out_dims=(None, 0))  # type: ignore[arg-type]
        out, jv = cast(tuple[torch.Tensor, torch.Tensor], batched(tangents))
        # H (J d) by double backward, batched over the directions: on small outputs 7-9x
        # faster than a vmapped jvp of torch.func.grad (same products).
        out = out.detach().requires_grad_()
        loss = loss_of_outputs(out)
        (loss_grad,) = torch.autograd.grad(loss, out, create_graph=True)
        if loss_grad.requires_grad:
            (hjv,) = torch.autograd.grad(loss_grad, out, grad_outputs=jv, is_grads_batched=True)
        else:  # a loss linear in the outputs
            hjv = torch.zeros_like(jv)
    jv, hjv = jv.reshape(k, -1).double(), hjv.reshape(k, -1).double()
    gram = jv @ hjv.T
    return 0.5 * (gram + gram.T), loss.detach()


def solve_step(
    curvature: torch.Tensor, norms: torch.Tensor, linear: torch.Tensor, damping: float
) -> tuple[torch.Tensor | None, str]:
    """Minimiser c of linearᵀc + ½ cᵀ(curvature + damping·norms)c, and how it was found.

    'full': the k×k system; '1d': its first coordinate only (the 2×2 one was
    non-finite or not positive definite); 'skip' (None): neither is usable."""
    system = curvature + damping * norms
    k = system.shape[0]
    if k == 2 and bool(torch.isfinite(system).all() and torch.isfinite(linear).all()):
        det = float(system[0, 0] * system[1, 1] - system[0, 1] * system[1, 0])
        if system[0, 0] > 0 and det > _SINGULAR * float(system[0, 0] * system[1, 1]):
            c = -torch.linalg.solve(system, linear)
            if bool(torch.isfinite(c).all()):
                return c, "full"
    a, b = float(system[0, 0]), float(linear[0])
    if math.isfinite(a) and math.isfinite(b) and a > 0:
        c = torch.zeros(k, dtype=torch.float64)
        c[0] = -b / a
        return c, "full" if k == 1 else "1d"
    return None, "skip"


class AutoStep:
    """Chooses K-FAC's step length and momentum each step; see the module docstring."""

    def __init__(
        self,
        damping: float = 1.0,
        weight_decay: float = 0.0,
        interval: int = 5,
        decay: float | None = None,
        min_damping: float = 1e-8,
        max_damping: float = 1e4,
    ):
        if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"AutoStep: weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if not (isinstance(interval, int) and not isinstance(interval, bool) and interval >= 0):
            raise ValueError(f"AutoStep: interval must be an integer >= 0 (0: fixed damping), got {interval!r}")
        if not (
            isinstance(damping, (int, float))
            and not isinstance(damping, bool)
            and math.isfinite(damping)
            and damping > 0
        ):
            raise ValueError(f"AutoStep: damping must be a finite number > 0, got {damping!r}")
        # λ and its Levenberg–Marquardt rule (AdaptiveDamping checks the numbers).
        self.lm = AdaptiveDamping(
            damping, interval=max(interval, 1), decay=decay, min_damping=min_damping, max_damping=max_damping
        )
        self.weight_decay = float(weight_decay)
        self.interval = interval
        self.steps = 0
        self.last_alpha: float | None = None
        self.last_mu: float | None = None
        self.last_predicted: float | None = None  # M of the damped model at the step
        self.fallbacks = {"1d": 0, "skip": 0}
        # Flat float64 vectors over the parameters ``_names`` (those with gradients):
        self._names: list[str] | None = None
        self._shapes: dict[str, tuple] = {}
        self._prev: torch.Tensor | None = None  # θ at the last step
        self._last: torch.Tensor | None = None  # the step written then
        self._theta: torch.Tensor | None = None  # θ of this step
        self._grads: torch.Tensor | None = None  # g of this step
        self._delta: torch.Tensor | None = None  # δ of this step
        self._raw: torch.Tensor | None = None  # .grad as it came, to restore on an error
        self._batch: tuple | None = None  # (inputs, loss_of_outputs) of this step

    @property
    def damping(self) -> float:
        return self.lm.value

    # ----------------------------------------------------------------- step
    # Parameters travel as one flat float64 vector (in named_parameters order): a few
    # large ops instead of several small ones per parameter.
    @staticmethod
    def _params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]

    @staticmethod
    def _flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1).double() for t in tensors])

    @staticmethod
    def _call_closure(closure: Callable | None) -> tuple:
        """(inputs, loss_of_outputs) from the closure, checked before anything changes."""
        if closure is None:
            raise ValueError(
                "KFACPreconditioner.step(closure=...): auto_step needs a closure "
                "returning (inputs, loss_of_outputs) of the current batch"
            )
        if not callable(closure):
            raise TypeError(
                f"KFACPreconditioner.step(closure=...): closure must be callable, got {type(closure).__name__}"
            )
        result = closure()
        if not (isinstance(result, (tuple, list)) and len(result) == 2 and callable(result[1])):
            got = (
                type(result).__name__
                if not isinstance(result, (tuple, list))
                else f"a {type(result).__name__} of {len(result)}"
            )
            raise TypeError(
                "KFACPreconditioner.step(closure=...): with auto_step the closure "
                f"must return (inputs, loss_of_outputs), got {got} (a closure "
                "returning the loss is AdaptiveDamping's form)"
            )
        return tuple(result)

    def before(self, model: nn.Module, closure: Callable | None) -> None:
        """Called by ``KFACPreconditioner.step`` before it changes any gradient; every
        check that can fail runs before the first change."""
        batch = self._call_closure(closure)
        named = self._params(model)
        params = [p for _, p in named]
        theta = self._flat(params)
        delta = self._observed_change([n for n, _ in named], theta, params)
        # the checks passed: from here on, state changes
        self._batch, self._delta, self._theta = batch, delta, theta
        self._raw = self._flat(_grad(p) for p in params)
        if self.weight_decay:
            torch._foreach_add_([_grad(p) for p in params], [p.detach() for p in params], alpha=self.weight_decay)
        self._grads = self._flat(_grad(p) for p in params)

    def restore(self, model: nn.Module) -> None:
        """Put back every ``.grad`` as ``before`` found it (a step that failed midway)."""
        if self._raw is None:
            return
        params = [p for _, p in self._params(model)]
        for p, r in zip(params, self._raw.split([p.numel() for p in params])):
            _grad(p).copy_(r.view_as(p))
        self._raw = self._grads = self._theta = self._delta = self._batch = None

    def after(self, model: nn.Module) -> None:
        """Called by ``KFACPreconditioner.step`` once the registered gradients are
        preconditioned: writes ``.grad = -(αΔ + μδ)``."""
        named = self._params(model)
        names, params = [n for n, _ in named], [p for _, p in named]
        g, theta = self._grads, self._theta
        assert g is not None and theta is not None and self._batch is not None  # before() set them
        direction = -self._flat(_grad(p) for p in params)
        dirs = torch.stack([direction] if self._delta is None else [direction, self._delta])
        inputs, loss_of_outputs = self._batch
        curvature, loss = curvature_products(model, names, params, dirs, inputs, loss_of_outputs)
        k = dirs.shape[0]
        norms, linear = dirs @ dirs.T, dirs @ g
        eta = self.weight_decay
        coeffs, how = solve_step(curvature, norms, linear, self.damping + eta)
        if how != "full":
            self.fallbacks[how] += 1
            warnings.warn(
                f"AutoStep: the quadratic model's {k}x{k} system is not positive "
                f"definite at step {self.steps}; "
                + (
                    "momentum is left out of this step (mu = 0)"
                    if how == "1d"
                    else "this step is skipped (every gradient set to zero)"
                ),
                stacklevel=3,
            )
        if coeffs is None:
            coeffs = torch.zeros(k, dtype=torch.float64)
        coeffs = coeffs.to(dirs.device)
        self.last_alpha, self.last_mu = float(coeffs[0]), float(coeffs[1]) if k == 2 else 0.0
        step = coeffs @ dirs
        system = curvature + (self.damping + eta) * norms
        self.last_predicted = float(linear @ coeffs + 0.5 * coeffs @ system @ coeffs)
        rho = None
        if self.interval and self.steps % self.interval == 0 and how != "skip":
            undamped = float(linear @ coeffs + 0.5 * coeffs @ (curvature + eta * norms) @ coeffs)
            h_before = float(loss) + 0.5 * eta * float(theta @ theta)
            rho = self._ratio(model, names, params, step, h_before, undamped)
        for p, s in zip(params, step.split([p.numel() for p in params])):
            _grad(p).copy_(s.neg().view_as(p))
        # the step is written: commit this step's state
        if rho is not None:
            self.lm.update(rho)
        self._names, self._prev, self._last = names, theta, step
        self._shapes = {n: tuple(p.shape) for n, p in named}
        self._raw = self._grads = self._theta = self._delta = self._batch = None
        self.steps += 1

    def _observed_change(
        self, names: list[str], theta: torch.Tensor, params: list[torch.Tensor]
    ) -> torch.Tensor | None:
        """δ = θ now - θ at the last step (None: no last step, or other parameters had
        gradients then); refuses an optimizer that did not apply the step written then."""
        if self._prev is None or names != self._names:
            return None
        assert self._last is not None  # set with _prev
        delta = theta - self._prev
        err = float(torch.linalg.vector_norm(delta - self._last))
        size = float(torch.linalg.vector_norm(self._last))
        scale = float(torch.linalg.vector_norm(theta))
        # Rounding of θ + v in the parameters' dtype, plus a relative margin.
        eps = max(torch.finfo(p.dtype).eps for p in params)
        if err > 1e-3 * size + 8 * eps * scale:
            raise RuntimeError(
                "AutoStep: the parameters did not move by the step KFACPreconditioner.step() "
                f"wrote into .grad (off by {err:.3g}, step norm {size:.3g}); apply it with "
                "torch.optim.SGD(params, lr=1.0, momentum=0, weight_decay=0) and nothing "
                "between step() and optimizer.step()"
            )
        return delta

    def _ratio(
        self,
        model: nn.Module,
        names: list[str],
        params: list[torch.Tensor],
        step: torch.Tensor,
        h_before: float,
        model_change: float,
    ) -> float:
        """ρ = (h(θ + v) - h(θ)) / M(v) on this step's batch, θ + v computed as SGD(lr=1)
        will compute it (θ - (-v) in the parameters' dtype)."""
        assert self._batch is not None  # called by after(), within the step
        inputs, loss_of_outputs = self._batch
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        moved = {
            n: torch.add(p.detach(), s.neg().view_as(p).to(p.dtype), alpha=-1.0)
            for n, p, s in zip(names, params, step.split([p.numel() for p in params]))
        }
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        with torch.no_grad(), batch_statistics(model):
            out = _one_tensor(functional_call(model, {**moved, **buffers}, args))
            loss = float(loss_of_outputs(out))
        h_after = loss + 0.5 * self.weight_decay * sum(float(t.double().pow(2).sum()) for t in moved.values())
        if model_change >= 0 or not math.isfinite(h_after):
            return -math.inf
        return (h_after - h_before) / model_change

    # ------------------------------------------------------------------ state
    def _by_name(self, flat: torch.Tensor, model_shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
        assert self._names is not None  # set with _prev, which the caller holds
        sizes = [math.prod(model_shapes[n]) for n in self._names]
        return {n: t.reshape(model_shapes[n]).clone() for n, t in zip(self._names, flat.split(sizes))}

    def state_dict(self) -> dict:
        """λ's state, counters, and (by parameter name, float64) θ and the step written at
        the last step, from which the next step's δ follows."""
        state = {
            "damping": self.lm.state_dict(),
            "steps": self.steps,
            "last_alpha": self.last_alpha,
            "last_mu": self.last_mu,
            "fallbacks": dict(self.fallbacks),
            "previous_params": None,
            "last_step": None,
        }
        if self._prev is not None:
            shapes = self._shapes
            state["previous_params"] = self._by_name(self._prev, shapes)
            assert self._last is not None  # set with _prev
            state["last_step"] = self._by_name(self._last, shapes)
        return state

    def load_state_dict(self, state: dict, model: nn.Module) -> None:
        """Validated against ``model``'s parameters before anything is assigned (λ's
        measurement ends inside its step: none is ever pending between steps)."""
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        # as loaded: checked below
        prev: Any = state.get("previous_params")
        last: Any = state.get("last_step")
        if (prev is None) != (last is None) or (prev is not None and list(prev) != list(last)):
            raise ValueError(
                "AutoStep.load_state_dict: previous_params and last_step must name the same parameters, or both be None"
            )
        for key, saved in (("previous_params", prev), ("last_step", last)):
            for n, t in (saved or {}).items():
                if n not in shapes or not isinstance(t, torch.Tensor) or tuple(t.shape) != shapes[n]:
                    raise ValueError(f"AutoStep.load_state_dict: {key}[{n!r}] does not match a parameter of the model")
        self.lm.load_state_dict(state["damping"])  # checks it before assigning anything
        self.steps = int(state.get("steps", 0))
        self.last_alpha, self.last_mu = state.get("last_alpha"), state.get("last_mu")
        self.fallbacks = dict(state.get("fallbacks", {"1d": 0, "skip": 0}))
        self._shapes = shapes
        device = next(model.parameters()).device
        if prev is None:
            self._names, self._prev, self._last = None, None, None
        else:
            self._names = list(prev)
            self._prev = self._flat(prev.values()).to(device)
            self._last = self._flat(last.values()).to(device)
        self._raw = self._grads = self._theta = self._delta = self._batch = None

    def reset(self) -> None:
        """Forget the last step (no momentum at the next one); λ is kept."""
        self.steps = 0
        self.last_alpha = self.last_mu = None
        self._names = self._prev = self._last = None
        self._raw = self._grads = self._theta = self._delta = self._batch = None
