"""Training checkpoints: one file per run, written atomically, checked on load.

A checkpoint is a ``torch.save``d dict: a format tag, the run's resolved
configuration (everything that decides the curve), the epoch and step reached,
the model / optimizer / preconditioner ``state_dict``s, the torch, numpy and
Python RNG states, the data-order seed and the history recorded so far; and,
optionally, ``pending_batch``: the last global batch (x, y) when an
adaptive-damping measurement of it is pending, from which a resume re-makes
its closure (kfac_ext.app.train).

- Writing goes to a temporary file in the same folder, is fsynced, then
  ``os.replace``d over the old file: a crash leaves the old checkpoint or the
  new one, never half of one. The temporary file's name carries the host and
  process id of its writer, so the next save or resume removes the leftovers of
  a killed writer (and only those: a live writer's file is kept).
- Ctrl-C and SIGTERM while writing are held until the file is complete, then
  raised (``KeyboardInterrupt`` / ``Terminated``, which the CLI turns into the
  resume hint and exit 130 / 143).
- Loading uses ``weights_only=True`` (no arbitrary pickles), and a file that
  cannot be read, is empty, has the wrong format, lacks an entry or holds one of
  the wrong kind (a hand edit: history not a list, an RNG state torch cannot
  restore, ...), or was made with a different configuration raises
  ``CheckpointError`` that names the file and the problem. The checkpoint is
  never written while loading, so a bad resume overwrites nothing.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import random
import signal
import socket
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "FORMAT",
    "Terminated",
    "save_checkpoint",
    "load_checkpoint",
    "check_config",
    "capture_rng_state",
    "restore_rng_state",
    "remove_stale_temporaries",
    "resume_hint",
    "sigterm_as_interrupt",
]

FORMAT = "kfac_ext.train.checkpoint/1"  # a format tag, not a module path: kept so old checkpoints load
# Every entry a resume reads; save and load both insist on all of them.
_REQUIRED = (
    "format",
    "config",
    "epoch",
    "step",
    "model",
    "optimizer",
    "preconditioner",
    "rng",
    "history",
    "step_times",
    "train_time_s",
    "wall_s",
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, wrong format or mismatched."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, a scheduler's polite stop: handled as Ctrl-C is (a save in progress is
    finished, the resume hint printed), but the process exits 143 (128 + SIGTERM)."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside: SIGTERM raises :class:`Terminated` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python RNG states, as weights_only-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` (which must carry the keys of a checkpoint) to ``path`` atomically.

    A Ctrl-C or SIGTERM that arrives while writing is held until the write is
    done, then raised (``KeyboardInterrupt`` / :class:`Terminated`): the run stops
    with its newest checkpoint on disk. (Raised inside ``torch.save``, it would
    also surface as a RuntimeError of the zip writer.)
    """
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    with _signals_deferred():
        _write_atomically(os.fspath(path), state)


@contextlib.contextmanager
def _signals_deferred():
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    received = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be put back; use Python's.
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            signal.signal(sig, previous[sig] if previous[sig] is not None else default)
    if signal.SIGTERM in received:
        raise Terminated
    if received:
        raise KeyboardInterrupt


def _write_atomically(path: str, state: Mapping[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path) + f"{_HOST}-{os.getpid()}-", dir=folder)
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


def _temp_prefix(path: str) -> str:
    return ".tmp-" + os.path.basename(path) + "-"


_HOST = socket.gethostname().replace("-", "_")


def _writer_alive(name: str, prefix: str) -> bool:
    """Whether the writer of temporary file ``name`` may still be writing it."""
    parts = name[len(prefix) :].split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False  # an older or foreign name: no writer can be told apart, so stale
    host, pid = parts[0], int(parts[1])
    if host != _HOST:
        return True  # another machine's writer (shared folder): cannot tell, keep it
    if pid == os.getpid():
        return False  # ours, from an earlier save that was interrupted
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files a killed save of ``path`` left beside it; returns them."""
    path = os.fspath(path)
    prefix = _temp_prefix(path)
    folder = os.path.dirname(os.path.abspath(path))
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*")):
        if not _writer_alive(os.path.basename(tmp), prefix):
            try:
                os.unlink(tmp)
                removed.append(tmp)
            except OSError:  # gone already, or a read-only folder: resuming from it is fine
                pass
    return removed


def resume_hint(save_dir: str | None) -> str:
    """What an interrupted run tells its user: how to continue it, if it can be."""
    if not save_dir:
        return "interrupted"
    if not glob.glob(os.path.join(glob.escape(save_dir), "*.pt")):
        return f"interrupted before the first checkpoint was written to {save_dir}"
    return f"interrupted; resume with --resume {save_dir}"


def load_checkpoint(
    path: str | os.PathLike, expected_config: Mapping[str, Any] | None = None, record_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Read a checkpoint; with ``expected_config``, insist it was made with that configuration.

    Every history record must hold ``epoch``, ``train_loss``, ``train_time_s``,
    ``lr`` and ``record_keys`` (what the caller reads back, e.g. its target
    metric). Also removes the temporary files killed saves of ``path`` left
    beside it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): not a kfac_ext checkpoint; delete it, or resume from another folder"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200] or "no message"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a kfac_ext checkpoint ({type(exc).__name__}: {detail})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {FORMAT!r}")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it lacks {missing}")
    # The settings first: another --task's history lacks this task's metric, and that
    # is a different run, not a damaged file.
    if expected_config is not None and isinstance(state["config"], dict):
        check_config(state["config"], expected_config, path)
    problem = _malformed_entry(state, _RECORD_KEYS + tuple(record_keys))
    if problem:
        raise CheckpointError(f"checkpoint {path} is damaged (edited by hand?): {problem}")
    remove_stale_temporaries(path)
    return state


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_seconds(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


_RECORD_KEYS = ("epoch", "train_loss", "train_time_s", "lr")


def _malformed_entry(state: Mapping[str, Any], record_keys: tuple[str, ...]) -> str | None:
    """What is wrong with the entries of a checkpoint that has them all, or None."""
    if not isinstance(state["config"], dict):
        return f"config is a {type(state['config']).__name__}, not a dict"
    for key in ("epoch", "step"):
        if not _is_count(state[key]):
            return f"{key} is {state[key]!r}, not an integer >= 0"
    for key in ("model", "optimizer"):
        if not isinstance(state[key], dict):
            return f"{key} is a {type(state[key]).__name__}, not a state dict"
    if state["preconditioner"] is not None and not isinstance(state["preconditioner"], dict):
        return "preconditioner is neither a state dict nor None"
    history = state["history"]
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        return "history is not a list of per-epoch records"
    if len(history) != state["epoch"]:
        return f"history holds {len(history)} epochs, but epoch is {state['epoch']}"
    for i, record in enumerate(history):
        missing = [k for k in record_keys if k not in record]
        if missing:
            return f"history record {i} lacks {missing}"
        if record["epoch"] != i + 1:
            return f"history record {i} is epoch {record['epoch']!r}, not {i + 1}"
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in record.values()):
            return f"history record {i} holds a value that is not a number"
    if not isinstance(state["step_times"], list) or not all(map(_is_seconds, state["step_times"])):
        return "step_times is not a list of seconds"
    for key in ("train_time_s", "wall_s"):
        if not _is_seconds(state[key]):
            return f"{key} is {state[key]!r}, not seconds"
    batch = state.get("pending_batch")  # optional: see kfac_ext.app.train
    if batch is not None and not (
        isinstance(batch, dict) and all(isinstance(batch.get(k), torch.Tensor) for k in "xy")
    ):
        return "pending_batch is not a dict of tensors x and y"
    return _unrestorable_rng(state["rng"])


def _unrestorable_rng(rng) -> str | None:
    """Try the saved RNG states for real, then put the current ones back."""
    if not isinstance(rng, dict):
        return f"rng is a {type(rng).__name__}, not a dict of RNG states"
    current = capture_rng_state()
    try:
        restore_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        return f"rng cannot be restored ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
    finally:
        restore_rng_state(current)
    return None


# Settings a configuration leaves out when they have their default value.
_ABSENT_MEANS = {"task": "classify"}


def check_config(saved: Mapping[str, Any], expected: Mapping[str, Any], path: str = "") -> None:
    """Raise ``CheckpointError`` listing every setting that differs between the two."""
    keys = sorted(set(saved) | set(expected))

    def get(config, k):
        return config.get(k, _ABSENT_MEANS.get(k, "<absent>"))

    diffs = [
        f"{k}: checkpoint {get(saved, k)!r} vs now {get(expected, k)!r}"
        for k in keys
        if get(saved, k) != get(expected, k)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was made with different settings; resume with "
            f"the same ones (or start a new run): " + "; ".join(diffs)
        )
