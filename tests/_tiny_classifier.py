"""The tiny classifier the drop-in tests drive: a seeded MLP and one seeded training step."""

import torch
import torch.nn.functional as F
from torch import nn


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def tiny_step(model: nn.Module, p, seed: int) -> None:
    """zero_grad, a backward pass on batch ``seed``, and ``p.step()``."""
    gen = torch.Generator().manual_seed(seed)
    model.zero_grad()
    F.cross_entropy(model(torch.randn(8, 6, generator=gen)), torch.randint(0, 3, (8,), generator=gen)).backward()
    p.step()
