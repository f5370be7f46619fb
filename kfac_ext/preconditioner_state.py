"""A KFACPreconditioner's state dict: what it holds, and the checks a saved one
passes before anything of it is assigned.

The keys of a default state are kfac-pytorch's (``steps``, ``layers`` with ``A``/``G``
per layer, the hyperparameters' current numbers); the options that only this
library has add a key only when they are on, so a default state loads in either.
:class:`~kfac_ext.preconditioner.KFACPreconditioner` keeps the two public methods and
does the assignment itself; this file builds the dict and checks a loaded one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kfac_ext import schedules as sch
from kfac_ext.background import PendingSecondOrder

if TYPE_CHECKING:
    from kfac_ext.preconditioner import KFACPreconditioner


@dataclass
class CheckedState:
    """A state dict that passed every check, in the pieces the preconditioner assigns."""

    layers: dict[str, dict]
    steps: int
    factor_tracker: Any
    inv_tracker: Any
    numbers: list[tuple[sch.Hyperparameter, Any]]
    basis_damping: float | None
    pending: PendingSecondOrder | None
    skipped_factor_updates: int


def build_state(p: KFACPreconditioner, include_eigens: bool) -> dict:
    """The state dict of ``p``: copies, so a later step does not change it."""
    layers = {}
    for i, l in enumerate(p.layers):
        entry = {"A": l.A.clone(), "G": l.G.clone(), "factor_updates": l.factor_updates}
        if include_eigens and i in p._second:
            entry["second_order"] = {w: [t.clone() for t in ts] for w, ts in p._second[i].items()}
        layers[l.name] = entry
    state = {
        "steps": p.steps,
        "compute_method": p.compute_method,
        "factor_tracker": p._factor_tracker.state_dict(),
        "inv_tracker": p._inv_tracker.state_dict(),
        "skipped_factor_updates": p.skipped_factor_updates,
        "layers": layers,
        # the current numbers, which a LambdaParamScheduler may have changed
        "hyperparameters": sch.number_values(p._hyperparameters()),
        "basis_damping": p._basis_damping,
    }
    if p.relative_damping:  # only then: a default state keeps kfac-pytorch's keys
        state["relative_damping"] = True
    if p._pending is not None:
        state["pending_second_order"] = p._pending.state_dict([l.name for l in p.layers])
    if p._adaptive is not None:
        state["adaptive_damping"] = p._adaptive.state_dict()
    if p._auto is not None:
        state["auto_step"] = p._auto.state_dict()
    return state


def check_state(p: KFACPreconditioner, state: dict) -> CheckedState:
    """Every check of a state dict against ``p``, with a one-line ``ValueError`` naming
    what differs; nothing of ``p`` is changed (an AutoStep validates its part here and
    assigns it only when valid, as its own ``load_state_dict`` does)."""
    try:
        saved = state["layers"]
        steps = int(state["steps"])
        trackers = state["factor_tracker"], state["inv_tracker"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"load_state_dict: not a KFACPreconditioner state dict ({exc!r})") from None
    names = [l.name for l in p.layers]
    _check_layer_names(names, saved)
    _check_second_order_settings(p, state, saved)
    for l in p.layers:
        _check_layer_entry(p, l, saved[l.name])
    try:  # a schedule given here wins over a saved number: it is a function of the step
        numbers = sch.checked_values(p._hyperparameters(), state.get("hyperparameters", {}), schedules="skip")
        basis_damping = state.get("basis_damping")
        if basis_damping is not None and sch.positive(basis_damping) is not None:
            raise ValueError(f"basis_damping must be None or {sch.positive(basis_damping)}, got {basis_damping!r}")
    except ValueError as exc:
        raise ValueError(f"load_state_dict: {exc}") from None
    pending = _pending_from_state(p, state.get("pending_second_order"), names)
    if p._adaptive is not None and "adaptive_damping" in state:
        p._adaptive.check_state_dict(state["adaptive_damping"], p.layers)
    if p._auto is not None and "auto_step" in state:  # validates before it assigns
        p._auto.load_state_dict(state["auto_step"], p._model)
    return CheckedState(
        layers=saved,
        steps=steps,
        factor_tracker=trackers[0],
        inv_tracker=trackers[1],
        numbers=list(numbers),
        basis_damping=basis_damping,
        pending=pending,
        skipped_factor_updates=int(state.get("skipped_factor_updates", 0)),
    )


def _check_layer_names(names: list[str], saved: dict) -> None:
    missing = [n for n in names if n not in saved]
    unexpected = [n for n in saved if n not in names]
    if missing or unexpected:
        raise ValueError(
            f"load_state_dict: layer sets differ; missing from the state dict: "
            f"{missing}, not registered here: {unexpected}"
        )


def _check_second_order_settings(p: KFACPreconditioner, state: dict, saved: dict) -> None:
    """Saved eigendecompositions (or inverses) are of this method and factor scaling."""
    if not any("second_order" in e for e in saved.values()):
        return  # only factors: recomputed under whatever settings load them
    if state.get("compute_method", p.compute_method) != p.compute_method:
        raise ValueError(
            f"load_state_dict: saved with compute_method="
            f"{state['compute_method']!r}, this one uses {p.compute_method!r}"
        )
    if bool(state.get("relative_damping", False)) != p.relative_damping:
        raise ValueError(
            f"load_state_dict: saved with relative_damping={not p.relative_damping}, "
            f"this one uses relative_damping={p.relative_damping} (the saved "
            "eigendecompositions are of differently scaled factors; save with "
            "state_dict(include_eigens=False) or match the setting)"
        )


def _check_layer_entry(p: KFACPreconditioner, l: Any, entry: dict) -> None:
    """One layer's factors and second-order tensors have this layer's shapes."""
    for w, want in (("A", tuple(l.A.shape)), ("G", tuple(l.G.shape))):
        t = entry.get(w)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            shape = "x".join(map(str, want)) + (" (diagonal)" if len(want) == 1 else "")
            raise ValueError(f"load_state_dict: layer {l.name!r}: factor {w} must be {shape}, got {got}")
    for w, ts in entry.get("second_order", {}).items():
        shapes = [tuple(t.shape) for t in p._empty_second_order(l, w)]
        if w not in ("A", "G") or [tuple(t.shape) for t in ts] != shapes:
            raise ValueError(
                f"load_state_dict: layer {l.name!r}: second-order data of factor {w!r} must have shapes {shapes}"
            )


def _pending_from_state(p: KFACPreconditioner, saved: dict | None, names: list[str]) -> PendingSecondOrder | None:
    """A lagged update from a state dict, validated (None when there is none)."""
    if saved is None:
        return None
    try:
        return PendingSecondOrder.from_state_dict(
            saved,
            names,
            [{"A": tuple(l.A.shape), "G": tuple(l.G.shape)} for l in p.layers],
            p.inv_dtype,
            [l.device for l in p.layers],
        )
    except ValueError as exc:
        raise ValueError(f"load_state_dict: {exc}") from None
