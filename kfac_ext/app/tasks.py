"""What `kfac-ext train` optimises and measures: classification, an autoencoder or a
byte-level language model (``lm``: kfac_ext/app/lm_task.py).

A task turns dataset samples into (input, target) batches, defines the loss,
evaluates a model after each epoch (outside the timed training steps) and
says whether an epoch's record reached the target.

- ``Classification``: cross-entropy; the target is a test accuracy.
- ``Autoencoder``: the digits images as 64 pixel intensities in [0, 1],
  reconstructed through a bottleneck; the loss is the squared error summed over
  the pixels, averaged over the images (the "reconstruction error" of Hinton &
  Salakhutdinov 2006 and Martens & Grosse 2015). The target is a *training*
  reconstruction loss, measured on the whole training set after the epoch with
  the weights as they are (not the running mean of the epoch's batch losses,
  which mixes weights from the whole epoch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kfac_ext.app.data import Dataset

__all__ = ["Classification", "Autoencoder", "make_task", "TASKS"]

TASKS = ("classify", "autoencoder", "lm")
AllSum = Callable[[list[float]], list[float]]


class Classification:
    """Cross-entropy on the class labels; reached when test accuracy >= target."""

    metric = "test_accuracy"  # the record key the target is checked on
    metric_label = "test accuracy"
    higher_is_better = True

    def __init__(self, data: Dataset):
        self.data = data
        self.n_train = len(data.train_y)
        self.num_classes = data.num_classes
        self.in_channels = data.in_channels

    def train_batch(self, indices, generator):
        return self.data.batch(indices, True, generator)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target)

    def evaluate(self, model, rank: int, size: int, device, all_sum: AllSum, batch_size: int = 1000) -> dict:
        """Test loss and accuracy, sharded over the ranks."""
        n = len(self.data.test_y)
        loss_sum, correct = 0.0, 0.0
        with torch.no_grad():
            for chunk in torch.arange(rank, n, size).split(batch_size):
                x, y = self.data.batch(chunk, train=False)
                x, y = x.to(device), y.to(device)
                out = model(x)
                loss_sum += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(1) == y).sum().item()
        loss_sum, correct = all_sum([loss_sum, correct])
        return dict(test_loss=loss_sum / n, test_accuracy=correct / n)

    def reached(self, record: dict, target: float) -> bool:
        return record[self.metric] >= target


def _pixels(images: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """(N, 1, 8, 8) standardised digits -> (N, 64) intensities in [0, 1].

    The digits are standardised with one scalar mean and std (an affine map), so
    rescaling by the training set's min and max gives back pixel / 16 exactly."""
    return ((images.reshape(len(images), -1) - low) / (high - low)).clamp_(0.0, 1.0)


class Autoencoder:
    """Squared reconstruction error of the digits pixels; reached when the training
    reconstruction loss (whole training set, after the epoch) <= target."""

    metric = "train_eval_loss"
    metric_label = "training reconstruction loss"
    higher_is_better = False

    def __init__(self, data: Dataset):
        if data.name != "digits":
            raise ValueError(f"--task autoencoder: only --data digits is supported, got --data {data.name}")
        low, high = float(data.train_x.min()), float(data.train_x.max())
        self.train_x = _pixels(data.train_x, low, high)
        self.test_x = _pixels(data.test_x, low, high)
        self.n_train = len(self.train_x)
        self.in_features = self.train_x.shape[1]

    def train_batch(self, indices, generator):
        x = self.train_x[indices]
        return x, x

    @staticmethod
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, target, reduction="sum") / len(target)

    def evaluate(self, model, rank: int, size: int, device, all_sum: AllSum, batch_size: int = 1000) -> dict:
        sums = []
        with torch.no_grad():
            for x in (self.train_x, self.test_x):
                total = 0.0
                for chunk in torch.arange(rank, len(x), size).split(batch_size):
                    xb = x[chunk].to(device)
                    total += F.mse_loss(model(xb), xb, reduction="sum").item()
                sums.append(total)
        train_sum, test_sum = all_sum(sums)
        return dict(train_eval_loss=train_sum / len(self.train_x), test_loss=test_sum / len(self.test_x))

    def reached(self, record: dict, target: float) -> bool:
        return record[self.metric] <= target


def make_task(name: str, data: Dataset | None):
    if name == "lm":  # its own text (Python's standard library); `data` is not used
        from kfac_ext.app.lm_data import load_text_corpus
        from kfac_ext.app.lm_task import LanguageModel

        return LanguageModel(load_text_corpus())
    if name == "classify":
        return Classification(data)
    if name == "autoencoder":
        return Autoencoder(data)
    raise ValueError(f"--task must be one of {', '.join(TASKS)}; got {name}")
