"""The text of `kfac-ext train --task lm`: Python standard-library sources, as bytes.

Every Python installation carries its standard library as ``.py`` files, so the
corpus needs no download. It is the concatenation, in the order below, of
``CORPUS_FILES`` from ``sysconfig.get_paths()["stdlib"]`` (about 700 kB on
CPython 3.11). The split is fixed: the first 90 % of each file's bytes go to the
training text, the last 10 % to the validation text, so validation is always
code the model has not seen, and a missing or different file (another Python
version) changes only its own share. Tokens are bytes (a vocabulary of 256).
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass

import torch

__all__ = ["CORPUS_FILES", "TextCorpus", "load_text_corpus", "stdlib_dir"]

# Large, long-lived modules present in every CPython from 3.8 to 3.13.
CORPUS_FILES = (
    "argparse.py",
    "typing.py",
    "inspect.py",
    "subprocess.py",
    "dataclasses.py",
    "difflib.py",
    "tarfile.py",
    "textwrap.py",
)
VALIDATION_FRACTION = 0.1


@dataclass
class TextCorpus:
    """Training and validation bytes as uint8 tensors, and where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    files: tuple[str, ...]
    folder: str
    vocab: int = 256

    def describe(self) -> str:
        return (
            f"{len(self.files)} Python stdlib files from {self.folder} "
            f"({', '.join(self.files)}): {len(self.train):,} training / "
            f"{len(self.val):,} validation bytes"
        )


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def load_text_corpus(
    files: tuple[str, ...] | None = None, folder: str | None = None, val_fraction: float = VALIDATION_FRACTION
) -> TextCorpus:
    """Read ``files`` (default ``CORPUS_FILES``; missing ones are left out) from ``folder``
    (default: this Python's standard library) and split each one train / validation."""
    files = CORPUS_FILES if files is None else tuple(files)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    folder = folder or stdlib_dir()
    train, val, found = [], [], []
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            text = f.read()
        cut = int(len(text) * (1.0 - val_fraction))
        train.append(text[:cut])
        val.append(text[cut:])
        found.append(name)
    if not found:
        raise FileNotFoundError(
            f"--task lm reads Python's standard-library sources ({', '.join(files)}) from "
            f"{folder}, and none is there: this Python installation ships without its .py "
            "sources"
        )

    def as_tensor(parts: list[bytes]) -> torch.Tensor:
        return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8).clone()

    return TextCorpus(as_tensor(train), as_tensor(val), tuple(found), folder)
