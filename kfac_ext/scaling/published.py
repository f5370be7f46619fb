"""The published per-iteration timings the model is checked against, and the SC20 headline.

Source of the timings: gpauloski/kfac_pytorch, branch ``kfac-lw``, ``docs/results.md``
(2020-03; layer-wise K-FAC over Horovod; TACC Longhorn, V100 GPUs, 100 Gb/s EDR
InfiniBand between nodes), as of its last edit, commit cefeb46 (2020-03-16), which
replaced the 16-GPU SGD run (15:00 per epoch) by a rerun (Slurm 7468, 14:30) and added
a second 64-GPU K-FAC run at 7:17 (Slurm 7530, a 55-epoch schedule). Its ``t/epoch`` column becomes ms per iteration by
dividing by the iterations of one epoch, ceil(images / (batch per GPU x GPUs)):
ImageNet-1k has 1,281,167 training images at 32 per GPU; CIFAR-10 50,000 at 128
per GPU (the learning rates, 0.1 on 1 GPU and 0.4 on 4, scale with that batch).
K-FAC there updated the factors every step and the eigendecompositions every 10.
The 64-GPU K-FAC runs: 11:05 per epoch (90 epochs, no Slurm ID, from the first batch
of runs, whose 16- and 32-GPU runs agree with the later ones) and 7:17 twice (Slurm
7368 and 7530).

The headline (Pauloski et al., "Convolutional Neural Network Training with
Distributed K-FAC", SC20): ResNet-50 on ImageNet reaches 75.9 % top-1 in 55
epochs with K-FAC against 90 with SGD, and takes 18-25 % less time than SGD to
get there.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Row", "ROWS", "CALIBRATION_ROW", "SC20_EPOCHS"]

IMAGENET_TRAIN = 1_281_167
CIFAR10_TRAIN = 50_000


@dataclasses.dataclass(frozen=True)
class Row:
    """One published per-iteration timing (kfac-lw results): model, GPUs, batch and the measured times."""

    key: str
    model: str  # "resnet50" or "resnet32_cifar"
    gpus: int
    batch: int  # per GPU
    images: int
    sgd_epoch_s: float
    kfac_epoch_s: tuple[float, ...]  # one per published K-FAC run with this GPU count

    @property
    def iterations(self) -> int:
        return math.ceil(self.images / (self.batch * self.gpus))

    @property
    def sgd_s(self) -> float:
        return self.sgd_epoch_s / self.iterations

    @property
    def overhead_s(self) -> tuple[float, ...]:
        """K-FAC minus SGD, seconds per iteration, one per K-FAC run."""
        return tuple((k - self.sgd_epoch_s) / self.iterations for k in self.kfac_epoch_s)


ROWS = (
    Row("resnet50-16", "resnet50", 16, 32, IMAGENET_TRAIN, 14 * 60 + 30, (30 * 60, 31 * 60)),
    Row("resnet50-32", "resnet50", 32, 32, IMAGENET_TRAIN, 8 * 60 + 10, (14 * 60 + 18,)),
    Row("resnet50-64", "resnet50", 64, 32, IMAGENET_TRAIN, 4 * 60 + 8, (11 * 60 + 5, 7 * 60 + 17, 7 * 60 + 17)),
    Row("cifar-1", "resnet32_cifar", 1, 128, CIFAR10_TRAIN, 27.5, (82.0,)),
    Row("cifar-4", "resnet32_cifar", 4, 128, CIFAR10_TRAIN, 8.5, (16.0,)),
)
CALIBRATION_ROW = "resnet50-32"

# SC20, ResNet-50 to 75.9 % top-1: epochs of each optimizer.
SC20_EPOCHS = {"sgd": 90, "kfac": 55}
