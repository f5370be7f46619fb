"""Per-layer K-FAC state: hooks, factor capture, gradient matrix get/set.

A :class:`KFACLayer` wraps one ``nn.Linear`` or ``nn.Conv2d``; other layer
types subclass it in a file of their own that registers its factory with
:func:`kfac_ext.layers.registry.builtin_layer_type` (docs/design.md §2a). While capture
is on (the preconditioner turns it on for steps that update factors), a
forward hook turns the layer input into this micro-batch's activation factor
contribution at once, and registers a tensor hook on the layer output that
does the same for the gradient factor during backward. Only the small d×d
sums are kept, never the activations.

Why a forward hook plus a tensor hook on the output instead of
``register_full_backward_hook``: the full backward hook wraps the output in a
custom autograd Function, and any in-place op on it afterwards (the usual
``nn.ReLU(inplace=True)`` after a conv) raises; it also costs a wrapper on
every step, not only on capture steps. A tensor hook sees the same gradient
(the grad w.r.t. the layer output) and is only registered when capturing.

Scaling (docs/design.md §2): A = āᵀā/n with the ones column for the bias; for
Conv2d ā are the im2col patches divided by T (output positions) per entry,
and G = gᵀg/n with g = (N·T, C_out) divided by T per entry. All factor math
runs through :mod:`kfac_ext.ops`, in the factor dtype (float32 for bf16/fp16
activations), accumulated over micro-batches and averaged in
:meth:`KFACLayer.batch_factors`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, cast

import torch
import torch.nn.grad
from torch import nn

from kfac_ext import ops
from kfac_ext.layers import conv_patches

# The size limit of one dense factor while layers are built (docs/design.md §2a): a
# context variable, so layer types (a user's included) honour it without passing it on.
_MAX_FACTOR_BYTES: ContextVar[int | None] = ContextVar("max_factor_bytes", default=None)


@contextlib.contextmanager
def factor_size_limit(max_bytes: int | None) -> Iterator[None]:
    """Layers built inside hold a factor whose dense size n²·itemsize exceeds
    ``max_bytes`` as its diagonal (every built-in type, Conv2d included)."""
    token = _MAX_FACTOR_BYTES.set(max_bytes)
    try:
        yield
    finally:
        _MAX_FACTOR_BYTES.reset(token)


def has_trainable_weight(module: nn.Module) -> bool:
    """Whether a Linear/Conv2d can be registered (groups are supported; a frozen weight is not)."""
    weight = cast(torch.Tensor | None, module.weight)
    return weight is not None and weight.requires_grad


def is_computed_weight(module: nn.Module) -> bool:
    """Whether the weight is computed from other parameters (``weight_norm``,
    ``spectral_norm``, any ``torch.nn.utils.parametrize``): it is no leaf and gets no
    ``.grad`` of its own, so K-FAC has no gradient to precondition."""
    weight = getattr(module, "weight", None)
    return weight is not None and not isinstance(weight, nn.Parameter)


def _checkpoint_recomputation() -> bool:
    """Whether this forward is ``torch.utils.checkpoint``'s non-reentrant recomputation
    (inside backward): the original forward captured the activations already, and the
    recomputed output's gradient never reaches a hook, so it must not count again. It
    runs under torch's private ``_recomputation_hook`` saved-tensor hooks; if torch
    changes that, this says False (the capture then warns about 2 forwards, as before)."""
    if torch._C._current_graph_task_id() == -1:  # not inside a backward pass: cheap exit
        return False
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", lambda _: None)(False)
    return top is not None and getattr(top[0], "__qualname__", "").startswith("_recomputation_hook")


def _in_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the call when it is a no-op (the usual case: a float32
    model's rows in float32 factors). A capture step makes a few of these per layer,
    and on a small model such per-call costs add up (docs/cost-model.md)."""
    return t if t.dtype == dtype else t.to(dtype)


class KFACLayer:
    """K-FAC state of one registered module."""

    #: Whether ``grad_tensors`` gives views the fused op may overwrite in place (a
    #: type whose Γ is not a reshape of its weight, e.g. a transposed one, says False).
    direct_grads = True

    def __init__(
        self,
        name: str,
        module: nn.Module,
        factor_dtype: torch.dtype | None = None,
        group: int | None = None,
        *,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        in_dim: int | None = None,
        out_dim: int | None = None,
        a_diagonal: bool = False,
        g_diagonal: bool = False,
    ):
        self.name = name
        self.module = module
        geometry = self.conv_geometry()
        self.is_conv = geometry is not None
        if geometry is not None and geometry.groups > 1:
            self.per_use_capable = False  # a group's block of a tied weight: not supported
        # The parameters this layer preconditions: the module's own unless a layer
        # type names others (an attention block's slice of a packed weight).
        if weight is None:
            weight = cast(torch.Tensor, module.weight)
        self.weight: torch.Tensor = weight
        bias = getattr(module, "bias", None) if bias is None and in_dim is None else bias
        # What to watch after registration (docs/faults.md): the module's own weight and
        # bias attributes where this layer preconditions them (a parametrization or a
        # resize replaces those attributes), else the tensors the layer type gave.
        self._owns_module_weight = weight is getattr(module, "weight", None)
        self._registered_bias = bias
        self.weight_shape = tuple(weight.shape)
        # A frozen bias is left out of the factor (K-FAC of the weight alone).
        self.has_bias = bias is not None and bias.requires_grad
        self.bias: torch.Tensor | None = bias if self.has_bias else None
        # A grouped conv is block-diagonal: group k maps input channels k*C_in/groups...
        # to output channels k*C_out/groups..., so each group is a layer of its own.
        self.group = group
        if out_dim is not None:
            self.g_dim = out_dim
        else:
            self.g_dim = (
                weight.shape[0]
                if group is None
                else weight.shape[0] // cast(conv_patches.ConvGeometry, geometry).groups
            )  # groups: a conv's
        self.out_slice = (
            slice(0, weight.shape[0]) if group is None else slice(group * self.g_dim, (group + 1) * self.g_dim)
        )
        self.in_slice = None if group is None else slice(group * weight.shape[1], (group + 1) * weight.shape[1])
        if in_dim is None:
            in_dim = weight[0].numel()  # in_features or (C_in/groups)*kh*kw
        self.a_dim = in_dim + int(self.has_bias)
        if factor_dtype is None:
            factor_dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.factor_dtype = factor_dtype
        self.device = weight.device
        # A diagonal factor is held as its diagonal (a 1-D tensor): an Embedding's A,
        # or a factor over the preconditioner's size limit (docs/design.md §2a),
        # decided here, before anything of that size is allocated.
        limit = _MAX_FACTOR_BYTES.get()
        itemsize = torch.empty((), dtype=factor_dtype).element_size()
        self.over_limit = [
            w
            for w, n, diag in (("A", self.a_dim, a_diagonal), ("G", self.g_dim, g_diagonal))
            if limit is not None and not diag and n * n * itemsize > limit
        ]
        self.a_diagonal = a_diagonal or "A" in self.over_limit
        self.g_diagonal = g_diagonal or "G" in self.over_limit
        # Running averages (start at the identity) and micro-batch sums.
        self.A = self._identity(self.a_dim, self.a_diagonal)
        self.G = self._identity(self.g_dim, self.g_diagonal)
        self.A_sum: torch.Tensor | None = None
        self.G_sum: torch.Tensor | None = None
        self.a_count = 0
        self.g_count = 0
        self.factor_updates = 0  # how many running-average updates happened
        self.ever_fired = False  # a forward pass was captured at least once
        self.ever_called = False  # the forward hook ran at all (even when not capturing)
        self._capture = False
        self._parked = False  # the forward hook is off while not capturing (see `capture`)
        self._detached = False  # remove_hooks() was called: nothing is re-installed
        # A micro-batch with no rows (an empty batch) adds nothing: skip_empty leaves it
        # out and counts it in empty_batches; otherwise (set by the preconditioner when
        # ranks must reduce the same factors) it counts as a zero contribution.
        self.skip_empty = True
        self.empty_batches = 0
        # Called after each captured backward pass (the preconditioner uses it to
        # start the factor all-reduce while the rest of backward still runs).
        self.on_gradient_captured: Callable[[KFACLayer], None] | None = None
        # Tied weights (docs/design.md §2a): a layer whose weight another registered
        # layer also uses keeps its own use's gradient Γ_u = gᵀ[a, 1] (every step, not
        # only capture steps), which the preconditioner preconditions with this layer's
        # factors and sums over the uses.
        self.tied = False
        self.use_grad: torch.Tensor | None = None
        self._handles = self._install_hooks()

    def conv_geometry(self) -> conv_patches.ConvGeometry | None:
        """The conv whose im2col patches are this layer's rows (None: not a conv). A type
        for another conv gives its geometry as an ``nn.Conv2d``'s and overrides
        :meth:`as_image` to give its tensors that layout."""
        return self.module if isinstance(self.module, nn.Conv2d) else None

    def as_image(self, t: torch.Tensor) -> torch.Tensor:
        """A conv's input or output gradient in ``nn.Conv2d``'s layout, (N, C, H, W) or
        (C, H, W) unbatched (here: unchanged)."""
        return t

    def _geometry(self) -> conv_patches.ConvGeometry:
        geometry = self.conv_geometry()
        assert geometry is not None  # only called on the conv paths (is_conv)
        return geometry

    def _install_hooks(self) -> list:
        """The hooks that feed this layer (removable handles)."""
        return [self.module.register_forward_hook(self._forward_hook)]

    def _identity(self, n: int, diagonal: bool) -> torch.Tensor:
        if diagonal:
            return torch.ones(n, dtype=self.factor_dtype, device=self.device)
        return torch.eye(n, dtype=self.factor_dtype, device=self.device)

    def identity_factor(self, which: str) -> torch.Tensor:
        """The identity of factor ``which`` ('A' or 'G') in its storage (dense or diagonal)."""
        return self._identity(*((self.a_dim, self.a_diagonal) if which == "A" else (self.g_dim, self.g_diagonal)))

    def factor_numels(self) -> tuple[int, int]:
        """Elements of A and G as stored (n for a diagonal factor, n² for a dense one)."""
        return (self.a_dim if self.a_diagonal else self.a_dim**2, self.g_dim if self.g_diagonal else self.g_dim**2)

    # ----------------------------------------------------------- hooks ----
    @property
    def capture(self) -> bool:
        """Whether forward and backward passes now feed the batch factors.

        While it is False the plain forward hook has nothing to do, yet a module with a
        forward hook takes torch's slower call path (~0.1 ms a step on the 8-layer digits
        autoencoder, docs/cost-model.md), so the hook is taken off then and put back when
        capture turns on. Only where that cannot change anything: the base class's own
        hook, a layer that is not tied (its hook works on every step), whose hook has run
        once (``ever_called`` is settled), and whose module has no other forward hook (put
        back first in line, it keeps its place)."""
        return self._capture

    @capture.setter
    def capture(self, on: bool) -> None:
        self._capture = on
        if on:
            if self._parked:
                self._parked = False
                if not self._detached:
                    self._handles = [self.module.register_forward_hook(self._forward_hook, prepend=True)]
        elif not self._parked and self._can_park():
            self._handles[0].remove()
            self._handles = []
            self._parked = True

    def _can_park(self) -> bool:
        handles = getattr(self, "_handles", [])
        return (
            type(self)._install_hooks is KFACLayer._install_hooks
            and not self.tied
            and self.ever_called
            and len(handles) == 1
            and list(self.module._forward_hooks) == [handles[0].id]
        )

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._parked = False
        self._detached = True

    def _forward_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.ever_called = True
        if (
            self.tied and torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad
        ):  # this use's share of a tied weight's gradient
            if self.weight.grad is None:  # zero_grad() since the last step(): start afresh
                self.use_grad = None
            x = args[0].detach()
            output.register_hook(lambda g, x=x: self._add_use_grad(x, g.detach()))
        if not self.capture or not torch.is_grad_enabled() or not module.training or _checkpoint_recomputation():
            return
        current = self.current_params()[0]
        if current is None or tuple(current.shape) != self.weight_shape:
            # Checked here, not deep in a kernel: the factors have the registered size.
            got = None if current is None else tuple(current.shape)
            raise RuntimeError(
                f"KFACPreconditioner: layer {self.name!r} has weight shape {got}, "
                f"registered with {self.weight_shape} (resized after the "
                "preconditioner was built?); build the preconditioner once the "
                "model is final"
            )
        x = args[0]
        if x.numel() == 0 and self.skip_empty:
            self.empty_batches += 1
            return
        with torch.no_grad():
            self._add_activation(x.detach())
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._grad_hook)

    def _grad_hook(self, grad: torch.Tensor) -> None:
        with torch.no_grad():
            self._add_gradient(grad.detach())
            if self.on_gradient_captured is not None:
                self.on_gradient_captured(self)

    def _add_activation(self, x: torch.Tensor) -> None:
        x = _in_dtype(x, self.factor_dtype)
        # The first capture of a step overwrites the sum (beta 0): no zeroing pass.
        first = self.a_count == 0
        if x.numel() == 0:  # an empty batch, counted as a zero contribution
            if first:
                self.A_sum = torch.zeros_like(self.A)
        elif self.is_conv:
            m = self._geometry()
            x = self.as_image(x)
            if x.dim() == 3:  # unbatched (C, H, W) input
                x = x.unsqueeze(0)
            if self.in_slice is not None:
                x = x[:, self.in_slice]
            x, padding = conv_patches.padded_input(m, x)
            if self.kfac_approx == "reduce":  # one row per example (docs/design.md §2a)
                self.add_activation_rows(conv_patches.mean_patches(x, m.kernel_size, m.stride, padding, m.dilation))
                return
            if self.a_diagonal:
                a = conv_patches.act_diagonal(x, m.kernel_size, m.stride, padding, m.dilation, self.has_bias)
            else:
                a = ops.conv2d_act_factor(x.contiguous(), m.kernel_size, m.stride, padding, m.dilation, self.has_bias)
            if first:
                self.A_sum = a  # a fresh tensor the op returned
            else:
                assert self.A_sum is not None  # set by the step's first capture
                self.A_sum.add_(a)
        else:
            self.add_activation_rows(self.rows(x, "mean"))
            return
        self.a_count += 1
        self.ever_fired = True

    def _add_gradient(self, g: torch.Tensor) -> None:
        g = _in_dtype(g, self.factor_dtype)
        if self.G_sum is None:
            self.G_sum = torch.empty_like(self.G)
        beta = 0.0 if self.g_count == 0 else 1.0
        if g.numel() == 0:  # an empty batch, counted as a zero contribution
            if beta == 0.0:
                self.G_sum.zero_()
        elif self.is_conv:
            g = self.as_image(g)
            if g.dim() == 3:
                g = g.unsqueeze(0)
            if self.group is not None:
                g = g[:, self.out_slice]
            if self.kfac_approx == "reduce":  # one row per example: summed over positions
                self.add_gradient_rows(g.sum((2, 3)))
                return
            n, c = g.shape[:2]
            t = g.shape[2] * g.shape[3]
            # rows n*t, each entry divided by t: alpha = 1 / (n*t * t^2)
            if self.g_diagonal:
                d = g.square().sum((0, 2, 3)).div_(n * t * t * t)
                self.G_sum.copy_(d) if beta == 0.0 else self.G_sum.add_(d)
            else:
                ops.channel_cov_update_(self.G_sum, g.reshape(n, c, t), 1.0 / (n * t * t * t), beta)
        else:
            self.add_gradient_rows(self.rows(g, "sum"))
            return
        self.g_count += 1

    #: 'expand' (every position a row) or 'reduce' (one row per sequence: inputs
    #: averaged, output gradients summed over the positions); set by the preconditioner.
    kfac_approx = "expand"

    #: The dimensions a 'reduce' folds: all between the batch (first) and the features.
    #: A type that sees its rows in another layout (attention: (L, N, E)) overrides it.
    def sequence_dims(self, t: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(1, t.dim() - 1))

    def rows(self, t: torch.Tensor, fold: str) -> torch.Tensor:
        """``t`` (…, features) as factor rows: all leading dims flattened ('expand'), or
        the sequence dims folded first ('reduce': ``fold`` is 'mean' for inputs, 'sum'
        for output gradients; Eschenhagen et al. 2023)."""
        if self.kfac_approx == "reduce" and t.dim() >= 3:
            dims = self.sequence_dims(t)
            t = t.mean(dims) if fold == "mean" else t.sum(dims)
        return t if t.dim() == 2 else t.reshape(-1, t.shape[-1])

    def add_activation_rows(self, rows: torch.Tensor) -> None:
        """Add one micro-batch's A = [a, 1]ᵀ[a, 1]/n (or its diagonal) from rows (n, in)."""
        rows = _in_dtype(rows, self.factor_dtype)
        first = self.a_count == 0
        if self.A_sum is None:
            self.A_sum = torch.empty_like(self.A)
        if self.a_diagonal:
            d = rows.square().sum(0) / max(rows.shape[0], 1)
            if self.has_bias:
                d = torch.cat([d, d.new_ones(1)])
            self.A_sum.copy_(d) if first else self.A_sum.add_(d)
        else:
            ops.cov_update_(self.A_sum, rows, 1.0 / max(rows.shape[0], 1), 0.0 if first else 1.0, self.has_bias)
        self.a_count += 1
        self.ever_fired = True

    def add_gradient_rows(self, rows: torch.Tensor) -> None:
        """Add one micro-batch's G = gᵀg/n (or its diagonal) from rows (n, out)."""
        rows = _in_dtype(rows, self.factor_dtype)
        first = self.g_count == 0
        if self.G_sum is None:
            self.G_sum = torch.empty_like(self.G)
        if self.g_diagonal:
            d = rows.square().sum(0) / max(rows.shape[0], 1)
            self.G_sum.copy_(d) if first else self.G_sum.add_(d)
        else:
            ops.cov_update_(self.G_sum, rows, 1.0 / max(rows.shape[0], 1), 0.0 if first else 1.0)
        self.g_count += 1

    #: Whether this type can keep its own use's gradient (a tied weight's per-use sum).
    per_use_capable = True

    def _add_use_grad(self, x: torch.Tensor, g: torch.Tensor) -> None:
        """Γ_u += g_rowsᵀ [x_rows, 1]: this use's contribution to the weight's gradient."""
        with torch.no_grad():
            if self.is_conv:  # ∂L/∂W of this use alone: the conv's own weight gradient
                m = self._geometry()
                x, g = self.as_image(x), self.as_image(g)
                x, g = (x.unsqueeze(0), g.unsqueeze(0)) if x.dim() == 3 else (x, g)
                x, padding = conv_patches.padded_input(m, x.to(self.factor_dtype))
                g = g.to(self.factor_dtype)
                shape = [*self.weight_shape[:2], *m.kernel_size]  # (out, in/groups, kh, kw)
                w = torch.nn.grad.conv2d_weight(x, shape, g, m.stride, padding, m.dilation)
                gamma = w.reshape(self.g_dim, -1)
                if self.has_bias:
                    gamma = torch.cat([gamma, g.sum((0, 2, 3)).unsqueeze(1)], dim=1)
                self._accumulate_use(gamma)
                return
            x2d = x.reshape(-1, x.shape[-1]).to(self.factor_dtype)
            if self.has_bias:
                x2d = torch.cat([x2d, x2d.new_ones(x2d.shape[0], 1)], dim=1)
            self._accumulate_use(g.reshape(-1, g.shape[-1]).to(self.factor_dtype).T @ x2d)

    def _accumulate_use(self, gamma: torch.Tensor) -> None:
        if self.use_grad is None:
            self.use_grad = gamma
        else:
            self.use_grad.add_(gamma)

    def covers_weight(self) -> bool:
        """Whether this layer's block is its whole weight (not a group or a slice)."""
        return self.g_dim * (self.a_dim - int(self.has_bias)) == self.weight.numel()

    # --------------------------------------------------------- factors ----
    def has_batch(self) -> bool:
        return self.a_count > 0 and self.g_count > 0

    def batch_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's A and G averaged over the captured micro-batches (in place)."""
        a, g = self.A_sum, self.G_sum
        assert a is not None and g is not None  # called with a captured batch (has_batch())
        if self.a_count > 1:
            a.div_(self.a_count)
        if self.g_count > 1:
            g.div_(self.g_count)
        return a, g

    def clear_batch(self) -> None:
        """Forget the captured micro-batches: the next capture overwrites the sums."""
        self.a_count = self.g_count = self.empty_batches = 0

    def update_running(self, a_batch: torch.Tensor, g_batch: torch.Tensor, decay: float) -> None:
        """A <- decay*A + (1-decay)*A_batch, same for G (one pass each)."""
        self.A.lerp_(a_batch, 1.0 - decay)
        self.G.lerp_(g_batch, 1.0 - decay)
        self.factor_updates += 1

    def drop_bias(self) -> None:
        """Leave the bias out of the factor from now on (it was frozen after registration).

        The bias is the last row/column of A (its ones column), and the weight-only
        running average is exactly the rest, for Linear and Conv2d alike: slicing it
        off gives the factor K-FAC of the weight alone would have kept."""
        self.has_bias = False
        self.bias = None
        self.a_dim -= 1
        rows = slice(None, -1)
        keep = rows if self.a_diagonal else (rows, rows)  # a diagonal A is held as a vector
        self.A = self.A[keep].clone()
        if self.A_sum is not None:
            self.A_sum = self.A_sum[keep].clone()

    # ------------------------------------------------------- gradients ----
    def params(self) -> list[torch.Tensor]:
        """The parameters whose gradients this layer reads and writes."""
        return [self.weight] + ([self._bias()] if self.has_bias else [])

    def _bias(self) -> torch.Tensor:
        """The bias of a layer that has one (has_bias)."""
        assert self.bias is not None  # has_bias and bias are set together
        return self.bias

    def _grads(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight.grad, bias.grad or None without a bias): read only where the layer
        has its gradients (has_grad())."""
        wg = self.weight.grad
        bg = self._bias().grad if self.has_bias else None
        assert wg is not None and (bg is not None or not self.has_bias)
        return wg, bg

    def has_grad(self, current: tuple[torch.Tensor | None, torch.Tensor | None] | None = None) -> bool:
        """Whether the weight (and a bias in the factor) has a gradient to precondition;
        ``current``: :meth:`current_params` if the caller has it already."""
        weight, bias = self.current_params() if current is None else current
        # A weight frozen (or made computed) after registration is not preconditioned,
        # even with a stale zero .grad left by zero_grad(set_to_none=False).
        if not isinstance(weight, nn.Parameter) or not weight.requires_grad or weight.grad is None:
            return False
        return not self.has_bias or (bias is not None and bias.grad is not None)

    def current_params(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(weight, bias) as the model holds them now: the module's attributes where this
        layer preconditions them (they may have been frozen, parametrized or replaced
        since registration), else the tensors registered."""
        if self._owns_module_weight:
            return getattr(self.module, "weight", None), getattr(self.module, "bias", None)
        return self.weight, self._registered_bias

    def weight_matrix(self, w: torch.Tensor) -> torch.Tensor:
        """This layer's (out, in) block of a weight-shaped tensor (a view where possible)."""
        return w[self.out_slice].reshape(self.g_dim, -1)

    def write_weight(self, grad: torch.Tensor, p: torch.Tensor) -> None:
        """Write an (out, in) matrix into this layer's block of a weight-shaped ``grad``."""
        w = grad[self.out_slice]
        w.copy_(p.reshape(w.shape))

    def bias_rows(self, b: torch.Tensor) -> torch.Tensor:
        return self._rows_of(b)

    def _rows_of(self, t: torch.Tensor) -> torch.Tensor:
        """``t[self.out_slice]``, or ``t`` itself when that slice is all of its rows (an
        ungrouped layer: the usual case). The same elements either way; skipping the view
        saves a tensor op per gradient on every step (docs/cost-model.md)."""
        s = self.out_slice
        if s.start == 0 and s.step is None and s.stop == t.shape[0]:
            return t
        return t[s]

    def grad_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """Γ: (out, in[+1]) with the bias gradient as the last column."""
        wg, bg = self._grads()
        w = self.weight_matrix(wg)
        if bg is not None:
            return torch.cat([w, self.bias_rows(bg).reshape(-1, 1)], dim=1).to(dtype)
        return w.to(dtype)

    def grad_tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight gradient, bias gradient or None) of this layer's rows, as
        views of the parameters' ``.grad``: what ``ops.precondition_grads_``
        reads and overwrites in place (only when ``direct_grads``)."""
        wg, bg = self._grads()
        return self._rows_of(wg), (self.bias_rows(bg) if bg is not None else None)

    def set_grad(self, p: torch.Tensor) -> None:
        """Write P back into weight.grad (and bias.grad), in the parameters' dtype."""
        wg, bg = self._grads()
        if bg is not None:
            self.write_weight(wg, p[:, :-1])
            self.bias_rows(bg).copy_(p[:, -1])
        else:
            self.write_weight(wg, p)

    def __repr__(self) -> str:
        kind = type(self.module).__name__

        def dims(n, diagonal):
            return f"{n} (diagonal)" if diagonal else f"{n}x{n}"

        return f"{self.name} ({kind}): A {dims(self.a_dim, self.a_diagonal)}, G {dims(self.g_dim, self.g_diagonal)}"
