"""How much curvature do the digits CNN's K-FAC factors hold early in training?

Trains the digits CNN with K-FAC on every layer (intervals 5/20, the old digits
default lr 0.1) for a few epochs, then prints the eigenvalue range of each
factor. The factors start as the identity and decay by factor_decay per update,
so after k updates factor_decay**k of the identity is left: a factor whose
eigenvalues all sit at that value has gathered no curvature worth
preconditioning. This is why `kfac-ext train` leaves the convolutions to SGD
steps on digits (README, "The training command").

    OMP_WAIT_POLICY=PASSIVE python benchmarks/factor_spectra.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch
import torch.nn.functional as F
from _machine import describe_machine

from kfac_ext import KFACPreconditioner
from kfac_ext.app.data import load_dataset
from kfac_ext.app.models import build_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits", None)
    torch.manual_seed(0)
    model = build_model("digits-cnn", data.num_classes, data.in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    pre = KFACPreconditioner(model, factor_update_steps=5, inv_update_steps=20, damping=0.1, lr=a.lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(a.epochs):
        order = torch.randperm(len(data.train_y), generator=gen)
        for i in range(len(order) // a.batch_size):
            x, y = data.batch(order[i * a.batch_size : (i + 1) * a.batch_size], True, gen)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            pre.step()
            optimizer.step()
    updates = pre.layers[0].factor_updates
    print(
        f"## K-FAC factor spectra, digits CNN after {a.epochs} epochs ({pre.steps} steps, {updates} factor updates)\n"
    )
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {describe_machine()}")
    print(f"command: python benchmarks/factor_spectra.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"\nidentity left: 0.95^{updates} = {0.95**updates:.3f}\n")
    print("| layer | A | A eigenvalues min–max | G | G eigenvalues min–max |")
    print("|---|---|---|---|---|")
    for layer in pre.layers:
        cells = []
        for factor in (layer.A, layer.G):
            e = torch.linalg.eigvalsh(factor.double())
            cells += [f"{factor.shape[0]}²", f"{e.min():.3f}–{e.max():.3f}"]
        print(f"| {layer.name} {type(layer.module).__name__} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
