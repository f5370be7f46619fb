"""What the conv capture needs of a convolution's im2col patches, computed without
building them: the geometry it reads of a module, the padding it applies, the
patches' column sums per kernel offset (for the diagonal factor and K-FAC-reduce's
mean patches). The dense factors go through :mod:`kfac_ext.ops`; the layer class
that calls these is :class:`kfac_ext.layers.base.KFACLayer`."""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn.functional as F


class ConvGeometry(Protocol):
    """What the conv capture reads of a module: an ``nn.Conv2d``'s geometry (a 1-D conv
    gives its own as 2-D pairs with a height of 1)."""

    @property
    def kernel_size(self) -> tuple[int, ...]: ...
    @property
    def stride(self) -> tuple[int, ...]: ...
    @property
    def padding(self) -> str | tuple[int, ...]: ...
    @property
    def dilation(self) -> tuple[int, ...]: ...
    @property
    def padding_mode(self) -> str: ...
    @property
    def groups(self) -> int: ...


def explicit_padding(module: ConvGeometry) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero/mode padding the conv applies to its input."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        # 'same': total d*(k-1) per dim, the extra pixel on the right/bottom (as torch does).
        pads = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return cast(tuple[int, int, int, int], tuple(pads))  # two pairs
    ph, pw = module.padding
    return (pw, pw, ph, ph)


def window_sums(
    x: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, int],
    dilation: tuple[int, ...],
    dims: tuple[int, ...],
) -> tuple[torch.Tensor, int]:
    """For each kernel offset (i, j), the zero-padded ``x`` at the pixels that offset
    reads over all output positions, summed over ``dims`` of (N, C, oh, ow); stacked
    last, (…, C, kh·kw): the im2col patches' column (c, i, j), summed, without building
    the patches (one strided slice per offset). Also T = oh·ow."""
    h, w = x.shape[2:]
    kh, kw = kernel_size
    sh, sw = stride
    dh, dw = dilation
    ph, pw = padding
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    cols = [
        xp[:, :, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw].sum(dims)
        for i in range(kh)
        for j in range(kw)
    ]
    return torch.stack(cols, dim=-1), oh * ow


def act_diagonal(
    x: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, int],
    dilation: tuple[int, ...],
    has_bias: bool,
) -> torch.Tensor:
    """The diagonal of ``ops.conv2d_act_factor`` (A = āᵀā/(N·T), ā the im2col patches
    divided by T) without the patches or the dense factor: entry (c, i, j) is
    Σ x²/(N·T³) over the pixels offset (i, j) reads; the bias entry is 1/T² (its ā
    column is 1/T)."""
    sums, t = window_sums(x.square(), kernel_size, stride, padding, dilation, (0, 2, 3))
    d = sums.reshape(-1).div_(x.shape[0] * t * t * t)
    if has_bias:
        d = torch.cat([d, d.new_full((1,), 1.0 / (t * t))])
    return d


def mean_patches(
    x: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, int],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """K-FAC-reduce's rows of a conv: each example's im2col patch averaged over the
    output positions, (N, C·kh·kw)."""
    sums, t = window_sums(x, kernel_size, stride, padding, dilation, (2, 3))
    return sums.reshape(x.shape[0], -1).div_(t)


def padded_input(m: ConvGeometry, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(x, padding) such that a conv with symmetric zero ``padding`` of x reads what
    ``m`` reads: 'same', asymmetric and non-zero padding modes are applied to x."""
    left, right, top, bottom = explicit_padding(m)
    if m.padding_mode != "zeros" or left != right or top != bottom:
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        return F.pad(x, (left, right, top, bottom), mode=mode), (0, 0)
    return x, (top, left)
