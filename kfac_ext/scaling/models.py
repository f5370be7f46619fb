"""The two networks of the published K-FAC timings, buildable without torchvision.

``transformer_lm()`` is a small encoder language model (token embedding, a stack of
``nn.TransformerEncoderLayer``, a vocabulary head) for planning a transformer.
``resnet50()`` follows torchvision's ResNet-50 (v1.5: the stride sits on the 3x3
conv of a bottleneck); ``resnet32_cifar()`` is the CIFAR ResNet-32 of He et al.
2016 with the parameter-free option-A shortcut (kfac_ext.app.models).
"""

from __future__ import annotations

from torch import nn

from kfac_ext.app.models import resnet_cifar

__all__ = ["resnet50", "resnet32_cifar", "transformer_lm"]


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, mid: int, stride: int):
        super().__init__()
        out = 4 * mid
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50 (bottleneck blocks 3-4-6-3) built without torchvision, for counting its step."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    c_in = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(_Bottleneck(c_in, mid, stride if b == 0 else 1))
            c_in = 4 * mid
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, num_classes)]
    return nn.Sequential(*layers)


def resnet32_cifar(num_classes: int = 10) -> nn.Module:
    """The CIFAR ResNet-32 (three stages of five basic blocks)."""
    return resnet_cifar(32, num_classes)


class _TransformerLM(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int, ff: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        block = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.head(self.blocks(self.embed(ids)))


def transformer_lm(vocab: int = 32000, dim: int = 512, heads: int = 8, layers: int = 6, ff: int = 2048) -> nn.Module:
    """Token ids (batch, length) to logits: Embedding, ``layers`` encoder blocks, Linear head
    (``--input-shape LENGTH --input-dtype int64``)."""
    return _TransformerLM(vocab, dim, heads, layers, ff)
