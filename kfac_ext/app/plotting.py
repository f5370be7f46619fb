"""Learning curves of one or more training runs as one PNG (matplotlib, Agg backend).

Four panels: loss and the target metric (test accuracy, or the training
reconstruction loss of the autoencoder) against epochs, and the same against
training seconds (evaluation excluded, the clock time-to-target uses), one
line colour per run, the target as a dashed line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = ["plot_curves"]


def plot_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    path: str,
    target_accuracy: float | None = None,
    title: str = "",
    metric: str = "test_accuracy",
    metric_label: str = "test accuracy",
) -> str:
    """Write the curves of ``histories`` (run name -> per-epoch records) to ``path``.

    Each record needs ``epoch``, ``train_loss``, ``test_loss``, ``metric``
    and ``train_time_s``. ``target_accuracy`` is the target of ``metric`` (a
    fraction for an accuracy, shown in %). Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display needed, and never opens a window
    import matplotlib.pyplot as plt

    if not histories or not any(histories.values()):
        raise ValueError("plot_curves needs at least one run with at least one epoch")
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=80)
    colours = {"sgd": "tab:blue", "kfac": "tab:red", "adamw": "tab:green", "soap": "tab:purple"}
    accuracy = metric.endswith("accuracy")
    scale = 100.0 if accuracy else 1.0
    for name, records in histories.items():
        if not records:
            continue
        colour = colours.get(name)
        epochs = [r["epoch"] for r in records]
        seconds = [r["train_time_s"] for r in records]
        for col, xs in enumerate((epochs, seconds)):
            loss_ax, acc_ax = axes[0][col], axes[1][col]
            loss_ax.plot(xs, [r["train_loss"] for r in records], color=colour, label=f"{name} train")
            loss_ax.plot(xs, [r["test_loss"] for r in records], color=colour, linestyle=":", label=f"{name} test")
            acc_ax.plot(xs, [scale * r[metric] for r in records], color=colour, marker=".", label=name)
    for col, xlabel in enumerate(("epoch", "training time (s, evaluation excluded)")):
        axes[0][col].set_yscale("log")
        axes[0][col].set_ylabel("loss" if not accuracy else "cross-entropy loss")
        axes[1][col].set_ylabel(f"{metric_label} (%)" if accuracy else metric_label)
        if not accuracy:
            axes[1][col].set_yscale("log")
        axes[1][col].set_xlabel(xlabel)
        if target_accuracy is not None:
            axes[1][col].axhline(
                scale * target_accuracy,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"target {scale * target_accuracy:g}" + ("%" if accuracy else ""),
            )
        for row in (0, 1):
            axes[row][col].grid(True, alpha=0.3)
            axes[row][col].legend(fontsize=8)
    if accuracy:  # zoom the accuracy panels on the interesting range
        lows = [100 * r[metric] for recs in histories.values() for r in recs]
        top = max(lows)
        bottom = max(0.0, min(sorted(lows)[len(lows) // 4], 100 * (target_accuracy or 1) - 10))
        for col in (0, 1):
            axes[1][col].set_ylim(bottom, min(100.0, top + 1))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
