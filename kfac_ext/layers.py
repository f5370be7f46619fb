"""Per-layer K-FAC state: hooks, factor capture, gradient matrix get/set.

A :class:`KFACLayer` wraps one ``nn.Linear`` or ``nn.Conv2d``. While capture
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

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from kfac_ext import ops

SUPPORTED = (nn.Linear, nn.Conv2d)


def has_trainable_weight(module: nn.Module) -> bool:
    """Whether a Linear/Conv2d can be registered (groups are supported; a frozen weight is not)."""
    return module.weight is not None and module.weight.requires_grad


def is_computed_weight(module: nn.Module) -> bool:
    """Whether the weight is computed from other parameters (``weight_norm``,
    ``spectral_norm``, any ``torch.nn.utils.parametrize``): it is no leaf and gets no
    ``.grad`` of its own, so K-FAC has no gradient to precondition."""
    return module.weight is not None and not isinstance(module.weight, nn.Parameter)


def _checkpoint_recomputation() -> bool:
    """Whether this forward is ``torch.utils.checkpoint``'s non-reentrant recomputation
    (inside backward): the original forward captured the activations already, and the
    recomputed output's gradient never reaches a hook, so it must not count again. It
    runs under torch's private ``_recomputation_hook`` saved-tensor hooks; if torch
    changes that, this says False (the capture then warns about 2 forwards, as before)."""
    if torch._C._current_graph_task_id() == -1:  # not inside a backward pass: cheap exit
        return False
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", lambda _: None)(False)
    return top is not None and \
        getattr(top[0], "__qualname__", "").startswith("_recomputation_hook")


def _conv_explicit_padding(module: nn.Conv2d) -> Tuple[int, int, int, int]:
    """(left, right, top, bottom) zero/mode padding the conv applies to its input."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        # 'same': total d*(k-1) per dim, the extra pixel on the right/bottom (as torch does).
        pads = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = module.padding
    return (pw, pw, ph, ph)


class KFACLayer:
    """K-FAC state of one registered module."""

    def __init__(self, name: str, module: nn.Module, factor_dtype: Optional[torch.dtype] = None,
                 group: Optional[int] = None):
        self.name = name
        self.module = module
        self.is_conv = isinstance(module, nn.Conv2d)
        weight = module.weight
        self.weight_shape = tuple(weight.shape)
        # A frozen bias is left out of the factor (K-FAC of the weight alone).
        self.has_bias = module.bias is not None and module.bias.requires_grad
        # A grouped conv is block-diagonal: group k maps input channels k*C_in/groups...
        # to output channels k*C_out/groups..., so each group is a layer of its own.
        self.group = group
        self.g_dim = weight.shape[0] if group is None else weight.shape[0] // module.groups
        self.out_slice = slice(0, weight.shape[0]) if group is None else \
            slice(group * self.g_dim, (group + 1) * self.g_dim)
        self.in_slice = None if group is None else \
            slice(group * weight.shape[1], (group + 1) * weight.shape[1])
        in_dim = weight[0].numel()  # in_features or (C_in/groups)*kh*kw
        self.a_dim = in_dim + int(self.has_bias)
        if factor_dtype is None:
            factor_dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) \
                else torch.float32
        self.factor_dtype = factor_dtype
        self.device = weight.device
        # Running averages (start at the identity) and micro-batch sums.
        self.A = torch.eye(self.a_dim, dtype=factor_dtype, device=self.device)
        self.G = torch.eye(self.g_dim, dtype=factor_dtype, device=self.device)
        self.A_sum: Optional[torch.Tensor] = None
        self.G_sum: Optional[torch.Tensor] = None
        self.a_count = 0
        self.g_count = 0
        self.factor_updates = 0  # how many running-average updates happened
        self.ever_fired = False     # a forward pass was captured at least once
        self.ever_called = False    # the forward hook ran at all (even when not capturing)
        self.capture = False
        # A micro-batch with no rows (an empty batch) adds nothing: skip_empty leaves it
        # out and counts it in empty_batches; otherwise (set by the preconditioner when
        # ranks must reduce the same factors) it counts as a zero contribution.
        self.skip_empty = True
        self.empty_batches = 0
        # Called after each captured backward pass (the preconditioner uses it to
        # start the factor all-reduce while the rest of backward still runs).
        self.on_gradient_captured: Optional[Callable[["KFACLayer"], None]] = None
        self._handles = [module.register_forward_hook(self._forward_hook)]

    # ----------------------------------------------------------- hooks ----
    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _forward_hook(self, module, args, output) -> None:
        self.ever_called = True
        if not self.capture or not torch.is_grad_enabled() or not module.training \
                or _checkpoint_recomputation():
            return
        if module.weight is None or tuple(module.weight.shape) != self.weight_shape:
            # Checked here, not deep in a kernel: the factors have the registered size.
            got = None if module.weight is None else tuple(module.weight.shape)
            raise RuntimeError(f"KFACPreconditioner: layer {self.name!r} has weight shape {got}, "
                               f"registered with {self.weight_shape} (resized after the "
                               "preconditioner was built?); build the preconditioner once the "
                               "model is final")
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
        x = x.to(self.factor_dtype)
        # The first capture of a step overwrites the sum (beta 0): no zeroing pass.
        first = self.a_count == 0
        m = self.module
        if x.numel() == 0:  # an empty batch, counted as a zero contribution
            if first:
                self.A_sum = torch.zeros_like(self.A)
        elif self.is_conv:
            if x.dim() == 3:  # unbatched (C, H, W) input
                x = x.unsqueeze(0)
            if self.in_slice is not None:
                x = x[:, self.in_slice]
            left, right, top, bottom = _conv_explicit_padding(m)
            if m.padding_mode != "zeros" or left != right or top != bottom:
                mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
                x = F.pad(x, (left, right, top, bottom), mode=mode)
                padding = (0, 0)
            else:
                padding = (top, left)
            a = ops.conv2d_act_factor(x.contiguous(), m.kernel_size, m.stride, padding,
                                      m.dilation, self.has_bias)
            if first:
                self.A_sum = a  # a fresh tensor the op returned
            else:
                self.A_sum.add_(a)
        else:
            if self.A_sum is None:
                self.A_sum = torch.empty_like(self.A)
            x2d = x.reshape(-1, x.shape[-1])
            ops.cov_update_(self.A_sum, x2d, 1.0 / max(x2d.shape[0], 1), 0.0 if first else 1.0,
                            self.has_bias)
        self.a_count += 1
        self.ever_fired = True

    def _add_gradient(self, g: torch.Tensor) -> None:
        g = g.to(self.factor_dtype)
        if self.G_sum is None:
            self.G_sum = torch.empty_like(self.G)
        beta = 0.0 if self.g_count == 0 else 1.0
        if g.numel() == 0:  # an empty batch, counted as a zero contribution
            if beta == 0.0:
                self.G_sum.zero_()
        elif self.is_conv:
            if g.dim() == 3:
                g = g.unsqueeze(0)
            if self.group is not None:
                g = g[:, self.out_slice]
            n, c = g.shape[:2]
            t = g.shape[2] * g.shape[3]
            # rows n*t, each entry divided by t: alpha = 1 / (n*t * t^2)
            ops.channel_cov_update_(self.G_sum, g.reshape(n, c, t), 1.0 / (n * t * t * t), beta)
        else:
            g2d = g.reshape(-1, g.shape[-1])
            ops.cov_update_(self.G_sum, g2d, 1.0 / max(g2d.shape[0], 1), beta)
        self.g_count += 1

    # --------------------------------------------------------- factors ----
    def has_batch(self) -> bool:
        return self.a_count > 0 and self.g_count > 0

    def batch_factors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """This step's A and G averaged over the captured micro-batches (in place)."""
        if self.a_count > 1:
            self.A_sum.div_(self.a_count)
        if self.g_count > 1:
            self.G_sum.div_(self.g_count)
        return self.A_sum, self.G_sum

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
        self.a_dim -= 1
        self.A = self.A[:-1, :-1].clone()
        if self.A_sum is not None:
            self.A_sum = self.A_sum[:-1, :-1].clone()

    # ------------------------------------------------------- gradients ----
    def has_grad(self) -> bool:
        m = self.module
        # A weight frozen (or made computed) after registration is not preconditioned,
        # even with a stale zero .grad left by zero_grad(set_to_none=False).
        if not isinstance(m.weight, nn.Parameter) or not m.weight.requires_grad \
                or m.weight.grad is None:
            return False
        return not self.has_bias or m.bias.grad is not None

    def grad_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """Γ: (out, in[+1]) with the bias gradient as the last column."""
        m = self.module
        w = m.weight.grad[self.out_slice].reshape(self.g_dim, -1)
        if self.has_bias:
            return torch.cat([w, m.bias.grad[self.out_slice].reshape(-1, 1)], dim=1).to(dtype)
        return w.to(dtype)

    def grad_tensors(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(weight gradient, bias gradient or None) of this layer's rows, as
        views of the parameters' ``.grad``: what ``ops.precondition_grads_``
        reads and overwrites in place."""
        m = self.module
        if self.group is None:
            return m.weight.grad, (m.bias.grad if self.has_bias else None)
        return (m.weight.grad[self.out_slice],
                m.bias.grad[self.out_slice] if self.has_bias else None)

    def set_grad(self, p: torch.Tensor) -> None:
        """Write P back into weight.grad (and bias.grad), in the parameters' dtype."""
        m = self.module
        w = m.weight.grad[self.out_slice]
        if self.has_bias:
            w.copy_(p[:, :-1].reshape(w.shape))
            m.bias.grad[self.out_slice].copy_(p[:, -1])
        else:
            w.copy_(p.reshape(w.shape))

    def __repr__(self) -> str:
        kind = type(self.module).__name__
        return f"{self.name} ({kind}): A {self.a_dim}x{self.a_dim}, G {self.g_dim}x{self.g_dim}"
