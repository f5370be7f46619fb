"""Small nn.Modules shared by the fx-graph and pipeline tests. They live in a
module of their own (not a test file) so that the pipeline's spawned Gloo
processes can unpickle them by importing it."""

import torch
import torch.nn as nn


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.fc(torch.flatten(h, 1))


class TinyTransformer(nn.Module):
    """One pre-norm transformer block (single-head attention written out, so that
    torch.fx traces it) over a (batch, tokens, features) input, then a mean-pooled
    classifier. LayerNorm only: no batch statistics, so a pipelined step with
    micro-batches equals the unsplit model's."""

    def __init__(self, features: int = 8, hidden: int = 16, classes: int = 3):
        super().__init__()
        self.norm1 = nn.LayerNorm(features)
        self.q = nn.Linear(features, features)
        self.k = nn.Linear(features, features)
        self.v = nn.Linear(features, features)
        self.proj = nn.Linear(features, features)
        self.norm2 = nn.LayerNorm(features)
        self.mlp1 = nn.Linear(features, hidden)
        self.mlp2 = nn.Linear(hidden, features)
        self.head = nn.Linear(features, classes)
        self.scale = features**-0.5

    def forward(self, x):
        h = self.norm1(x)
        attn = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) * self.scale, dim=-1)
        x = x + self.proj(attn @ self.v(h))
        x = x + self.mlp2(torch.relu(self.mlp1(self.norm2(x))))
        return self.head(x.mean(dim=1))


def tiny_transformer() -> nn.Module:
    torch.manual_seed(0)
    return TinyTransformer()


def small_resnet() -> nn.Module:
    """The application's CIFAR ResNet at its smallest depth (BatchNorm inside)."""
    from kfac_ext.app.models import resnet_cifar

    return resnet_cifar(depth=8)


def small_cnn() -> nn.Module:
    return SmallCNN()


def not_a_module():
    return 42


def broken_factory():
    raise RuntimeError("no weights here")


def identity_features() -> nn.Module:
    """Outputs (batch, tokens, features): not a classifier (for the --loss ce check)."""
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh())


def linear_relu_linear() -> nn.Module:
    """Split three ways, the ReLU gets a stage of its own: a stage without parameters."""
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def exiting_factory():
    import sys

    sys.exit(0)
