"""ResNet-50's K-FAC layer shapes, for the benchmarks and the assignment tests.

The scaling model itself lives in ``kfac_ext.scaling`` (`kfac-ext bench scaling`);
it derives these shapes from the network (``kfac_ext.scaling.models.resnet50``)
and tests/app/test_scaling.py holds the two together.
"""

from __future__ import annotations

__all__ = ["resnet50_factor_shapes"]


def resnet50_factor_shapes(num_classes: int = 1000) -> list[tuple[str, int, int]]:
    """(name, dim_A, dim_G) of every Conv2d/Linear of torchvision's ResNet-50 (convs bias-free)."""
    layers = [("conv1", 3 * 7 * 7, 64)]
    in_ch = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            layers += [(f"{p}.conv1", in_ch, width), (f"{p}.conv2", width * 9, width), (f"{p}.conv3", width, width * 4)]
            if b == 0:
                layers.append((f"{p}.downsample.0", in_ch, width * 4))
            in_ch = width * 4
    layers.append(("fc", 2048 + 1, num_classes))
    return layers
