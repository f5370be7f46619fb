"""Local search on the model's own latency (one call per accelerator).

A move takes one colocation group (a colour class, or a lone node) from its device
to another: the CPU pool, an accelerator whose call it touches by an edge, or an
unused accelerator.  A move is kept when the split stays feasible (memory,
contiguity of the two calls it changes, no calls waiting in a cycle) and the
latency falls; passes repeat until none helps or the time is up.  The latency
of a candidate is computed by :func:`.exact.assignment_latency`, the model's rule
on an array encoding; the answer is re-scored by :func:`.model.evaluate`.
"""

from __future__ import annotations

import math
import time

from ..graph import Graph
from .exact import Problem, assignment_latency
from .model import Split

__all__ = ["improve"]


def improve(graph: Graph, split: Split, deadline: float) -> tuple[Split, float]:
    """A split no worse than ``split`` (one call per accelerator), by first-improvement moves."""
    p = Problem(graph)
    pos = {v: i for i, v in enumerate(p.ids)}
    dev = [-1] * p.n
    for a, nodes in split.calls:
        for v in nodes:
            dev[pos[v]] = a
    members: dict[int, list[int]] = {}
    for i in range(p.n):
        members.setdefault(p.group[i], []).append(i)
    mem = [0.0] * p.k
    for g, ms in members.items():
        if dev[ms[0]] >= 0:
            mem[dev[ms[0]]] += p.group_size[g]
    value = assignment_latency(p, dev)
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for g, ms in members.items():
            if time.perf_counter() > deadline:
                break
            here = dev[ms[0]]
            touching = {dev[j] for i in ms for j in p.preds[i] + p.succs[i]} - {here, -1}
            targets = sorted(touching) + [-1]
            unused = [a for a in range(p.k) if mem[a] == 0.0 and not any(d == a for d in dev)]
            if unused:
                targets.append(unused[0])
            for d in targets:
                if d == here or (
                    d >= 0 and (not p.group_accel_ok[g] or mem[d] + p.group_size[g] > p.cap * (1 + 1e-12))
                ):
                    continue
                for i in ms:
                    dev[i] = d
                ok = all(_contiguous(p, dev, a) for a in {here, d} if a >= 0)
                new = assignment_latency(p, dev) if ok else math.inf
                if new < value - 1e-9 * max(1.0, value):
                    value = new
                    if here >= 0:
                        mem[here] -= p.group_size[g]
                    if d >= 0:
                        mem[d] += p.group_size[g]
                    improved = True
                    break
                for i in ms:
                    dev[i] = here
    calls = [(a, tuple(p.ids[i] for i in range(p.n) if dev[i] == a)) for a in range(p.k)]
    return Split.of(calls, tuple(p.ids[i] for i in range(p.n) if dev[i] < 0)), value


def _contiguous(p: Problem, dev: list[int], a: int) -> bool:
    """No path leaves accelerator a's set and comes back (positions are topological)."""
    left = [False] * p.n  # reached after leaving the set
    for i in range(p.n):
        if dev[i] == a:
            if any(left[j] for j in p.preds[i]):
                return False
        else:
            left[i] = any(dev[j] == a or left[j] for j in p.preds[i])
    return True
