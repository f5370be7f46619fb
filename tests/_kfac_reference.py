"""Float64 K-FAC references from the definitions (docs/design.md §2), for the preconditioner tests.

Conv2d patches come from torch.nn.functional.unfold after padding the input
exactly as the conv does (torch's own _reversed_padding_repeated_twice), so
nothing here shares code with kfac_ext.layers.
"""

import torch
import torch.nn.functional as F
from torch import nn


def captured_io(module, run):
    """Run ``run()`` and return (input, output grad) of ``module`` (float64 copies)."""
    seen = {}

    def fwd(mod, args, out):
        seen["x"] = args[0].detach().double()
        out.register_hook(lambda g: seen.__setitem__("g", g.detach().double()))

    h = module.register_forward_hook(fwd)
    try:
        run()
    finally:
        h.remove()
    return seen["x"], seen["g"]


def patches(module: nn.Conv2d, x):
    """im2col rows (N*T, C*kh*kw) honouring stride, padding (any mode), dilation."""
    pad = module._reversed_padding_repeated_twice
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    xp = F.pad(x, pad, mode=mode) if any(pad) else x
    cols = F.unfold(xp, module.kernel_size, dilation=module.dilation, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]), cols.shape[2]


def batch_factors(module, x, g):
    """(A, G) of one batch, float64, from the definitions."""
    has_bias = module.bias is not None
    if isinstance(module, nn.Conv2d):
        a, t = patches(module, x)
        if has_bias:
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
        a = a / t
        gg = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]) / t
    else:
        a = x.reshape(-1, x.shape[-1])
        if has_bias:
            a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
        gg = g.reshape(-1, g.shape[-1])
    return a.T @ a / a.shape[0], gg.T @ gg / gg.shape[0]


def grad_matrix(module):
    w = module.weight.grad.reshape(module.weight.shape[0], -1).double().clone()
    if module.bias is not None:
        w = torch.cat([w, module.bias.grad.double().reshape(-1, 1)], 1)
    return w


def dense_precondition(a, g, grad, damping):
    """(A ⊗ G + λI)⁻¹ vec(Γ) with column-major vec, reshaped back to Γ's shape."""
    n_out, n_in = grad.shape
    k = torch.kron(a, g) + damping * torch.eye(n_in * n_out, dtype=torch.float64)
    vec = grad.T.reshape(-1)
    return torch.linalg.solve(k, vec).reshape(n_in, n_out).T
