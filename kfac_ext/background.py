"""Eigendecompositions (or inverses) on a background thread: ``inv_lag_steps``.

On an inverse-update step the preconditioner normally stops and decomposes
every factor before it preconditions. With ``inv_lag_steps = k >= 1`` it
instead snapshots the factors, hands the decompositions to one background
thread and keeps preconditioning with the basis it already has; the new basis
is installed at the start of ``step()`` k steps later. The thread runs the
same ops (they release the GIL), with the caller's number of intra-op threads,
so on a CPU with a spare core the solves overlap the next forward and backward
passes instead of adding to the step.

Deterministic by construction: the result depends only on the snapshot, and it
is installed at a fixed step (waiting for the thread if it is not done), never
"whenever it finishes". A checkpoint stores the snapshot, so a resumed run
installs the same basis at the same step as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PendingSecondOrder:
    """One inverse update in flight: what was snapshotted and when it lands."""

    step: int  # the inverse-update step that took the snapshot
    apply_step: int  # the first step() that installs and uses the result
    todo: list[int]  # layers whose second-order data the update replaces
    owned: list[tuple[int, str]]  # the factors this rank decomposes, (layer, "A"|"G")
    factors: list[torch.Tensor]  # their snapshot, in the order of ``owned``
    damping: float  # the inverse method's damping at ``step``
    future: Future | None = None  # the background job; None: not started

    def state_dict(self, names: Sequence[str]) -> dict:
        """The snapshot, not the thread's result: loading recomputes it, and the
        decomposition of the same snapshot is the same basis at the same step."""
        return {
            "step": self.step,
            "apply_step": self.apply_step,
            "layers": [names[i] for i in self.todo],
            "owned": [[names[i], w] for i, w in self.owned],
            "factors": [f.clone() for f in self.factors],
            "damping": self.damping,
        }

    @classmethod
    def from_state_dict(
        cls,
        saved: dict,
        names: Sequence[str],
        dims: Sequence[dict[str, int | tuple[int, ...]]],
        dtype: torch.dtype,
        devices: Sequence[torch.device],
    ) -> PendingSecondOrder:
        """Validate and rebuild a :meth:`state_dict`; ``dims[i]`` maps "A"/"G" of
        layer i to its factor size (or shape), the factors land in ``dtype`` on ``devices[i]``.
        Raises ValueError naming what is wrong."""
        names = list(names)
        try:
            todo = [names.index(n) for n in saved["layers"]]
            owned = [(names.index(n), w) for n, w in saved["owned"]]
            factors, step = list(saved["factors"]), int(saved["step"])
            apply_step, damping = int(saved["apply_step"]), float(saved["damping"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"pending_second_order is malformed ({exc!r})") from None
        if len(factors) != len(owned):
            raise ValueError(f"pending_second_order has {len(factors)} factors for {len(owned)} owned entries")
        for (i, w), f in zip(owned, factors):
            if w not in ("A", "G"):
                raise ValueError(f"pending_second_order: a factor is 'A' or 'G', got {w!r}")
            n = dims[i][w]  # a size, or a shape (a diagonal factor's is (n,))
            shape = tuple(n) if isinstance(n, (tuple, list)) else (n, n)
            if not isinstance(f, torch.Tensor) or tuple(f.shape) != shape:
                raise ValueError(
                    f"pending_second_order: factor {w} of layer {names[i]!r} must "
                    f"be a {'x'.join(map(str, shape))} tensor"
                )
        factors = [f.to(dtype=dtype, device=devices[i]).clone() for (i, _), f in zip(owned, factors)]
        return cls(step, apply_step, todo, owned, factors, damping)


def _with_threads(threads: int, fn: Callable[..., Any], *args: Any) -> Any:
    # A fresh thread does not inherit the caller's torch.set_num_threads (OpenMP
    # keeps it per thread): without this the solves would use every core and
    # compete with the training thread they are meant to stay out of the way of.
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(*args)


class BackgroundSolver:
    """One worker thread, started on first use."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kfac-second-order")
        return self._pool.submit(_with_threads, torch.get_num_threads(), fn, *args)
