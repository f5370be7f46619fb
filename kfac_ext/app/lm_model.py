"""A GPT-style byte-level language model built from ``nn.Linear`` layers.

Pre-LayerNorm transformer blocks (Radford et al. 2019): causal self-attention
whose query/key/value and output projections are ``nn.Linear`` layers (attention
itself by ``F.scaled_dot_product_attention``, which has no weights), and a
two-layer GELU MLP. Token and position embeddings are ``nn.Embedding``; the output
head is a separate ``nn.Linear``. K-FAC preconditions the 9 ``nn.Linear`` layers
(their inputs are (batch, time, features): with ``kfac_approx='expand'`` the factors
take every position as a sample) and the two ``nn.Embedding`` layers (11 in all);
the LayerNorms take plain steps at K-FAC's learning rate (no K-FAC layer type).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CharGPT", "char_gpt"]


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharGPT(nn.Module):
    """(batch, time) int64 tokens -> (batch, time, vocab) next-token logits."""

    def __init__(self, vocab: int = 256, context: int = 64, d_model: int = 64, n_layers: int = 2, n_heads: int = 4):
        super().__init__()
        if min(vocab, context, d_model, n_layers, n_heads) < 1:
            raise ValueError(
                f"vocab, context, d_model, n_layers and n_heads must be >= 1, got "
                f"{vocab}, {context}, {d_model}, {n_layers}, {n_heads}"
            )
        self.context = context
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, n_heads) for _ in range(n_layers)))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        for name, p in self.named_parameters():
            if p.dim() >= 2:  # GPT-2's initialisation; residual outputs scaled by depth
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence of {t} tokens is longer than the context {self.context}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        return self.head(self.ln_f(self.blocks(x)))


def char_gpt(vocab: int = 256, context: int = 64, d_model: int = 64, n_layers: int = 2, n_heads: int = 4) -> CharGPT:
    """The `--task lm` default: 2 blocks of width 64, 4 heads, 64-byte context (~135k weights)."""
    return CharGPT(vocab, context, d_model, n_layers, n_heads)
