"""Why K-FAC's digits-CNN convolution factors stay at their identity start in a short run.

Captures one batch's K-FAC factors of every layer of the digits CNN (default
initialisation, batch 64, kfac-pytorch conventions: A of a conv from im2col
patches divided by T output positions, G from the gradient of the batch-mean
loss) and prints their scale (mean and largest eigenvalue) next to what an
identity start leaves after k updates with factor decay 0.95 (0.95**k), the
damping λ, and G multiplied by N**2 (Martens & Grosse's per-example scale).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/factor_scales.py [--seed 100]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kfac_ext import KFACPreconditioner
from kfac_ext.app.data import load_dataset
from kfac_ext.app.models import digits_cnn
from kfac_ext.comm import LocalComm


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    data = load_dataset("digits")
    model = digits_cnn()
    pre = KFACPreconditioner(model, comm=LocalComm(), factor_init="first_batch", kl_clip=None)
    x, y = data.batch(torch.randperm(len(data.train_y))[: a.batch_size], True)
    F.cross_entropy(model(x), y).backward()
    pre.step()  # first_batch: the running factors are this batch's factors
    n = a.batch_size
    print(f"one batch of {n}, seed {a.seed}; identity start after 17 updates: {0.95**17:.3f}; damping 0.1\n")
    print(
        "| layer | A: mean / max eigenvalue | G: mean / max eigenvalue "
        "| G x N²: mean / max | max d_G d_A (kfac-pytorch) |"
    )
    print("|---|---|---|---|---|")
    for layer in pre.layers:
        ea = torch.linalg.eigvalsh(layer.A.double())
        eg = torch.linalg.eigvalsh(layer.G.double())
        kind = type(layer.module).__name__
        print(
            f"| {layer.name} {kind} (A {layer.a_dim}², G {layer.g_dim}²) "
            f"| {ea.mean():.3g} / {ea.max():.3g} | {eg.mean():.2e} / {eg.max():.2e} "
            f"| {n * n * eg.mean():.3g} / {n * n * eg.max():.3g} "
            f"| {ea.max() * eg.max():.2e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
