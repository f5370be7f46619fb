"""`kfac-ext train --task lm`: next-byte prediction on Python standard-library sources.

A training sample is a window of ``context`` bytes and the same window shifted by
one. The training text is cut into ``n_train`` consecutive windows; sample ``i``
starts in window ``i`` at an offset drawn from the batch's generator, so an epoch
covers the text once and two epochs see different windows. The target is a
*validation* loss: the mean cross-entropy (nats per byte) over a fixed set of
non-overlapping validation windows (``VAL_WINDOWS`` of them, evenly spaced over
the validation text), measured after each epoch with the weights as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kfac_ext.app.lm_data import TextCorpus

__all__ = ["LanguageModel", "LM_TARGET", "CONTEXT", "VAL_WINDOWS"]

CONTEXT = 64  # bytes per sample (the model's context)
VAL_WINDOWS = 128  # fixed validation windows: 8,192 bytes predicted at each evaluation
LM_TARGET = 2.3  # validation loss (nats per byte): AdamW, batch 16, gets there in ~150 steps


class LanguageModel:
    """Cross-entropy of the next byte; reached when the validation loss <= target."""

    metric = "val_loss"
    metric_label = "validation loss (nats/byte)"
    higher_is_better = False

    def __init__(self, corpus: TextCorpus, context: int = CONTEXT, val_windows: int = VAL_WINDOWS):
        if len(corpus.train) < 2 * (context + 1) or len(corpus.val) < context + 1:
            raise ValueError(
                f"--task lm: the text is too short for a context of {context} "
                f"({len(corpus.train)} training, {len(corpus.val)} validation bytes)"
            )
        self.corpus = corpus
        self.context = context
        self.tokens_per_sample = context
        self.vocab = corpus.vocab
        self.model_args = (corpus.vocab, context)  # build_model's (vocab, context) for char-gpt
        self.train_text = corpus.train.long()
        self.n_train = (len(self.train_text) - 1) // context - 1
        val = corpus.val.long()
        starts = torch.linspace(0, len(val) - context - 1, min(val_windows, len(val) // context))
        idx = starts.long().view(-1, 1) + torch.arange(context + 1).view(1, -1)
        self.val_x, self.val_y = val[idx[:, :-1]], val[idx[:, 1:]]

    def describe(self) -> str:
        return (
            f"{self.corpus.describe()}; {self.context}-byte windows, {self.n_train} per "
            f"epoch, validation on {len(self.val_x)} fixed windows"
        )

    def train_batch(self, indices: torch.Tensor, generator: torch.Generator | None = None):
        offset = torch.randint(0, self.context, (len(indices),), generator=generator)
        starts = indices.long() * self.context + offset
        idx = starts.view(-1, 1) + torch.arange(self.context + 1).view(1, -1)
        window = self.train_text[idx]
        return window[:, :-1], window[:, 1:]

    @staticmethod
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

    def validation_loss(self, model, device=None, batch_size: int = 64) -> float:
        """The mean validation cross-entropy on this process (no sharding)."""
        total = 0.0
        with torch.no_grad():
            for x, y in zip(self.val_x.split(batch_size), self.val_y.split(batch_size)):
                out = model(x.to(device) if device is not None else x)
                total += F.cross_entropy(
                    out.reshape(-1, out.shape[-1]), y.reshape(-1).to(out.device), reduction="sum"
                ).item()
        return total / self.val_y.numel()

    def evaluate(self, model, rank: int, size: int, device, all_sum, batch_size: int = 64) -> dict:
        """Validation loss, the windows sharded over the ranks."""
        total = 0.0
        with torch.no_grad():
            for chunk in torch.arange(rank, len(self.val_x), size).split(batch_size):
                out = model(self.val_x[chunk].to(device))
                total += F.cross_entropy(
                    out.reshape(-1, out.shape[-1]), self.val_y[chunk].reshape(-1).to(device), reduction="sum"
                ).item()
        (total,) = all_sum([total])
        return dict(val_loss=total / self.val_y.numel())

    def reached(self, record: dict, target: float) -> bool:
        return record[self.metric] <= target
