"""The least time a block can take when its tail sits on another device than its
head: ``move_floor``, a lower bound that latency_bound adds to each move.

Setting (latency_bound's step 4): a block from head ``h`` on device D1 to tail
``t`` on another device D2, everything before ``h`` finished (they are all its
ancestors) when ``h`` finishes, at time 0.  Every placement of the block's inner
nodes maps onto a *relaxed* one whose labels are D1, D2, ``EA`` (any other
accelerator) and ``EC`` (any other CPU):

* D1 and D2 still run their block nodes one at a time in topological order (D1
  after ``h``, D2 ending with ``t``);
* nodes labelled ``EA`` or ``EC`` wait for nothing but their inputs (as if each
  had a device of its own), and an edge between two nodes of one such label is
  free (on one device it is; between CPUs it is anyway);
* every other edge costs what latency.py charges between those kinds of device;
* memory is ignored.

Each relaxation only removes waits, so the relaxed ``finish(t)`` is at most the
real one, and its least value over all labellings bounds the block's time from
below whatever bytes the DP gives the two ends.  That least value is computed
exactly, up to the merging below, by a dynamic program along the topological
order: a state is the labels and finish times of the nodes still awaited by a
later node, D1's and D2's free times, and when the tail's inputs so far arrive on
D2; of states with the same labels only those no other beats in every time are
kept.  Beyond ``_KEEP`` of them, neighbours merge into their least in each time:
a state at least as early as both, so the result stays a lower bound.  A quick
first pass that drops states instead of merging them ends at a real labelling;
states that cannot end before it (their awaited nodes' longest fastest path to
the tail, free transfers) are then dropped from the merged pass, which keeps
few enough states to stay exact on the bundled workloads.  A block whose
awaited nodes carry more than ``_LABEL_SETS`` label sets gets no floor (0), and so
do the blocks left once ``_WORK`` states have been extended for one graph.

``move_front`` follows the bytes on D1 and D2 too (two more coordinates): its
points (bytes on D1, on D2, time) have one at most every placement of the block,
which lets latency_bound charge a move for the memory it leaves on its two ends.
On Inception-v3 the floors meet the block DP's best moves (latency_blocks), and
the bound rises from 903.0 to 915.4 (floors) and 919.8 (with bytes).
"""
from __future__ import annotations

import math
import weakref

import numpy as np

from .graph import Graph

__all__ = ["move_floor", "move_front"]

_KEEP = 64  # states per label set at most (more merge into their least: a relaxation)
_BEAM = 8  # states per label set in the quick pass that finds a labelling to beat
_CUT = 1.15  # move_front follows labellings ending before this times a real one's end
_WORK = 2_500_000  # states extended per graph at most (Inception-v3 needs 0.8M): past it,
# the blocks left get no floor, which bounds the time on any graph
_LABEL_SETS = 2048  # label sets of awaited nodes at most (4 ** awaited nodes): wider blocks get no floor
_D1, _D2, _EA, _EC = 0, 1, 2, 3


def move_floor(graph: Graph, block: list[int], head_kind: str, tail_kind: str | None) -> float:
    """A lower bound on ``finish(tail) - finish(head)`` for ``block`` (its head,
    inner nodes and tail, in topological order) with the head on a device of kind
    ``head_kind`` and the tail on another of kind ``tail_kind`` (module docstring);
    ``tail_kind=None``: the tail on the head's device (a block that stays; then
    there is no D2).  Edges into the block from outside it (and the head) are
    dropped, which only loosens the bound.  Remembered per graph: latency_bound asks
    for the same blocks more than once."""
    known = _known.setdefault(graph, {})
    key = (tuple(block), head_kind, tail_kind)
    if key not in known:
        # a quick feasible labelling (a beam: extra states dropped, not merged) caps the
        # answer; states that cannot beat it are then dropped from the merged DP
        best_known = _floor(graph, block, head_kind, tail_kind, _BEAM, math.inf, beam=True)
        found = _floor(graph, block, head_kind, tail_kind, _KEEP, best_known)
        known[key] = 0.0 if found == 0.0 else min(best_known, found)
    return known[key]


def move_front(graph: Graph, block: list[int], head_kind: str, tail_kind: str | None) -> list[tuple]:
    """As :func:`move_floor`, with memory: points (bytes of the block on D1, on D2, time)
    such that every placement of the block has one at most in all three (bytes
    counted on D1 and D2 only; for a block that stays the tail's bytes are on D1).
    Labellings that cannot end before _CUT times a real labelling's end are not
    followed: the point (0, 0, that end) stands for them."""
    known = _known.setdefault(graph, {})
    key = (tuple(block), head_kind, tail_kind, "front")
    if key not in known:
        cutoff = _CUT * _floor(graph, block, head_kind, tail_kind, _BEAM, math.inf, beam=True)
        front = _floor(graph, block, head_kind, tail_kind, _KEEP, cutoff, with_bytes=True)
        known[key] = [(0.0, 0.0, 0.0)] if front == 0.0 else front + [(0.0, 0.0, cutoff)]
    return known[key]


_known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_spent: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _floor(graph: Graph, block: list[int], head_kind: str, tail_kind: str | None, keep: int,
           cutoff: float, beam: bool = False, with_bytes: bool = False):
    """The DP of the module docstring with at most ``keep`` states per label set:
    beyond, they merge (a lower bound) or, with ``beam``, the least promising are
    dropped (then the value is that of a real labelling: an upper bound).  States
    that cannot end below ``cutoff`` are dropped; then inf means "none below it".
    ``with_bytes``: the bytes on D1 and on D2 are followed too (coordinates of the
    states), and the result is the Pareto front of (bytes on D1, on D2, time)."""
    spent = _spent.setdefault(graph, [0])  # states extended for this graph so far
    head, nodes = block[0], block[1:]
    at = {v: i for i, v in enumerate(nodes)}
    preds = [[at.get(u, -1) for u in graph.predecessors(v) if u in at or u == head] for v in nodes]
    last = len(nodes) - 1
    succs: list[list[int]] = [[] for _ in nodes]
    for i, ps in enumerate(preds):
        for p in ps:
            if p >= 0:
                succs[p].append(i)
    last_use = [max(ss, default=-1) for ss in succs]  # the last consumer, and the one before it
    next_use = [max((x for x in ss if x != last_use[p]), default=-1) for p, ss in enumerate(succs)]
    on_accel = (head_kind == "accel", tail_kind == "accel", True, False)
    k, l = graph.num_accelerators, graph.num_cpus
    labels = [_D1] + [_D2] * (tail_kind is not None) + [_EA] * (k > 0) + [_EC] * (l > 0)
    end = _D1 if tail_kind is None else _D2  # the tail's device
    times = []
    for v in nodes:
        n = graph.node(v)
        acc = n.accel_time if n.accel_ok and k > 0 else math.inf
        cpu = n.cpu_time if l > 0 else math.inf
        times.append(tuple(acc if a else cpu for a in on_accel))
    out = [graph.node(v).out_cost for v in nodes]
    head_out = graph.node(head).out_cost
    size = [graph.node(v).size if with_bytes else 0.0 for v in nodes]
    # ahead[i]: the longest path from i's finish to the tail's, fastest times, free transfers
    ahead = [0.0] * len(nodes)
    for i in range(last - 1, -1, -1):
        ahead[i] = max((min(times[s]) + ahead[s] for s in succs[i]), default=0.0)
    tail_time = times[last][end]

    def delay(a: int, b: int, cost: float) -> float:
        return 0.0 if a == b else cost * (on_accel[a] + on_accel[b])

    # states[labels of the awaited nodes] = [(soonest end, their finish times..., free D1,
    # free D2, tail ready, bytes on D1, bytes on D2)]
    states: dict[tuple, list[tuple]] = {(): [(0.0,) * 6]}
    work = 0  # states extended so far
    for i in range(last):
        # after i: which placed nodes are still awaited, and by the tail alone
        grown: dict[tuple, list[tuple]] = {}
        for key, points in states.items():
            slot = {p: j for j, (p, _) in enumerate(key)}
            label_of = dict(key)
            for d in labels:
                t = times[i][d]
                if t == math.inf:
                    continue
                work += len(points)
                if spent[0] + work > _WORK:  # too much to follow: no floor (or no labelling)
                    spent[0] += work
                    return math.inf if beam else 0.0
                for point in points:
                    ready = point[-5] if d == _D1 else point[-4] if d == _D2 else 0.0
                    for p in preds[i]:
                        a = (delay(_D1, d, head_out) if p < 0
                             else point[1 + slot[p]] + delay(label_of[p], d, out[p]))
                        if a > ready:
                            ready = a
                    finish = ready + t
                    tail_ready = point[-3]
                    awaited = []
                    for (p, lab), f in zip(key + ((i, d),), point[1:-5] + (finish,)):
                        if last_use[p] <= i:
                            continue  # nothing waits for it any more
                        if last_use[p] == last and next_use[p] <= i:  # only the tail: fold it in
                            tail_ready = max(tail_ready, f + delay(lab, end, out[p]))
                        else:
                            awaited.append(((p, lab), f))
                    free1 = finish if d == _D1 else point[-5]
                    free2 = finish if d == _D2 else point[-4]
                    # no ending of this state is earlier than this
                    soonest = max([tail_ready, free1 if end == _D1 else free2]) + tail_time
                    for (p, _), f in awaited:
                        soonest = max(soonest, f + ahead[p])
                    if soonest >= cutoff:
                        continue
                    grown.setdefault(tuple(e for e, _ in awaited), []).append(
                        (soonest,) + tuple(f for _, f in awaited) + (free1, free2, tail_ready,
                                                                     point[-2] + size[i] * (d == _D1),
                                                                     point[-1] + size[i] * (d == _D2)))
        if len(grown) > _LABEL_SETS:  # too wide a block to follow: no floor (or no labelling)
            return math.inf if beam else 0.0
        states = {key: _front(points, keep, beam) for key, points in grown.items()}
    best, ends = math.inf, []
    for key, points in states.items():
        slot = {p: j for j, (p, _) in enumerate(key)}
        label_of = dict(key)
        for point in points:
            ready = max(point[-5 if end == _D1 else -4], point[-3])
            for p in preds[last]:  # inputs not folded into the tail's ready time
                if p < 0:
                    ready = max(ready, delay(_D1, end, head_out))
                elif p in slot:
                    ready = max(ready, point[1 + slot[p]] + delay(label_of[p], end, out[p]))
            best = min(best, ready + times[last][end])
            if with_bytes:  # the tail's bytes count on its device
                ends.append((point[-2] + size[last] * (end == _D1), point[-1] + size[last] * (end == _D2),
                             ready + times[last][end]))
    spent[0] += work
    return _pareto3(ends) if with_bytes else best


def _pareto3(points: list[tuple]) -> list[tuple]:
    """The (bytes, bytes, time) points no other is at most in all three."""
    front: list[tuple] = []
    for p in sorted(points, key=lambda p: (p[2], p[0], p[1])):
        if not any(q[0] <= p[0] and q[1] <= p[1] for q in front):
            front.append(p)
    return front


def _front(points: list[tuple], keep: int, beam: bool) -> list[tuple]:
    """The points (soonest end, times...) no other is at most in every time; beyond
    ``keep``, the soonest-ending ``keep`` of them (``beam``), or else neighbours (in
    sorted order) merged into their least in each coordinate."""
    front: list[tuple] = []
    rows = np.empty((len(points), len(points[0]) - 1))  # the front's times, as filled so far
    for p in sorted(set(points)):
        times = p[1:]
        if front and (rows[:len(front)] <= times).all(axis=1).any():
            continue
        rows[len(front)] = times
        front.append(p)
    if beam:
        return front[:keep]  # sorted by the soonest end first
    while len(front) > keep:
        front = [tuple(map(min, front[i], front[i + 1])) if i + 1 < len(front) else front[i]
                 for i in range(0, len(front), 2)]
    return front
