"""Is K-FAC's digits lead only a larger step on the convolutions?

Until 2026-12-02, `kfac-ext train` on digits left the CNN's two convolutions to
plain SGD steps (`--skip-layers Conv2d`) at K-FAC's learning rate (0.2; now every
layer is preconditioned by default, lr 0.1), while SGD's own sweep
settles on 0.05 for the whole model (0.2 diverges). This script gives SGD the
same freedom: the convolutions' learning rate is `scale` times the rest's, for a
small grid of base rates and scales, on the sweep seeds. If SGD with a larger
convolution rate reached 97 % as early as K-FAC, the K-FAC lead would be that
rate, not the preconditioning of the Linear layers.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sgd_conv_lr.py [--seeds 100 101 102 103]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _common import machine_line, run_train

from kfac_ext.app import train_options

PlainSGD = torch.optim.SGD


class ConvScaledSGD(PlainSGD):
    """SGD whose parameter groups carry an lr `scale`: `kfac-ext train` sets every
    group's lr from its schedule before each step; the step applies lr * scale."""

    def step(self, closure=None):
        for group in self.param_groups:
            group["lr"] *= group["scale"]
        try:
            return super().step(closure)
        finally:
            for group in self.param_groups:
                group["lr"] /= group["scale"]


def conv_scaled(scale: float):
    def make(params, **kwargs):
        params = list(params)
        # digits-cnn's parameters in order: conv weight (4-d) then its bias, twice, then Linear.
        conv = {
            id(p) for i, p in enumerate(params) if p.dim() == 4 or (i > 0 and p.dim() == 1 and params[i - 1].dim() == 4)
        }
        groups = [
            {"params": [p for p in params if id(p) in conv], "scale": scale},
            {"params": [p for p in params if id(p) not in conv], "scale": 1.0},
        ]
        return ConvScaledSGD(groups, **kwargs)

    return make


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--scales", type=float, nargs="+", default=[1, 2, 4])
    a = p.parse_args()
    print("## SGD with a larger learning rate on the digits CNN's convolutions\n")
    print(f"{machine_line()}; seeds {a.seeds}")
    print(f"command: python benchmarks/sgd_conv_lr.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print("| lr (Linear) | lr (Conv2d) | epochs to 97 % (per seed) | median | final acc (median) |")
    print("|---|---|---|---|---|")
    for lr in a.lrs:
        for scale in a.scales:
            # `kfac-ext train` builds its optimizer as torch.optim.SGD(...): swap the
            # class for this grid point, and put it back whatever happens.
            torch.optim.SGD = conv_scaled(scale)
            try:
                runs = [
                    run_train(["--optimizer", "sgd", "--seed", str(s), "--lr-sgd", str(lr)])["runs"]["sgd"]
                    for s in a.seeds
                ]
            finally:
                torch.optim.SGD = PlainSGD
            epochs = [r["epochs_to_target"] for r in runs]
            never = train_options.DEFAULTS["digits"]["epochs"] + 1  # an unreached target ranks last
            median = statistics.median(never if e is None else e for e in epochs)
            print(
                f"| {lr:g} | {lr * scale:g} | "
                f"{', '.join('never' if e is None else str(e) for e in epochs)} | "
                f"{'never' if median >= never else format(median, 'g')} | "
                f"{100 * statistics.median(r['final_test_accuracy'] for r in runs):.2f}% |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
