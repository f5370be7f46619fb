"""Up-front checks of `kfac-ext train` arguments: every bad value is refused before any work.

Each check raises ``ValueError`` whose message starts with the flag, says what
was given and what is accepted, so the CLI can print it as one line. The
checks run for every flag whatever ``--optimizer`` says: a value that would
break the K-FAC run must not first cost a full SGD run.

- ``check_train_args(a)``: the numbers and choices (after the per-dataset
  defaults are filled in). The learning rates are found by name (every
  ``lr_*`` attribute), so an optimizer added later is checked too.
- ``check_outputs(a)`` / ``check_output_path(flag, path, folder=...)``:
  ``--save`` / ``--plot`` can be written: the folder is created and a probe
  file written and removed, as the real write will do later (``os.access``
  would say yes to root on any folder).
- ``check_fits_data(a, dataset, n_train, world_size)``: the batch fits the
  training set and splits evenly over the processes.
- ``check_model_fits(model, a, sample)``: ``--model`` takes ``--data``'s samples.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

import torch

__all__ = [
    "check_train_args",
    "check_outputs",
    "check_output_path",
    "check_fits_data",
    "check_model_fits",
    "DEVICES",
    "PLOT_SUFFIXES",
]

DEVICES = ("auto", "cpu", "cuda")
# Formats matplotlib's Agg canvas writes; a path without one would be written
# under another name (matplotlib appends ".png").
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
_SEED_LIMIT = 2**32  # numpy's seed range is [0, 2**32)


def _fail(flag: str, value, expected: str) -> None:
    raise ValueError(f"{flag} must be {expected}; got {_show(value)}")


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_show(v) for v in value)
    return format(value, "g") if isinstance(value, float) else str(value)


def _number(
    flag: str,
    value,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    expected: str,
) -> None:
    """Finite ``value`` within the interval; NaN and infinities never pass."""
    ok = (
        isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        _fail(flag, value, expected)


def _flag(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def check_train_args(a: argparse.Namespace) -> None:
    """Refuse any out-of-range, NaN or infinite setting, naming its flag."""
    _number("--epochs", a.epochs, low=1, expected="an integer >= 1")
    _number("--batch-size", a.batch_size, low=1, expected="an integer >= 1")
    if a.stop_after is not None:
        _number("--stop-after", a.stop_after, low=1, expected="an integer >= 1")
    for attr, value in sorted(vars(a).items()):
        if attr.startswith("lr_") and isinstance(value, (int, float)):
            _number(_flag(attr), value, low=0, low_open=True, expected="> 0 and finite")
    _number("--momentum", a.momentum, low=0, high=1, high_open=True, expected="in [0, 1)")
    _number("--weight-decay", a.weight_decay, low=0, expected="a finite number >= 0")
    _number("--warmup-epochs", a.warmup_epochs, low=0, expected="a finite number >= 0")
    _number(
        "--decay-factor",
        a.decay_factor,
        low=0,
        high=1,
        low_open=True,
        expected="in (0, 1] (the lr is multiplied by it at each decay)",
    )
    for e in a.decay_epochs:
        _number(
            "--decay-epochs",
            e,
            low=0,
            high=a.epochs,
            expected=f"epochs in [0, --epochs {a.epochs}] (a later one would never apply)",
        )
    _number("--target-accuracy", a.target_accuracy, low=0, high=1, low_open=True, expected="a fraction in (0, 1]")
    # K-FAC settings, checked even when only SGD runs (they are in the printed config).
    _number("--damping", a.damping, low=0, low_open=True, expected="a finite number > 0")
    _number("--factor-decay", a.factor_decay, low=0, high=1, high_open=True, expected="in [0, 1)")
    for beta in a.adamw_betas:
        _number("--adamw-betas", beta, low=0, high=1, high_open=True, expected="two numbers in [0, 1)")
    _number("--kl-clip", a.kl_clip, low=0, low_open=True, expected="a finite number > 0")
    _number("--factor-update-steps", a.factor_update_steps, low=1, expected="an integer >= 1")
    _number("--inv-update-steps", a.inv_update_steps, low=1, expected="an integer >= 1")
    _number("--inv-lag-steps", a.inv_lag_steps, low=0, expected="an integer >= 0")
    _number("--auto-step-damping", a.auto_step_damping, low=0, low_open=True, expected="a finite number > 0")
    _number("--auto-step-interval", a.auto_step_interval, low=0, expected="an integer >= 0 (0: fixed damping)")
    _number("--interval-growth", a.interval_growth, low=1, expected="a finite number >= 1")
    _check_grown_intervals(a)
    # Run settings.
    _number("--seed", a.seed, low=0, high=_SEED_LIMIT, high_open=True, expected=f"an integer in [0, {_SEED_LIMIT - 1}]")
    if a.threads is not None:
        # Thousands of BLAS threads crash OpenBLAS (a segfault, not an error).
        cores = _cores()
        _number(
            "--threads",
            a.threads,
            low=0,
            high=cores,
            expected=f"0 (torch's default) to the {cores} cores this process may use",
        )
    _check_device(a.device)
    if a.data_dir is not None and a.data != "cifar10":
        raise ValueError(
            f"--data-dir {a.data_dir}: only --data cifar10 reads a folder; --data {a.data} would ignore it"
        )


def check_outputs(a: argparse.Namespace) -> None:
    """--save and --plot can be written, checked before any training."""
    if a.save:
        check_output_path("--save", a.save, folder=True)
        for entry in sorted(os.listdir(a.save)):  # where a checkpoint would be renamed to
            if entry.endswith(".pt") and os.path.isdir(os.path.join(a.save, entry)):
                raise ValueError(
                    f"--save {a.save}: {entry} there is a folder, where a "
                    "checkpoint file would go; move it or give another folder"
                )
    if a.plot:
        check_output_path("--plot", a.plot)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_MAX_INTERVAL = 2**31 - 1


def _check_grown_intervals(a: argparse.Namespace) -> None:
    """The intervals after every lr decay stay integers a step counter can reach."""
    decays = len(a.decay_epochs)
    for flag, steps in (("--factor-update-steps", a.factor_update_steps), ("--inv-update-steps", a.inv_update_steps)):
        if steps > _MAX_INTERVAL:
            raise ValueError(f"{flag} must be at most 2**31 - 1 steps; got {steps}")
        log_final = math.log(steps) + decays * math.log(a.interval_growth)
        if log_final > math.log(_MAX_INTERVAL):
            raise ValueError(
                f"--interval-growth {_show(a.interval_growth)}: after {decays} lr "
                f"decays the {flag} interval {steps} would grow past 2**31 steps; "
                "give a smaller growth"
            )


def _check_device(device: str) -> None:
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}; got {device}")
    if device == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise ValueError(f"--device cuda: {why} (torch {torch.__version__}); use --device cpu or auto")


def probe_write(directory: str) -> None:
    """Creates ``directory`` if needed and writes and removes one probe file in it; raises the
    ``OSError`` of whichever step fails (callers turn it into their flag's message)."""
    os.makedirs(directory, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".kfac-ext-write-test-", dir=directory)
    os.close(fd)
    os.unlink(probe)


def check_output_path(flag: str, path: str, folder: bool = False) -> None:
    """``path`` (a file, or with ``folder=True`` a folder) can be written: checked by writing.

    Creates the folder (the later write would too), writes and removes one
    probe file in it. Raises ``ValueError`` naming ``flag`` otherwise.
    """
    target = os.path.abspath(path)
    if folder:
        directory = target
        if os.path.exists(target) and not os.path.isdir(target):
            raise ValueError(
                f"{flag} {path}: is an existing file, not a folder; give a folder "
                "(the checkpoints are written inside it)"
            )
    else:
        directory = os.path.dirname(target)
        if os.path.isdir(target):
            raise ValueError(f"{flag} {path}: is a folder; give a file name")
        suffix = os.path.splitext(target)[1].lower()
        if suffix not in PLOT_SUFFIXES:
            raise ValueError(
                f"{flag} {path}: give a file name ending in one of {', '.join(PLOT_SUFFIXES[:3])}, ... ('' for no plot)"
            )
    try:
        probe_write(directory)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"{flag} {path}: cannot write there ({reason}: {exc.filename or directory})") from None


def check_fits_data(a: argparse.Namespace, dataset: str, n_train: int, world_size: int) -> None:
    """One training step needs a full global batch: refuse a batch the data cannot fill."""
    if a.batch_size > n_train:
        raise ValueError(
            f"--batch-size {a.batch_size}: larger than the {n_train} training "
            f"samples of {dataset}; use at most {n_train}"
        )
    if a.batch_size % world_size:
        raise ValueError(f"--batch-size {a.batch_size}: must be divisible by the number of processes ({world_size})")


def check_model_fits(model: torch.nn.Module, a: argparse.Namespace, sample: torch.Tensor) -> None:
    """--model takes --data's samples: one forward pass on ``sample`` before any training.

    In eval mode and without gradients, so no weight, BatchNorm statistic or RNG
    changes (the models draw no random numbers in eval mode).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ValueError(
            f"--model {a.model} does not take --data {a.data} samples of shape "
            f"{tuple(sample.shape[1:])} ({detail}); --help lists the models "
            "for each dataset"
        ) from None
    finally:
        model.train(was_training)
