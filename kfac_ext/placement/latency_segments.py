"""A latency split by dynamic programming over segments, timed by the schedule as it grows.

``segment_split(graph, order)`` cuts a topological order into segments, each on a
fresh accelerator (within the memory cap) or on the CPUs, like
latency.chain_split; unlike it, a segment is not costed by a formula but by
running latency.py's schedule on it: each state "positions [0, e) placed, the
last segment on the CPUs / an accelerator" keeps its best prefix (the one whose
outputs reach host memory earliest), and a segment appended to it is timed node
by node from that prefix's finish times.  So skip connections cost what they
cost (transfers run in parallel, not one after the other).  A CPU segment's
nodes go each to the CPU where it would finish first (parallel branches run in
parallel).  Keeping one prefix per state is a heuristic: a prefix that is
slower at its boundary but faster on a skip edge may be dropped.  And a device
runs its nodes in the DP's order here, in the graph's topological order in
latency.py (the same when ``order`` is the graph's own), so the caller scores
the split with latency.py.

Colour classes: a group is placed with its first member in the order; its later
members run on that device when their turn comes.  Segments become accelerators
by first-fit decreasing on their bytes; when they do not fit the ``k``
accelerators, each accelerator segment is charged a penalty and the DP reruns.
O(n^2) node steps for n nodes (times the CPUs in use, on CPU segments).
"""
from __future__ import annotations

import math
import time

from .graph import Graph
from .objective import Placement

__all__ = ["segment_split"]

_CPUS = None  # a CPU segment's device: CPU c is device -1 - c, accelerator segments 0, 1, 2, ...


def segment_split(graph: Graph, order: list[int] | None = None, time_limit: float = math.inf,
                  cpus: int | None = None, upper_bound: float = math.inf) -> Placement | None:
    """The best split found by the segment DP along ``order`` (default: the graph's
    topological order); None if no split fits the devices or the DP would run
    past ``time_limit`` seconds.  ``cpus``: how many CPUs a CPU segment may
    spread over (default all).  ``upper_bound``: a latency to beat (a prefix
    that ends later is not extended; then None may mean "none faster")."""
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise ValueError(f"cpus must be a positive integer or None, got {cpus!r}")
    deadline = time.perf_counter() + time_limit
    order = graph.topological_order() if order is None else list(order)
    at = {v: i for i, v in enumerate(order)}
    if len(at) != len(order) or sorted(at) != sorted(graph.ids):
        raise ValueError("order must list every node of the graph once")
    bad = next(((u, w) for u, w in graph.edges if at[u] > at[w]), None)
    if bad is not None:
        raise ValueError(f"order must be topological: node {bad[1]} comes before its input {bad[0]}")
    dp = _SegmentDP(graph, order)
    dp.spread = dp.l if cpus is None else min(cpus, dp.l)
    dp.upper_bound = upper_bound
    scale = max(1e-9, sum(dp.cpu) + sum(dp.out))
    for penalty in (0.0, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0):
        segments = dp.run(penalty * scale / max(1, dp.k), deadline)
        if segments is None:
            continue
        placement = dp.placement(segments)
        if placement is not None:
            return placement
    return None


class _SegmentDP:
    def __init__(self, graph: Graph, order: list[int]):
        self.graph, self.order = graph, order
        self.k, self.l, self.cap = graph.num_accelerators, graph.num_cpus, graph.memory_cap
        self.spread = self.l  # CPUs a CPU segment may use
        self.upper_bound = math.inf  # prefixes that end later are dropped
        pos = {v: i for i, v in enumerate(order)}
        nodes = [graph.node(v) for v in order]
        self.acc = [x.accel_time for x in nodes]
        self.cpu = [x.cpu_time for x in nodes]
        self.out = [x.out_cost for x in nodes]
        self.preds = [sorted(pos[u] for u in graph.predecessors(v)) for v in order]
        self.last_use = [max((pos[w] for w in graph.successors(v)), default=-1) for v in order]
        n = len(order)
        self.leader = list(range(n))  # first position of each node's colocation group
        self.group_size = [0.0] * n  # bytes of the group, on its leader
        self.group_ok = [True] * n
        for members in graph.colocation_groups():
            first = min(pos[v] for v in members)
            for v in members:
                self.leader[pos[v]] = first
            self.group_size[first] = sum(graph.node(v).size for v in members)
            self.group_ok[first] = all(graph.node(v).accel_ok for v in members)

    def run(self, penalty: float, deadline: float) -> list[tuple[int, int, int]] | None:
        """Segments (start, stop, kind: 1 accelerator, 0 CPUs) of the best split
        found with ``penalty`` added per accelerator segment, or None (also when
        past ``deadline``)."""
        n, k, l = len(self.order), self.k, self.l
        # best[e][kind] = (rank, start of the last segment, kind before it)
        best = [[None, None] for _ in range(n + 1)]
        best[0][0] = (0.0, -1, -1)  # the empty prefix, as if after a CPU segment
        kinds = ([0] if l else []) + ([1] if k else [])
        for b in range(n):
            if time.perf_counter() > deadline:
                return None
            for before in (0, 1):
                if best[b][before] is None:
                    continue
                segments = self._segments(best, b, before)
                n_acc = sum(s[2] for s in segments)
                dev, finish, free = self._prefix(segments)
                for kind in kinds:
                    if kind == 0 and before == 0 and b > 0:
                        continue  # two CPU segments in a row are one segment
                    self._extend(best, b, before, kind, n_acc if kind else _CPUS, dev, finish,
                                 dict(free), penalty * (n_acc + kind))
        ends = [(best[n][kind][0], kind) for kind in (0, 1) if best[n][kind] is not None]
        if not ends:
            return None
        return self._segments(best, n, min(ends)[1])

    def _segments(self, best, e: int, kind: int) -> list[tuple[int, int, int]]:
        out = []
        while e > 0:
            _, b, before = best[e][kind]
            out.append((b, e, kind))
            e, kind = b, before
        return out[::-1]

    def _prefix(self, segments):
        """Devices, finish times and device free times of the positions the segments cover."""
        dev, finish, free = [], [], {}
        n_acc = 0
        for b, e, kind in segments:
            d = n_acc if kind else _CPUS
            n_acc += kind
            for p in range(b, e):
                self._place(p, d, dev, finish, free)
        return dev, finish, free

    def _ready(self, p, d, dev, finish, free) -> float:
        ready = free.get(d, 0.0)
        for q in self.preds[p]:
            dq = dev[q]
            arrive = finish[q]
            if dq != d:
                arrive += self.out[q] * ((dq >= 0) + (d >= 0))
            if arrive > ready:
                ready = arrive
        return ready

    def _place(self, p, d, dev, finish, free) -> None:
        """Schedule position p of a segment on device d (``_CPUS``:
        on the CPU where it finishes first, a CPU in use before an idle one)."""
        lead = self.leader[p]
        if lead != p:  # a colour mate placed earlier decides
            d = dev[lead]
        if d is _CPUS:
            in_use = sorted(c for c in free if c < 0)[::-1]
            options = in_use + ([-1 - len(in_use)] if len(in_use) < self.spread else [])
            d = min(options, key=lambda c: self._ready(p, c, dev, finish, free))
        f = self._ready(p, d, dev, finish, free) + (self.acc[p] if d >= 0 else self.cpu[p])
        dev.append(d)
        finish.append(f)
        free[d] = f

    def _extend(self, best, b, before, kind, d, dev, finish, free, charge):
        """Grow a segment [b, e) of ``kind`` on device d after the prefix [0, b) and offer
        every e to the state (e, kind)."""
        n, cap = len(self.order), self.cap
        del dev[b:], finish[b:]
        latest = max(finish, default=0.0)
        open_ = [q for q in range(b) if self.last_use[q] >= b]
        mem = 0.0
        for p in range(b, n):
            if kind and self.leader[p] == p:
                if not self.group_ok[p]:
                    return
                mem += self.group_size[p]
                if mem > cap * (1 + 1e-12):
                    return
            self._place(p, d, dev, finish, free)
            if finish[p] > latest:
                latest = finish[p]
                if latest > self.upper_bound:  # later positions only finish later
                    return
            if self.last_use[p] > p:
                open_.append(p)
            e = p + 1
            open_ = [q for q in open_ if self.last_use[q] >= e]
            # rank: when everything so far has finished and its outputs still needed
            # are in host memory (one copy off an accelerator), plus the penalty
            rank = latest
            for q in open_:
                t = finish[q] + (self.out[q] if dev[q] >= 0 else 0.0)
                if t > rank:
                    rank = t
            rank += charge
            if best[e][kind] is None or rank < best[e][kind][0]:
                best[e][kind] = (rank, b, before)

    def placement(self, segments) -> Placement | None:
        """Accelerator segments packed onto the k accelerators (first-fit decreasing on
        bytes), CPU nodes where the DP put them; None if they do not fit."""
        k, cap = self.k, self.cap
        acc_segments = [(b, e) for b, e, kind in segments if kind]
        size = [sum(self.group_size[p] for p in range(b, e) if self.leader[p] == p)
                for b, e in acc_segments]
        used = [0.0] * k
        device_of = {}
        for j in sorted(range(len(acc_segments)), key=lambda j: -size[j]):
            a = next((a for a in range(k) if used[a] + size[j] <= cap * (1 + 1e-12)), None)
            if a is None:
                return None
            used[a] += size[j]
            device_of[j] = a
        dev, _, _ = self._prefix(segments)
        acc = [[] for _ in range(k)]
        cpus = [[] for _ in range(self.l)]
        for p, d in enumerate(dev):
            (acc[device_of[d]] if d >= 0 else cpus[-1 - d]).append(self.order[p])
        return Placement(acc, cpus)
