"""Per-step cost of K-FAC on a GPT-style model against AdamW (issue 25, item 6).

Model: token + position Embedding, 4 pre-LayerNorm blocks of nn.MultiheadAttention
(d_model 256, 4 heads, causal mask) and a 256-1024-256 MLP, an untied Linear head
(vocabulary 512); batch 8 × 128 tokens; every Linear, attention projection and
embedding is a K-FAC layer. One step = zero_grad, forward, backward,
(preconditioner.step()), AdamW.step(). Rows:

- AdamW: no preconditioner;
- every step: factors and eigendecompositions every step;
- factors only: factors every step, eigendecompositions never after the first;
- precondition only: neither after the first (the steady-state step);
- amortised (10, 100): factors every 10, eigendecompositions every 100 steps, computed
  as precondition + (factors − precondition)/10 + (every − factors)/100.

    PYTHONPATH=. python benchmarks/table_transformer_step.py [--reps 5] [--approx reduce]
        [--method inverse]

Medians of ``--reps`` timed steps after 2 warm-up steps. The machine is shared: the
absolute figures move with its load, the ratios less.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import kfac_ext

D, HEADS, LAYERS, VOCAB, BATCH, TOKENS = 256, 4, 4, 512, 8, 128


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.fc, self.proj = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.proj(torch.nn.functional.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, D), nn.Embedding(TOKENS, D)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln, self.head = nn.LayerNorm(D), nn.Linear(D, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(TOKENS) < 0)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.ln(x))


def time_steps(intervals, reps: int, approx: str, method: str = "eigen") -> float:
    torch.manual_seed(0)
    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pre = None
    if intervals is not None:
        pre = kfac_ext.KFACPreconditioner(model, factor_update_steps=intervals[0],
                                          inv_update_steps=intervals[1], lr=1e-3,
                                          kfac_approx=approx, compute_method=method)
    idx = torch.randint(0, VOCAB, (BATCH, TOKENS + 1), generator=torch.Generator().manual_seed(1))
    times = []
    for step in range(reps + 2):
        t0 = time.perf_counter()
        opt.zero_grad()
        out = model(idx[:, :-1])
        nn.functional.cross_entropy(out.reshape(-1, VOCAB), idx[:, 1:].reshape(-1)).backward()
        if pre is not None:
            pre.step()
        opt.step()
        if step >= 2:  # the first step of every mode decomposes: warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--approx", default="expand", choices=["expand", "reduce"])
    parser.add_argument("--method", default="eigen", choices=["eigen", "inverse"])
    args = parser.parse_args(argv)
    never = 10 ** 9
    rows = {"AdamW": time_steps(None, args.reps, args.approx),
            "every step": time_steps((1, 1), args.reps, args.approx, args.method),
            "factors only": time_steps((1, never), args.reps, args.approx, args.method),
            "precondition only": time_steps((never, never), args.reps, args.approx, args.method)}
    rows["amortised (10, 100)"] = (rows["precondition only"]
                                   + (rows["factors only"] - rows["precondition only"]) / 10
                                   + (rows["every step"] - rows["factors only"]) / 100)
    adamw = rows["AdamW"]
    print(f"GPT-style d_model {D}, {LAYERS} layers, {BATCH}x{TOKENS} tokens, "
          f"kfac_approx={args.approx}, compute_method={args.method}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| step | ms | × AdamW |\n|---|---|---|")
    for name, t in rows.items():
        print(f"| {name} | {t * 1e3:.0f} | {t / adamw:.2f} |")


if __name__ == "__main__":
    main()
