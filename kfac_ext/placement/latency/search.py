"""Local search on the model's own latency (one call per accelerator).

Two kinds of move, each to the CPU pool, an accelerator whose call it touches by an
edge, or an unused accelerator:

* one colocation group (a colour class, or a lone node) from its device to another;
* a *stretch* of a branch: consecutive nodes of a chain of one-input one-output nodes
  that are alone in their colocation groups (an Inception branch, a run of layers),
  moved together.  One node moved alone to a new call pays a fetch and a send that
  the whole stretch pays once: a branch run on an idle accelerator while the CPU
  pool runs the module's other branches is reached only this way.

A move is kept when the split stays feasible (memory, contiguity of the calls it
changes, no calls waiting in a cycle) and the latency falls; passes of group moves
repeat until none helps, then a pass of stretch moves, and again while either
helps or the time is up.

Then *kicks*: each call in turn is dissolved (its nodes to the CPU pool, always a
split of the model) and the moves above run again from there; the first kick that
ends below the incumbent replaces it, and the kicks start over.  They stop after a
round in which no call's kick helps, or when the time is up.  (Inception-v3: a big
call over two modules dissolved, the search rebuilds them as a call per long branch
beside the CPU pool, 1258.7 -> 1206.1.)  The latency of a candidate is computed by
:func:`.exact.assignment_latency`, the model's rule on an array encoding; the
answer is re-scored by :func:`.model.evaluate`.
"""

from __future__ import annotations

import math
import time

from ..graph import Graph
from .exact import Problem, assignment_latency
from .model import Split

__all__ = ["Budget", "improve"]


class Budget:
    """The search's work budget: ``moves`` candidate splits scored (each a contiguity
    check and a latency, O(nodes + edges)), with ``deadline`` (``time.perf_counter()``)
    as a safety net.  Stopped by the count, the search's answer depends on the graph and
    the count only, not on the machine's load; stopped by the deadline, it may not."""

    def __init__(self, moves: float = math.inf, deadline: float = math.inf):
        self.moves = moves
        self.deadline = deadline
        self.spent = 0
        self.timed_out = False

    def left(self) -> bool:
        """True while both the count and the time allow another candidate."""
        if self.spent >= self.moves:
            return False
        if time.perf_counter() > self.deadline:
            self.timed_out = True
            return False
        return True

    def spend(self) -> None:
        self.spent += 1

    @property
    def stopped_by(self) -> str:
        """``"time"``, ``"budget"`` or ``""`` (the search ended by itself)."""
        return "time" if self.timed_out else ("budget" if self.spent >= self.moves else "")


def improve(graph: Graph, split: Split, deadline: float, budget: Budget | None = None) -> tuple[Split, float]:
    """A split no worse than ``split`` (one call per accelerator): moves, then kicks, until
    neither helps, ``budget``'s moves are spent or ``deadline`` passes (a budget's deadline
    is the earlier of its own and ``deadline``)."""
    if budget is None:
        budget = Budget()
    budget.deadline = min(budget.deadline, deadline)
    split, value = _descend(graph, split, budget)
    kicked = True
    while kicked and budget.left():
        kicked = False
        for c in range(len(split.calls)):
            if not budget.left():
                break
            rest = [call for d, call in enumerate(split.calls) if d != c]
            start = Split.of(rest, tuple(split.cpu) + split.calls[c][1])
            candidate, new = _descend(graph, start, budget)
            if new < value - 1e-9 * max(1.0, value):
                split, value, kicked = candidate, new, True
                break
    return split, value


def _descend(graph: Graph, split: Split, budget: Budget) -> tuple[Split, float]:
    """First-improvement moves from ``split`` until none helps or the time is up."""
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
    chains = _chains(p, members)
    improved = True
    stretches = True
    while (improved or stretches) and budget.left():
        if not improved:  # group moves are stuck: try stretches, then groups again
            stretches = False
            value, improved = _stretch_pass(p, dev, mem, chains, value, budget)
            continue
        improved = False
        stretches = True
        for g, ms in members.items():
            if not budget.left():
                break
            here = dev[ms[0]]
            touching = {dev[j] for i in ms for j in p.preds[i] + p.succs[i]} - {here, -1}
            targets = sorted(touching) + [-1]
            used = set(dev)  # one pass in C, not k passes in Python
            unused = [a for a in range(p.k) if mem[a] == 0.0 and a not in used]
            if unused:
                targets.append(unused[0])
            for d in targets:
                if d == here or (
                    d >= 0 and (not p.group_accel_ok[g] or mem[d] + p.group_size[g] > p.cap * (1 + 1e-12))
                ):
                    continue
                if not budget.left():
                    break
                budget.spend()
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


_MAX_STRETCH = 12  # longest stretch moved at once


def _chains(p: Problem, members: dict[int, list[int]]) -> list[list[int]]:
    """Maximal chains of positions with one input and one output, each alone in its group."""
    free = [len(p.preds[i]) == 1 and len(p.succs[i]) == 1 and len(members[p.group[i]]) == 1 for i in range(p.n)]
    out = []
    for i in range(p.n):
        if free[i] and not free[p.preds[i][0]]:  # a chain starts here
            chain = [i]
            while free[p.succs[chain[-1]][0]]:
                chain.append(p.succs[chain[-1]][0])
            if len(chain) > 1:
                out.append(chain)
    return out


def _stretch_pass(p: Problem, dev: list[int], mem: list[float], chains, value: float, budget: Budget):
    """One pass of stretch moves (first improvement), in place; returns (value, improved)."""
    improved = False
    for chain in chains:
        for s in range(len(chain)):
            for e in range(s + 1, min(len(chain), s + _MAX_STRETCH)):
                if not budget.left():
                    return value, improved
                seg = chain[s : e + 1]
                old = [dev[i] for i in seg]
                size = [p.group_size[p.group[i]] for i in seg]  # each alone in its group
                accel_ok = all(p.group_accel_ok[p.group[i]] for i in seg)
                touching = {dev[j] for i in (seg[0], seg[-1]) for j in p.preds[i] + p.succs[i]} | set(old)
                targets = sorted(touching - {-1}) + [-1]
                used = set(dev)
                unused = [a for a in range(p.k) if mem[a] == 0.0 and a not in used]
                if unused:
                    targets.append(unused[0])
                for d in targets:
                    if all(x == d for x in old):
                        continue
                    if d >= 0:
                        extra = sum(b for b, x in zip(size, old) if x != d)
                        if not accel_ok or mem[d] + extra > p.cap * (1 + 1e-12):
                            continue
                    if not budget.left():
                        return value, improved
                    budget.spend()
                    for i in seg:
                        dev[i] = d
                    ok = all(_contiguous(p, dev, a) for a in set(old) | {d} if a >= 0)
                    new = assignment_latency(p, dev) if ok else math.inf
                    if new < value - 1e-9 * max(1.0, value):
                        value, improved = new, True
                        for b, x in zip(size, old):
                            if x >= 0:
                                mem[x] -= b
                            if d >= 0:
                                mem[d] += b
                        break
                    for i, x in zip(seg, old):
                        dev[i] = x
    return value, improved


def _contiguous(p: Problem, dev: list[int], a: int) -> bool:
    """No path leaves accelerator a's set and comes back (positions are topological).
    Only positions between the set's first and last can be on such a path."""
    if a not in dev:
        return True
    first = dev.index(a)
    last = p.n - 1 - dev[::-1].index(a)
    left = [False] * p.n  # reached after leaving the set
    for i in range(first + 1, last + 1):
        if dev[i] == a:
            if any(left[j] for j in p.preds[i]):
                return False
        else:
            left[i] = any(dev[j] == a or left[j] for j in p.preds[i])
    return True
