"""Datasets for `kfac-ext train`, held in memory as tensors.

- ``load_digits_dataset()``: scikit-learn's 1797 handwritten 8x8 digits (they
  ship inside the scikit-learn wheel, no download), a fixed stratified
  train/test split (75/25, split seed 0, independent of the training seed so
  every run is scored on the same test images), pixels scaled with the
  training set's mean and standard deviation.
- ``load_cifar10(data_dir)``: the standard CIFAR-10 "python version" batches
  (data_batch_1..5, test_batch) from a local folder; never downloads. Kept as
  uint8 and normalised per batch (150 MB instead of 600 MB of float32);
  training batches get the usual random crop (4 px padding) and flip. The
  batches are pickles, so they are read with an unpickler that builds only
  numpy arrays and plain containers (a pickle can otherwise run any code), and
  checked whole at load (shape, pixel range, labels in 0..9, not empty).

``Dataset.batch(indices, train, generator)`` returns a ready float batch; every
random choice of augmentation comes from the generator passed in, so a seeded
generator reproduces the batch exactly (that is what makes resume exact).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Dataset", "DataError", "load_digits_dataset", "load_cifar10", "load_dataset", "CIFAR10_FILES"]

CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class DataError(ValueError):
    """A data file that cannot be trained on: unreadable, malformed, empty or mislabelled."""


@dataclass
class Dataset:
    """Train and test tensors plus how to turn stored samples into a batch."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W), float32 (digits) or uint8 (CIFAR-10)
    train_y: torch.Tensor  # (N,), int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: torch.Tensor | None = None  # per-channel, applied in batch() when the storage is uint8
    std: torch.Tensor | None = None
    augment: bool = False  # random crop + horizontal flip on training batches

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    def batch(
        self, indices: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` of the train (``train=True``) or test split as float32."""
        xs, ys = (self.train_x, self.train_y) if train else (self.test_x, self.test_y)
        x, y = xs[indices], ys[indices]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        if train and self.augment:
            x = _random_crop_flip(x, padding=4, generator=generator)
        return x, y


def _random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop after zero padding, then a random horizontal flip, per sample."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    # Gather each sample's window with index arithmetic instead of a Python loop.
    rows = dy.view(n, 1) + torch.arange(h).view(1, h)  # (n, h)
    cols = dx.view(n, 1) + torch.arange(w).view(1, w)  # (n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    idx_n = torch.arange(n).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


def load_digits_dataset(test_fraction: float = 0.25, split_seed: int = 0) -> Dataset:
    """scikit-learn's digits as (N, 1, 8, 8) float32, standardised with training statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = load_digits()
    images = bunch.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=split_seed, stratify=labels
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    to_tensor = lambda a: torch.from_numpy((a - mean) / std).unsqueeze(1).contiguous()  # noqa: E731
    return Dataset(
        "digits",
        to_tensor(x_train),
        torch.from_numpy(y_train),
        to_tensor(x_test),
        torch.from_numpy(y_test),
        num_classes=10,
    )


def _cifar_folder(data_dir: str) -> str:
    """The folder holding the batches: data_dir itself or data_dir/cifar-10-batches-py."""
    for candidate in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
        if all(os.path.isfile(os.path.join(candidate, f)) for f in CIFAR10_FILES):
            return candidate
    present = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else None
    raise FileNotFoundError(
        f"CIFAR-10 not found in --data-dir {data_dir!r}"
        + (" (no such directory)" if present is None else f" (it contains: {present[:6]})")
        + ". Put the CIFAR-10 python batches there: extract cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html so that the folder (or its "
        "cifar-10-batches-py/ subfolder) holds " + ", ".join(CIFAR10_FILES) + ". "
        "kfac-ext never downloads data."
    )


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays; refuses every other global."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }  # the last: pickle protocol 5

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 1's name (CIFAR-10)
        if (module.replace("numpy.core.", "numpy._core."), name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} (a CIFAR-10 batch holds only numpy arrays and lists)"
        )


def _read_cifar_batch(path: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) uint8, labels (n,) int64) of one batch file, checked whole.

    Everything is checked here, at load, so a bad file is named before training
    rather than failing (or silently wrapping a value) mid-epoch.
    """
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(entry[b"data"]), np.asarray(entry[b"labels"])
    except Exception as exc:  # a truncated or foreign file: say which one
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: expected data of shape (n, 3072) and n labels, got {data.shape} and {labels.shape}")
    if len(data) == 0:
        raise DataError(f"{path}: holds no images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(
            f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{num_classes - 1} ({len(bad)} such labels)"
        )
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() > 255:
            raise DataError(
                f"{path}: pixels must be integers in 0..255, got {data.dtype} in [{data.min()}, {data.max()}]"
            )
        data = data.astype(np.uint8)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(data_dir: str, augment: bool = True) -> Dataset:
    """CIFAR-10 from the python batches in ``data_dir`` (50000 train, 10000 test images)."""
    folder = _cifar_folder(data_dir)
    parts = [_read_cifar_batch(os.path.join(folder, f)) for f in CIFAR10_FILES]
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    test_x, test_y = parts[5]
    return Dataset(
        "cifar10",
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        num_classes=10,
        mean=torch.tensor(_CIFAR10_MEAN),
        std=torch.tensor(_CIFAR10_STD),
        augment=augment,
    )


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """The dataset named on the command line: 'digits' or 'cifar10' (needs data_dir)."""
    if name == "digits":
        return load_digits_dataset()
    if name == "cifar10":
        if not data_dir:
            raise FileNotFoundError(
                "--data cifar10 needs --data-dir PATH: a folder with the CIFAR-10 python "
                "batches (" + ", ".join(CIFAR10_FILES) + "); kfac-ext never downloads data."
            )
        return load_cifar10(data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose 'digits' or 'cifar10'")
