"""The CIFAR-10 input pipeline of the published ResNet-32 runs, timed on this CPU.

The published CIFAR rows (kfac_ext/scaling/published.py) ran kfac-pytorch's
``examples/pytorch_cifar10_resnet.py`` as of the results' commits (2020-03-02/03,
gpauloski/kfac_pytorch 493f693): ``torch.set_num_threads(1)``, a DataLoader with
``num_workers=0`` (every batch is loaded and augmented in the training process, in
turn with the step), batch 128 per GPU from a DistributedSampler, and torchvision's
CIFAR10 with RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize;
each step then blocks on the GPU (``.cpu()`` of the loss and of the accuracy for the
metrics' all-reduces) and rank 0 refreshes a tqdm bar (``set_postfix_str``, which
redraws every call, and ``update``). So the GPU idles while the next batch is built.

This script builds the same per-sample work with PIL and torch (torchvision is not a
dependency: the same operations, as torchvision 0.5 ran them on a PIL image: a
constant-fill border expand, a crop at a random offset, a left-right transpose with
probability 1/2, the bytes to a uint8 HWC tensor, CHW, float / 255, then a clone and
the per-channel subtract and divide) on 50,000 random 32x32x3 images, a DataLoader
with ``num_workers=0`` and batch 128, and the loop's rank-0 bookkeeping (two metric
updates on CPU tensors, the bar's postfix and update, to a file). Each iteration
is timed by the thread's CPU time over ``--batches`` iterations; the estimate is the
smallest median of 3 consecutive iterations (``measure.min_of_medians``: this shared
VM's quiet windows), the median beside it; ``--runs`` runs for the spread.

It is this CPU (AMD EPYC, today's PIL and torch), not Longhorn's POWER9 of 2020:
kfac_ext/scaling/calibrate.py takes the estimate as the CIFAR rows' input term.

    python benchmarks/table_scaling_input_check.py [--batches 300] [--runs 5]
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from _common import machine_line

from kfac_ext.scaling.measure import min_of_medians

try:
    from PIL import Image, ImageOps
    from tqdm import tqdm
except ImportError as exc:  # pragma: no cover - both ship with the project's venv
    raise SystemExit(f"table_scaling_input_check needs Pillow and tqdm: {exc}") from None

MEAN = (0.4914, 0.4822, 0.4465)  # the published script's Normalize
STD = (0.2023, 0.1994, 0.2010)


class _Cifar(torch.utils.data.Dataset):
    """50,000 random CIFAR-shaped images through the published training transforms."""

    def __init__(self, n: int = 50_000):
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, 10, n).tolist()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i])
        img = ImageOps.expand(img, border=4, fill=0)  # RandomCrop's padding=4
        top, left = random.randint(0, 8), random.randint(0, 8)
        img = img.crop((left, top, left + 32, top + 32))
        if random.random() < 0.5:  # RandomHorizontalFlip
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(32, 32, 3)
        x = x.permute(2, 0, 1).contiguous().float().div(255)  # ToTensor
        x = x.clone()  # Normalize (not in place)
        x.sub_(torch.as_tensor(MEAN)[:, None, None]).div_(torch.as_tensor(STD)[:, None, None])
        return x, self.targets[i]


class InputLoop:
    """The published loop's per-iteration host work apart from the step: the next batch
    (a new epoch when the loader is spent), the two Metric updates and the tqdm postfix
    (drawn by rank 0 only)."""

    def __init__(self, dataset):
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=0)
        self.it = iter(self.loader)
        next(self.it)  # warm-up
        self.loss_sum, self.acc_sum, self.n = torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0)

    def iteration(self, bar=None) -> float:
        """Thread CPU seconds of one iteration; ``bar`` is rank 0's tqdm bar (None: another rank)."""
        t0 = time.thread_time()
        try:
            data, target = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            data, target = next(self.it)
        self.loss_sum += torch.tensor(2.3)  # Metric.update of the loss and the accuracy
        self.acc_sum += torch.tensor(0.1)
        self.n += 1
        postfix = f"loss: {(self.loss_sum / self.n).item():.4f}, acc: {100 * (self.acc_sum / self.n).item():.2f}%"
        if bar is not None:
            bar.set_postfix_str(postfix)
            bar.update(1)
        return time.thread_time() - t0


def _run(dataset, batches: int) -> list[float]:
    loop = InputLoop(dataset)
    with tempfile.TemporaryFile("w") as log, tqdm(total=len(loop.loader), file=log) as bar:
        return [loop.iteration(bar) for _ in range(batches)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.batches < 5 or args.runs < 1:
        raise SystemExit("--batches must be >= 5 and --runs >= 1")
    torch.set_num_threads(1)
    random.seed(0)
    dataset = _Cifar()
    print(f"{machine_line()}, load average {os.getloadavg()[0]:.1f}, 1 thread; `python {' '.join(sys.argv)}`\n")
    print("| run | ms per iteration: min of medians of 3 | median | fastest |")
    print("|---:|---:|---:|---:|")
    estimates = []
    for r in range(args.runs):
        t = _run(dataset, args.batches)
        estimates.append(min_of_medians(t, 3))
        print(f"| {r + 1} | {estimates[-1] * 1e3:.2f} | {statistics.median(t) * 1e3:.2f} | {min(t) * 1e3:.2f} |")
    print(
        f"\nestimate: median of runs {statistics.median(estimates) * 1e3:.2f} ms; max/min across runs "
        f"{max(estimates) / min(estimates):.3f}; load average {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
