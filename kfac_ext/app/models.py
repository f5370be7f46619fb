"""Models used by `kfac-ext train`, the tests and the benchmarks.

- ``resnet_cifar(depth)``: the CIFAR-10 ResNet of He et al. 2016 (sec. 4.2):
  a 3x3 stem with 16 channels, three stages of ``n = (depth - 2) / 6`` basic
  blocks with 16/32/64 channels (stride 2 at the start of stages 2 and 3),
  global average pooling and one Linear layer. Depth 20/32/56/110/...
- ``digits_cnn()``: a small CNN for the 1x8x8 scikit-learn digits.
- ``digits_mlp()``: an MLP on the 64 flattened digit pixels.
- ``digits_autoencoder()``: a deep autoencoder of the 64 digit pixels
  (64-256-128-64-16-64-128-256-64), the problem class of Martens & Grosse 2015.

- ``char-gpt`` (kfac_ext/app/lm_model.py): a GPT-style byte-level language model.

All weights are initialised from torch's global RNG, so a fixed
``torch.manual_seed`` gives the same model every time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ResNetCIFAR", "resnet_cifar", "digits_cnn", "digits_mlp", "digits_autoencoder", "build_model"]


class _PadChannelsShortcut(nn.Module):
    """Option-A shortcut: subsample spatially and zero-pad the new channels.

    It has no parameters, so it adds nothing for K-FAC to precondition and
    keeps the parameter count of the paper's CIFAR ResNets (0.27M for depth 20).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            # Split the extra channels over both sides, as in the paper's Torch code.
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus an identity (or projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _PadChannelsShortcut(in_channels, out_channels, stride)
        elif shortcut == "B":
            # Option B: 1x1 projection (a Conv2d K-FAC will precondition too).
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """CIFAR ResNet with 6n+2 layers (He et al. 2016, sec. 4.2)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(channels, width, stride, shortcut))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def resnet_cifar(depth: int = 20, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> ResNetCIFAR:
    """CIFAR ResNet-``depth`` (20, 32, 56, ...); ``shortcut`` 'A' (zero-pad) or 'B' (1x1 conv)."""
    return ResNetCIFAR(depth, num_classes, in_channels, shortcut)


def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Sequential:
    """Small LeNet-style CNN for 8x8 digits: two 3x3 conv + 2x2 max-pool stages, two Linear layers.

    (N, in_channels, 8, 8) -> (N, num_classes). No BatchNorm, so every
    trainable layer is one K-FAC preconditions. Pooling after both convs keeps
    the first Linear layer's input at 2*width*4 = 128 features: its K-FAC
    activation factor is 129x129 (one pooling stage would make it 513x513,
    whose eigendecomposition costs ~15 SGD steps of this model on one core).
    """
    if num_classes < 1 or in_channels < 1 or width < 1:
        raise ValueError(f"num_classes, in_channels and width must be >= 1, got {num_classes}, {in_channels}, {width}")
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(),
        nn.Linear(2 * width * 4, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def digits_mlp(num_classes: int = 10, in_features: int = 64, hidden: Sequence[int] = (128, 64)) -> nn.Sequential:
    """MLP on flattened digits: (N, 1, 8, 8) or (N, 64) -> (N, num_classes)."""
    if num_classes < 1 or in_features < 1 or any(h < 1 for h in hidden):
        raise ValueError(
            f"num_classes, in_features and hidden sizes must be >= 1, got {num_classes}, {in_features}, {tuple(hidden)}"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def digits_autoencoder(in_features: int = 64, encoder: Sequence[int] = (256, 128, 64, 16)) -> nn.Sequential:
    """Deep autoencoder: tanh hidden layers, a linear code layer, a sigmoid output.

    (N, in_features) in [0, 1] -> (N, in_features) in (0, 1). The decoder mirrors
    the encoder. The shape follows Hinton & Salakhutdinov 2006 / Martens & Grosse
    2015 (widening first layer, halving to a small linear code), scaled to the
    64-pixel digits so that the largest K-FAC factor is 257x257 (its eigendecomposition
    costs a few ms on one core; the papers' 1000-wide first layer would make it a
    1001x1001 one, about 40x that, for 1347 training images).
    """
    if in_features < 1 or not encoder or any(h < 1 for h in encoder):
        raise ValueError(f"in_features and the encoder sizes must be >= 1, got {in_features}, {tuple(encoder)}")
    sizes = [in_features, *encoder]
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(encoder) - 1:  # the code layer stays linear
            layers.append(nn.Tanh())
    back = sizes[::-1]
    for k, (a, b) in enumerate(zip(back[:-1], back[1:])):
        layers.append(nn.Linear(a, b))
        layers.append(nn.Tanh() if k < len(back) - 2 else nn.Sigmoid())
    return nn.Sequential(*layers)


def build_model(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A model by its CLI name: digits-cnn, digits-mlp, resnet20, resnet32, resnet56, ...

    For ``char-gpt`` the two numbers are the vocabulary and the context length."""
    if name == "char-gpt":
        from kfac_ext.app.lm_model import char_gpt

        return char_gpt(vocab=num_classes, context=in_channels)
    if name == "digits-cnn":
        return digits_cnn(num_classes, in_channels)
    if name == "digits-mlp":
        return digits_mlp(num_classes, in_features=in_channels * 64)
    if name == "digits-autoencoder":
        return digits_autoencoder(in_features=in_channels * 64)
    if name.startswith("resnet") and name[len("resnet") :].isdigit():
        return resnet_cifar(int(name[len("resnet") :]), num_classes, in_channels)
    raise ValueError(
        f"unknown model {name!r}; choose digits-cnn, digits-mlp, "
        f"digits-autoencoder, char-gpt or resnetN "
        f"(N = 6n+2, e.g. resnet20, resnet32, resnet56)"
    )
