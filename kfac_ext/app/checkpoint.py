"""Training checkpoints: one file per run, written atomically, checked on load.

A checkpoint is a ``torch.save``d dict: a format tag, the run's resolved
configuration (everything that decides the curve), the epoch and step reached,
the model / optimizer / preconditioner ``state_dict``s, the torch, numpy and
Python RNG states, the data-order seed and the history recorded so far.

- Writing goes to a temporary file in the same folder, is fsynced, then
  ``os.replace``d over the old file: a crash leaves the old checkpoint or the
  new one, never half of one.
- Loading uses ``weights_only=True`` (no arbitrary pickles), and a file that
  cannot be read, has the wrong format, or was made with a different
  configuration raises ``CheckpointError`` that names the file and the problem.
  Nothing is written while loading, so a bad resume overwrites nothing.
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "load_checkpoint",
           "check_config", "capture_rng_state", "restore_rng_state"]

FORMAT = "kfac_ext.train.checkpoint/1"  # a format tag, not a module path: kept so old checkpoints load
_REQUIRED = ("format", "config", "epoch", "step", "model", "optimizer", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, wrong format or mismatched."""


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python RNG states, as weights_only-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` (which must carry the keys of a checkpoint) to ``path`` atomically."""
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike,
                    expected_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint; with ``expected_config``, insist it was made with that configuration."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a kfac_ext checkpoint "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {FORMAT!r}")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it lacks {missing}")
    if expected_config is not None:
        check_config(state["config"], expected_config, path)
    return state


def check_config(saved: Mapping[str, Any], expected: Mapping[str, Any], path: str = "") -> None:
    """Raise ``CheckpointError`` listing every setting that differs between the two."""
    keys = sorted(set(saved) | set(expected))
    diffs = [f"{k}: checkpoint {saved.get(k, '<absent>')!r} vs now {expected.get(k, '<absent>')!r}"
             for k in keys if saved.get(k, "<absent>") != expected.get(k, "<absent>")]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was made with different settings; resume with "
                              f"the same ones (or start a new run): " + "; ".join(diffs))
