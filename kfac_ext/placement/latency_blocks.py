"""A latency split by dynamic programming over the graph's blocks: ``block_split``.

The topological order is cut at its *articulation* positions (no edge jumps over
them, so every path runs through the node there); a *block* is what lies between
two of them, from its head to its tail.  When every node of a block takes its
inputs from the head and the block only (true of the bundled Inception and ResNet
graphs), all that ran before has finished once the head has, so the block's
timing depends only on the head's finish time and on its nodes' devices.  The
split becomes a chain of choices:

* a *run* is a stretch of the chain on one device: an accelerator (its bytes
  within the memory cap) or a CPU;
* each block either *stays* on its run's device or *moves* the run to a fresh
  device D2: the head's device D1 keeps a down-set of the block (nodes whose
  block inputs are all on D1), D2 takes the rest and the tail.  A move inside a
  block lets each parallel branch cross on its own, its own (often small) output
  at a time, where a cut at an articulation node sends the whole concatenation;
* in either case up to ``_STAY_SIDE`` (stay) or ``_MOVE_SIDE`` (move) *side
  stretches* of chain nodes (one input, one consumer) go to a CPU each (in a stay
  also to a spare accelerator), freeing the run's memory while its device works
  on the other branches.  Where a block has more than ``_OPTIONS_CAP`` options,
  the side stretches of a move are first kept to where a branch crosses from D1
  to D2, then made fewer (a block structure found to have too many options at a
  setting is not enumerated at it again, whatever its times).

Every option of a block is timed node by node with latency.py's schedule from the
head's finish (a depth-first walk over the choices keeps the schedule as it goes),
and only options no other beats on (time, bytes left on D1, bytes on D2) are
kept; identical blocks (repeated modules) share their options.  A DP along the
chain then keeps, per (kind of the run's device, accelerators used), the Pareto
front of (bytes on the run's device, the articulation node's finish).  The best
end is a valid placement; under the assumption above its latency is the DP's
value (the caller scores it with latency.py in any case).

Out of reach: a device is never used by two runs, a block's nodes other than the
side stretches go to D1 or D2 only, and a graph with colour classes of several
nodes is left to the other methods (``block_split`` returns None).  A block of many
parallel branches (BERT's, GNMT's) has too many down-sets: it only stays.
"""
from __future__ import annotations

import bisect
import math
import time

from .graph import Graph
from .objective import Placement

__all__ = ["articulation_positions", "block_split", "widest_block"]

_STAY_SIDE = 2  # side stretches on CPUs of their own in a block that stays
_MOVE_SIDE = 2  # and in a block that moves
_OPTIONS_CAP = 80_000  # a block's enumeration beyond this many options retries with side stretches
# only where a branch crosses, then with fewer
_FRONT_CAP = 400  # DP points per (kind, accelerators) at most: beyond, the fastest per byte bucket


def articulation_positions(graph: Graph, order: list[int]) -> list[int]:
    """Positions of ``order`` (topological) that no edge jumps over, ascending;
    always includes 0 and the last position of a non-empty order."""
    pos = {v: i for i, v in enumerate(order)}
    cover = [0] * (len(order) + 1)
    for v in order:
        for w in graph.successors(v):
            if pos[w] - pos[v] > 1:
                cover[pos[v] + 1] += 1
                cover[pos[w]] -= 1
    arts, depth = [], 0
    for i in range(len(order)):
        depth += cover[i]
        if depth == 0:
            arts.append(i)
    return arts


def widest_block(graph: Graph) -> int:
    """The most nodes strictly inside one block (between two articulation positions
    of the topological order): what the enumeration's cost grows with."""
    order = graph.topological_order()
    arts = articulation_positions(graph, order)
    return max((b - a - 1 for a, b in zip(arts, arts[1:])), default=0)


def _pareto3(points: list[tuple]) -> list[tuple]:
    """The (cost, bytes on D1, bytes on D2, ...) points no other beats on all three,
    by a sweep in cost with a staircase of the (D1, D2) bytes seen so far."""
    front, xs, ys = [], [], []  # staircase: xs ascending, ys strictly descending
    for p in sorted(points, key=lambda p: p[:3]):
        i = bisect.bisect_right(xs, p[1])
        if i and ys[i - 1] <= p[2]:
            continue  # a cheaper point has no more bytes on either device
        front.append(p)
        j = i
        while j < len(xs) and ys[j] >= p[2]:
            j += 1
        xs[i:j], ys[i:j] = [p[1]], [p[2]]
    return front


class _Block:
    """One block: enumerates its stay and move options (time from the head's finish,
    bytes on D1, bytes on D2, device code per inner node: 1 = D1, 2 = D2, 3.. = a
    side CPU)."""

    def __init__(self, graph: Graph, head: int, inner: list[int], tail: int):
        self.inner, self.tail = inner, tail
        nodes = inner + [tail]
        at = {v: i for i, v in enumerate(nodes)}
        self.preds = [tuple(at.get(u, -1) for u in graph.predecessors(v)) for v in nodes]
        self.chain = [len(self.preds[i]) == 1 and len(graph.successors(v)) == 1
                      for i, v in enumerate(inner)]
        self.accel = [graph.node(v).accel_time for v in nodes]
        self.cpu = [graph.node(v).cpu_time for v in nodes]
        self.ok = [graph.node(v).accel_ok for v in nodes]
        self.size = [graph.node(v).size for v in nodes]
        self.out = [graph.node(v).out_cost for v in nodes]
        self.head_out = graph.node(head).out_cost
        self.cap = graph.memory_cap
        self.signature = (self.head_out, tuple(self.preds), tuple(self.chain), tuple(self.accel),
                          tuple(self.cpu), tuple(self.ok), tuple(self.size), tuple(self.out),
                          tuple(len(graph.successors(v)) for v in nodes))
        # what the number of options depends on (with spare accelerators, the bytes too)
        self.structure = (tuple(self.preds), tuple(self.chain), tuple(self.ok))

    def options(self, k1: str, k2: str | None, side: int, side_accel: bool = False,
                crossing: bool = False, deadline: float = math.inf) -> list[tuple] | None:
        """The Pareto options with the head on a device of kind k1 and, for a move,
        the tail on a fresh one of kind k2 (None: the block stays), up to ``side``
        side stretches (on spare accelerators too with ``side_accel``): (time, bytes
        on D1, bytes on D2, device codes, spare accelerators used); None if more
        than _OPTIONS_CAP."""
        m, preds, chain = len(self.inner), self.preds, self.chain
        # accel[d]: device code d is an accelerator (1 = D1, 2 = D2, 3 + j = side stretch j)
        accel = [False, k1 == "accel", k2 == "accel"] + [False] * side
        stretch_kind: list[str] = []
        times = {"accel": self.accel, "cpu": self.cpu, None: self.accel}
        t1, t2 = times[k1], times[k2]
        ok1 = k1 == "cpu" or None
        ok2 = k2 == "cpu" or None
        out, size, ok, head_out, cap = self.out, self.size, self.ok, self.head_out, self.cap
        dev = [0] * (m + 1)
        fin = [0.0] * (m + 1)
        found: list[tuple] = []
        stretch_kinds = ("cpu", "accel") if side_accel else ("cpu",)
        moving = k2 is not None

        def ready(i: int, d: int, free: float) -> float:
            """When node i can start on device d, free from ``free`` on."""
            r = free
            for p in preds[i]:
                if p < 0:
                    a = 0.0 if d == 1 else head_out * (accel[1] + accel[d])
                else:
                    a = fin[p]
                    if dev[p] != d:
                        a += out[p] * (accel[dev[p]] + accel[d])
                if a > r:
                    r = a
            return r

        def leaf(value: float, b1: float, b2: float) -> None:
            spare = stretch_kind.count("accel")
            if not spare:
                found.append((value, b1, b2, tuple(dev[:m]), 0))
                return
            held = [0.0] * len(stretch_kind)  # each spare accelerator holds its stretch within the cap
            for i in range(m):
                if dev[i] >= 3:
                    held[dev[i] - 3] += size[i]
            if all(kd == "cpu" or h <= cap for kd, h in zip(stretch_kind, held)):
                codes = tuple(d if d < 3 or not accel[d] else -d for d in dev[:m])
                found.append((value, b1, b2, codes, spare))  # a negative code: a spare accelerator

        def choices(i: int, free1: float, free2: float, b1: float, b2: float) -> list[tuple]:
            """Node i's devices given those before it: (device code, finish, the next
            node's free1, free2, b1, b2, kind of a side stretch it starts or None)."""
            out = []
            # D1 after D1 (or after a side stretch when the block stays: D1 -> side -> D1)
            if ok1 or ok[i]:
                for p in preds[i]:
                    if p >= 0 and dev[p] != 1 and (dev[p] < 3 or (moving and crossing)):
                        break
                else:
                    f = ready(i, 1, free1) + t1[i]
                    out.append((1, f, f, free2, b1 + size[i], b2, None))
            if moving and (ok2 or ok[i]):
                f = ready(i, 2, free2) + t2[i]
                out.append((2, f, free1, f, b1, b2 + size[i], None))
            p = preds[i][0] if chain[i] else -2
            if p >= 0 and dev[p] >= 3:  # the stretch goes on on its device
                d = dev[p]
                if not accel[d] or ok[i]:
                    f = fin[p] + (self.accel[i] if accel[d] else self.cpu[i])
                    out.append((d, f, free1, free2, b1, b2, None))
            elif p != -2 and (p < 0 or dev[p] != 2 or not crossing) and len(stretch_kind) < side:
                d = 3 + len(stretch_kind)
                for kd in stretch_kinds:  # a new stretch on a device of its own
                    if kd == "accel" and not ok[i]:
                        continue
                    accel[d] = kd == "accel"
                    out.append((d, ready(i, d, 0.0) + times[kd][i], free1, free2, b1, b2, kd))
            return out

        def tail(free1: float, free2: float, b1: float, b2: float) -> bool:
            """The tail, on D2 after a move, on D1 after a stay; False past the limits."""
            n = len(found)
            if n > _OPTIONS_CAP or (n and not n & 1023 and time.perf_counter() > deadline):
                return False
            if not moving:
                if ok1 or ok[m]:
                    leaf(ready(m, 1, free1) + t1[m], b1 + size[m], 0.0)
            elif ok2 or ok[m]:
                leaf(ready(m, 2, free2) + t2[m], b1, b2 + size[m])
            return True

        # a depth-first walk over the choices with a stack of its own, not recursion:
        # Python 3.11's frame stack grows in 16 KiB chunks, mapped and unmapped each
        # time a call crosses a chunk's edge; under `kfac-ext place` a recursive walk
        # on Inception-v3 spent 17 of its 30 s in mmap/munmap (strace)
        if m == 0:
            if not tail(0.0, 0.0, 0.0, 0.0):
                return None
        else:
            pending = [choices(0, 0.0, 0.0, 0.0, 0.0)] + [[]] * (m - 1)
            taken = [0] * m  # choices of node i taken so far
            started = [False] * m  # node i started a side stretch
            last = m - 1
            i = 0
            while i >= 0:
                if started[i]:
                    stretch_kind.pop()
                    started[i] = False
                at = taken[i]
                if at == len(pending[i]):
                    dev[i] = 0
                    i -= 1
                    continue
                taken[i] = at + 1
                d, f, free1, free2, b1, b2, kd = pending[i][at]
                if kd is not None:
                    stretch_kind.append(kd)
                    accel[d] = kd == "accel"
                    started[i] = True
                dev[i], fin[i] = d, f
                if i == last:
                    if not tail(free1, free2, b1, b2):
                        return None
                else:
                    i += 1
                    pending[i] = choices(i, free1, free2, b1, b2)
                    taken[i] = 0
        return [p for spare in sorted({p[4] for p in found})
                for p in _pareto3([p for p in found if p[4] == spare])]


def block_split(graph: Graph, time_limit: float = math.inf) -> Placement | None:
    """The best placement of the block DP (see the module docstring), or None when
    the graph has colour classes of several nodes, no option fits the devices, or
    the DP would run past ``time_limit`` seconds."""
    found = _block_dp(graph, time_limit)
    return None if found is None else found[1]


def _block_dp(graph: Graph, time_limit: float) -> tuple[float, Placement] | None:
    """block_split's work: the DP's value (the last node's finish) and its placement."""
    deadline = time.perf_counter() + time_limit
    if any(len(members) > 1 for members in graph.colocation_groups()):
        return None
    k, l, cap = graph.num_accelerators, graph.num_cpus, graph.memory_cap
    order = graph.topological_order()
    if not order:
        return None
    arts = articulation_positions(graph, order)
    kinds = (["accel"] if k else []) + (["cpu"] if l else [])

    # fronts[(kind, accelerators used)]: (bytes on the run's device, finish, back) points
    first = graph.node(order[0])
    fronts: dict[tuple[str, int], list[tuple]] = {}
    if k and first.accel_ok and first.size <= cap:
        fronts[("accel", 1)] = [(first.size, first.accel_time, ("start", "accel"))]
    if l:
        fronts[("cpu", 0)] = [(0.0, first.cpu_time, ("start", "cpu"))]
    cache: dict = {}
    too_many: set = set()
    for t in range(1, len(arts)):
        if time.perf_counter() > deadline:
            return None
        head, tail = order[arts[t - 1]], order[arts[t]]
        block = _Block(graph, head, order[arts[t - 1] + 1:arts[t]], tail)
        grown: dict[tuple[str, int], list[tuple]] = {}
        for (k1, used), points in fronts.items():
            for k2 in [None] + kinds:
                if k2 == "accel" and used + 1 > k:
                    continue
                cpus_busy = (k1 == "cpu") + (k2 == "cpu")
                if k2 == "cpu" and k1 == "cpu" and l < 2:
                    continue
                # fewer side stretches in a move with a CPU end (its enumeration is dear and
                # rarely pays); on spare accelerators only in a block that stays
                side = min(_STAY_SIDE if k2 is None else 1 if cpus_busy else _MOVE_SIDE, l - cpus_busy)
                spare_ok = k2 is None and k1 == "accel" and used < k
                options = None
                for side, crossing in [(s, c) for s in range(side, -1, -1) for c in (False, True)]:
                    if crossing and k2 is None:
                        continue  # the same walk as without
                    # how many options there are depends on the block's structure, not on its
                    # times or the kinds (but for CPU-only nodes): one too many is enough
                    shape = (block.structure, tuple(block.size) if spare_ok else None, k2 is None, side,
                             spare_ok, crossing)
                    if shape in too_many:
                        continue
                    key = (block.signature, k2 is None, side, spare_ok, crossing, k1, k2)
                    if key not in cache:
                        cache[key] = block.options(k1, k2, side, spare_ok, crossing, deadline)
                        if time.perf_counter() > deadline:
                            return None
                        if cache[key] is None:
                            too_many.add(shape)
                    options = cache[key]
                    if options is not None:
                        break
                for option in options or ():
                    accels = used + (k2 == "accel") + option[4]
                    if accels <= k:
                        _extend(points, option, k1, k2, cap, t, grown.setdefault((k2 or k1, accels), []))
        fronts = {key: _front(points, cap) for key, points in grown.items() if points}
    ends = [(p[1], p) for points in fronts.values() for p in points]
    if not ends:
        return None
    value, end = min(ends, key=lambda e: e[0])
    return value, _placement(graph, order, arts, end)


def _extend(points: list[tuple], option: tuple, k1: str, k2: str | None, cap: float,
            t: int, target: list[tuple]) -> None:
    """Append to ``target`` the points ``option`` makes from ``points`` (a front,
    bytes ascending and finish descending): a stay adds its bytes to each point; a
    move starts a fresh run, from the fastest point with room for its D1 bytes."""
    cost, b1, b2, codes, _ = option
    on_accel = k1 == "accel"
    if k2 is None:
        for b, f, back in points:
            if not on_accel or b + b1 <= cap:
                target.append((b + b1 if on_accel else 0.0, f + cost, (back, t, None, codes)))
        return
    if k2 == "accel" and b2 > cap:
        return
    i = len(points)
    if on_accel:
        i = bisect.bisect_right([b for b, _, _ in points], cap - b1)
    if i:
        _, f, back = points[i - 1]  # the last with room is the fastest
        target.append((b2 if k2 == "accel" else 0.0, f + cost, (back, t, k2, codes)))


def _front(points: list[tuple], cap: float) -> list[tuple]:
    """The (bytes, finish) points no other beats on both; beyond _FRONT_CAP, the
    fastest in each of _FRONT_CAP byte buckets (a heuristic cut: all are real)."""
    front: list[tuple] = []
    for p in sorted(points, key=lambda p: (p[0], p[1])):
        if not front or p[1] < front[-1][1]:
            front.append(p)
    if len(front) > _FRONT_CAP:
        best: dict[int, tuple] = {}
        for p in front:
            key = int(p[0] * _FRONT_CAP / cap) if cap > 0 else 0
            if key not in best or p[1] < best[key][1]:
                best[key] = p
        front = sorted(best.values(), key=lambda p: p[0])
    return front


def _placement(graph: Graph, order: list[int], arts: list[int], end: tuple) -> Placement:
    """Follow the DP's choices back from ``end`` and lay the runs on devices."""
    steps = []
    back = end[2]
    while back[0] != "start":
        steps.append(back)
        back = back[0]
    steps.reverse()
    k, l = graph.num_accelerators, graph.num_cpus
    accelerators: list[list[int]] = [[] for _ in range(k)]
    cpus: list[list[int]] = [[] for _ in range(l)]
    run_kind, run_dev = back[1], 0
    next_accel = 1 if run_kind == "accel" else 0
    next_spare = k - 1  # spare accelerators from the top: runs and spares never exceed k

    def put(v: int, kind: str, index: int) -> None:
        (accelerators if kind == "accel" else cpus)[index].append(v)

    put(order[0], run_kind, run_dev)
    for _, t, k2, codes in steps:
        inner = order[arts[t - 1] + 1:arts[t]]
        tail = order[arts[t]]
        if k2 == "accel":
            new_dev = next_accel
            next_accel += 1
        elif k2 == "cpu":  # any CPU but the run's: all are idle once the head has finished
            new_dev = (run_dev + 1) % l if run_kind == "cpu" else 0
        side = [c for c in range(l) if not ((run_kind == "cpu" and c == run_dev)
                                            or (k2 == "cpu" and c == new_dev))]
        spares: dict[int, int] = {}
        for v, code in zip(inner, codes):
            if code == 1:
                put(v, run_kind, run_dev)
            elif code == 2:
                put(v, k2, new_dev)
            elif code > 0:
                put(v, "cpu", side[code - 3])
            else:
                if code not in spares:
                    spares[code] = next_spare
                    next_spare -= 1
                put(v, "accel", spares[code])
        if k2 is None:
            put(tail, run_kind, run_dev)
        else:
            run_kind, run_dev = k2, new_dev
            put(tail, run_kind, run_dev)
    return Placement(accelerators, cpus)
