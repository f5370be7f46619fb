"""Lower bounds on single-sample latency that see the memory cap: ``latency_bound``.

The path bound of latency.py (longest path, fastest device per node, free
transfers) ignores memory, yet memory is what makes latency expensive on the
bundled workloads: the model does not fit one accelerator, so the sample has
to cross devices, and every crossing on its way costs a transfer.  This bound
charges for those crossings.  Every step below only *relaxes* the problem, so
the result is <= the latency of every valid placement (tests check it against
brute force on small graphs).

1. Sub-graph.  Dropping nodes never slows a placement down (the schedule of
   latency.py is a longest path over precedence and same-device order edges;
   a dropped node only removes paths) and only loosens memory.  We keep
   ``H`` = the nodes on some path from ``a`` to ``b``, the ends of the
   critical path; weights hanging off the side and side outputs are dropped
   (their bytes stay counted on a kept node of their colocation group, which
   shares its device).
2. Blocks.  In ``H`` the *articulation* nodes ``a_0 .. a_m`` (on every
   ``a -> b`` path, found as the positions of the topological order no edge
   jumps over) cut ``H`` into blocks ``B_t`` (the nodes between ``a_(t-1)``
   and ``a_t``).  ``finish(a_t) >= finish(a_(t-1)) + LP_t``, ``LP_t`` = the
   longest path from ``a_(t-1)`` to ``a_t`` (times of ``B_t`` and ``a_t``,
   transfer delays of its edges).
3. Runs.  A *run* is a maximal stretch ``a_i .. a_t`` of articulation nodes on
   one device ``D``.  Inside it, each block keeps some of its nodes on ``D``
   and moves a set ``S`` elsewhere.  Order the block nodes by ``c_w``, the
   cheapest walk through ``w`` that leaves ``D`` before ``w`` and comes back
   after it, and let ``P`` be the shortest prefix of that order containing
   ``S``.  Then ``LP_t`` is at least (a) ``c_w`` of the last node of ``P``,
   (b) the time of the nodes outside ``P`` summed (they are on ``D``, which
   runs them one at a time, after ``a_(t-1)`` and before ``a_t`` finishes),
   (c) the longest path; and ``D`` keeps at least the bytes outside ``P``.  So each prefix
   is a (bytes kept, cost) option of the block.
4. Moves.  A block whose tail ``a_t`` is on another device ``D2`` than its head's
   ``D1`` ends a run: every ``a_(t-1) -> a_t`` path changes device at least once,
   so ``LP_t`` is at least the dearest over the tried paths (the longest
   through each node and through each edge) of its cheapest walk with a
   change (device kinds of head and tail given).  Each inner node ``w`` is on
   ``D1`` (every path through it changes after it), on ``D2`` (a change
   before it) or on a third device (both); each shape has a least walk cost
   on every tried path through ``w``.  At a cost level ``theta`` a node may take
   only the shapes costing at most ``theta``: nodes allowed only on ``D1`` fill
   ``D1``, those allowed only on ``D2`` fill ``D2``, those allowed on either
   fill what ``D1``'s run left free and then ``D2``; bytes of nodes allowed on a
   third device are not counted.  Besides, along each of a set of node-disjoint
   tried paths the nodes' devices form one walk costing at most ``theta``: the
   bytes it leaves on ``D1`` and ``D2`` are a point of the walk's Pareto front, so
   the block's bytes on ``D2`` are at least the least sum over the paths' points
   that fits ``D1``'s room (plus the other nodes' as above); the larger of the two
   counts holds.  Each device runs its nodes one at a time, so a split leaving
   nodes on ``D1`` costs at least their time plus the least walk from one of them
   to ``a_t`` (the last of them to finish waits for that walk), and nodes on ``D2``
   cost the least walk into one of them plus their and ``a_t``'s time.  Those times
   are at least the covering paths' (one walk each, the (time, bytes) front of each
   end summed over the paths) plus the other nodes' as a fluid of their cheapest
   time per byte; the DP tries the split of the either-bytes in ``_SPLITS``
   stretches, each charged for its least bytes on ``D1`` and its least on ``D2``.
   The same holds for the nodes whose walk out (into) is at least some length:
   they run one at a time too, and carry the bytes the shorter-walk nodes cannot.
   And latency.py runs a device's nodes in topological order: the last block node
   on ``D1`` waits for all of ``D1``'s (the first on ``D2`` holds up all of
   ``D2``'s), so the move costs at least, for the least such candidate node that
   leaves room for the bytes, its walk plus that device's nodes' time.
   Besides, every move and every stay costs at least the block's least time on its
   own with those end kinds, memory aside (latency_floor.move_floor: D1 and D2 run
   in order, other devices relaxed to unlimited); where both ends are accelerators,
   the same relaxation with the bytes left on D1 and D2 followed
   (latency_floor.move_front) gives points (bytes on D1, on D2, time), one at most
   every placement: each option is paired with each point that fits D1's room,
   charged the larger time and leaving the larger bytes on the tail's device.
5. A dynamic program along the articulation chain keeps, per device kind of
   ``a_t``, the Pareto front of (bytes already on ``a_t``'s device in its run,
   least ``finish(a_t)``): a run's bytes (articulation nodes, kept block nodes,
   and the bytes moves leave at either end) fit one cap on an accelerator;
   none count on a CPU.  Points in one bucket of ``cap / _BUCKETS`` bytes merge
   into (least bytes, least cost), a relaxation that keeps the fronts short.

Colour mates are never cut apart on a walk.  Where ``H`` has few articulation
nodes (one big block) the bound degrades towards the path bound, and it is never
below :func:`latency_lower_bound`.  What stays relaxed: off the covering paths,
each node of a block takes its cheapest shape on its own; bytes sent to a third
device are not counted; inside a run's blocks a device's nodes may run in any
order, and at a move's ends only the first or last of them is placed in order;
and devices revisited later get a fresh cap per run.
:func:`block_plan` returns the DP's choices, which latency_bound_plan turns into a
placement (on the ResNet-50 workloads within 1 % of this bound).  ``path_chain_bound`` is the other bound here:
the exact cheapest walk along one path with a cap on every accelerator stretch
(off-path bytes ignored); ``latency_bound`` takes the best of both.
"""
from __future__ import annotations

import math

from .graph import Graph
from .latency import latency_lower_bound
from .latency_floor import move_floor, move_front

__all__ = ["block_bound", "block_plan", "bound_paths", "heaviest_path", "latency_bound", "path_chain", "path_chain_bound"]


_FLOOR_ALL_KINDS = 18  # blocks up to this many nodes get a move floor for every pair of end kinds
_BUCKETS = 4096  # Pareto points closer than cap / _BUCKETS in bytes are merged


def _pareto(options: list[tuple]) -> list[tuple]:
    """The (bytes, cost, ...) points no other point beats on both, bytes ascending
    (what follows bytes and cost rides along)."""
    front: list[tuple] = []
    for o in sorted((o for o in options if o[1] < math.inf), key=lambda o: (o[0], o[1])):
        if not front or o[1] < front[-1][1]:
            front.append(o)
    return front


_LEVELS = 32  # cost levels of a move's options at most
_STAIRS = 48  # Pareto points of bytes on a move's two ends kept at most


def _least3(points: list[tuple[float, float, float]], keep: int = 64) -> list[tuple[float, float, float]]:
    """The (cost, bytes, bytes) points no other point beats on all three, cost
    ascending; beyond ``keep`` points, neighbours merge into their least of each (a
    relaxation, as these feed lower bounds)."""
    front: list[tuple[float, float, float]] = []
    for p in sorted(points):
        if p[0] < math.inf and not any(q[1] <= p[1] and q[2] <= p[2] for q in front):
            front.append(p)
    while len(front) > keep:
        front = [tuple(map(min, *front[i:i + 2])) if i + 1 < len(front) else front[i]
                 for i in range(0, len(front), 2)]
    return front


def _stairs(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (bytes, bytes) points no other beats on both, the first ascending; beyond
    ``_STAIRS`` points, neighbours merge into their least of each (a relaxation)."""
    stairs: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not stairs or y < stairs[-1][1]:
            stairs.append((x, y))
    while len(stairs) > _STAIRS:
        stairs = [tuple(map(min, *stairs[i:i + 2])) if i + 1 < len(stairs) else stairs[i]
                  for i in range(0, len(stairs), 2)]
    return stairs


def _walked(walked, room: float) -> float | None:
    """Least bytes a move leaves on its tail's device with ``room`` bytes free on its
    head's: the covering paths' walks at one of their Pareto points, the other nodes'
    bytes split as a fluid; None if nothing fits the room."""
    head_only, tail_only, either, sums = walked
    best = None
    for on_head, on_tail in sums:  # on_head ascending
        left = room - head_only - on_head
        if left < 0:
            break
        value = on_tail + tail_only + max(0.0, either - left)
        best = value if best is None else min(best, value)
    return best


_SPLITS = 8  # stretches of a move's split of either-bytes between its ends


def _splits(top: float) -> list[tuple[float, float]]:
    """Stretches [lo, hi] covering [0, top] (either-bytes a move's head device may take)."""
    if top <= 0:
        return [(0.0, 0.0)]
    cuts = [top * i / _SPLITS for i in range(_SPLITS + 1)]
    return list(zip(cuts, cuts[1:]))


def _least_time(forced: float, loose: list[tuple[float, float]], need: float) -> float:
    """Least time of a device holding the ``forced`` nodes and ``need`` more bytes of
    the ``loose`` ones ((time per byte, bytes), cheapest first), split as a fluid."""
    total = forced
    for rate, bytes_ in loose:
        if need <= 0:
            break
        take = min(need, bytes_)
        total += rate * take
        need -= take
    return total


def _serial_cost(serial, on_head: float, on_tail: float) -> float:
    """A least time from a move's head finishing to its tail finishing, with at least
    ``on_head`` either-bytes on the head's device and ``on_tail`` on the tail's.  The
    head's device runs its block nodes one at a time after the head, and the tail waits
    for the last of them plus a walk that changes device; the tail's device runs its
    block nodes and the tail one at a time, after the first of them is reached by a
    walk that changes device."""
    best = 0.0
    for (forced, any_forced, loose, walk, extra, forced_bytes, along, others, steps, ends), need in zip(
            serial, (on_head, on_tail)):
        if any_forced or need > 0:
            # the covering paths' nodes on this end form one walk each; the rest as a fluid
            paths = min((t + _least_time(0.0, others, need + forced_bytes - b) for t, b in along), default=0.0)
            best = max(best, walk + max(_least_time(forced, loose, need), paths) + extra)
        for key, time_, bytes_, any_, short, loose_ in steps:
            # the nodes whose walk is at least ``key`` carry what the others cannot
            missing = need + forced_bytes - short
            if any_ or missing > 0:
                best = max(best, key + time_ + _least_time(0.0, loose_, missing - bytes_) + extra)
        if ends and (any_forced or need > 0):
            # the device runs its nodes in topological order: the last of them on the
            # head's device (the first on the tail's) is one of ``ends``
            least = math.inf
            for key, time_, bytes_, reach, loose_ in ends:
                if reach >= need + forced_bytes:
                    least = min(least, key + forced + time_ + _least_time(0.0, loose_, need - bytes_) + extra)
            best = max(best, least)
    return best


def _in_order(keyed: list[tuple], last: bool) -> list[tuple]:
    """Candidates for the last node (``last``) or the first in topological order among
    a move's block nodes on one end's device: (its walk out / in, its time unless it
    must be there anyway, its bytes likewise, the bytes of all nodes allowed there at
    or before it (at or after it), the (time per byte, bytes) of the optional nodes
    strictly before (after) it, cheapest first).  Only nodes not before the last node
    that must be there (not after the first) qualify."""
    ordered = sorted(keyed, key=lambda e: e[4], reverse=not last)  # the side the set lies on first
    musts = [i for i, e in enumerate(ordered) if e[3]]
    start = musts[-1] if musts else 0
    out = []
    for i in range(start, len(ordered)):
        key, t, b, must, _ = ordered[i]
        if key == math.inf:
            continue
        reach = sum(e[2] for e in ordered[:i + 1])
        loose_ = sorted((e[1] / e[2], e[2]) for e in ordered[:i] if not e[3] and e[2] > 0)
        out.append((key, 0.0 if must else t, 0.0 if must else b, reach, loose_))
    return out


_THRESHOLDS = 6  # walk lengths tried per end of a move


def _thresholds(keyed: list[tuple[float, float, float, bool]]) -> list[tuple]:
    """For a few walk lengths ``key`` (out of a head-side node to the tail, or into a
    tail-side node): (key, time and bytes of the nodes that must be there with a walk
    at least key, whether there are any, bytes of all nodes allowed there with a
    shorter walk, (time per byte, bytes) of the other nodes with a walk at least key,
    cheapest first).  A device runs the nodes of walk >= key one at a time, all after
    the head (and the tail waits for the last plus its walk out), or all after the
    first is reached and before the tail."""
    keys = sorted({k for k, _, _, _, _ in keyed if k < math.inf})[1:]  # the least is the plain charge
    if len(keys) > _THRESHOLDS:
        keys = [keys[i * (len(keys) - 1) // (_THRESHOLDS - 1)] for i in range(_THRESHOLDS)]
    steps = []
    for key in keys:
        time_ = bytes_ = short = 0.0
        any_, loose_ = False, []
        for k, t, b, must, _ in keyed:
            if k < key:
                short += b
            elif must:
                time_, bytes_, any_ = time_ + t, bytes_ + b, True
            elif b > 0:
                loose_.append((t / b, b))
        steps.append((key, time_, bytes_, any_, short, sorted(loose_)))
    return steps


def _merge(points: list[tuple], grain: float) -> list[tuple]:
    """The Pareto front of (bytes, cost, plan) ``points`` with points in one ``grain``
    of bytes replaced by (their least bytes, their least cost, the cheaper one's plan):
    a relaxation, which keeps the front short."""
    bucket: dict[int, tuple] = {}
    for b, c, plan in points:
        key = int(b // grain) if grain > 0 else 0
        if key in bucket:
            b0, c0, plan0 = bucket[key]
            bucket[key] = (min(b, b0), min(c, c0), plan if c < c0 else plan0)
        else:
            bucket[key] = (b, c, plan)
    return _pareto(list(bucket.values()))


def _group_of(graph: Graph) -> dict[int, int]:
    return {v: g for g, members in enumerate(graph.colocation_groups()) for v in members}


def _cheapest(graph: Graph):
    has_accel, has_cpu = graph.num_accelerators > 0, graph.num_cpus > 0

    def time(v: int) -> float:
        n = graph.node(v)
        options = ([n.accel_time] if has_accel and n.accel_ok else []) + ([n.cpu_time] if has_cpu else [])
        return min(options) if options else math.inf

    return time


def _kept_subgraph(graph: Graph, order: list[int], fastest) -> list[int]:
    """Nodes on some path between the two ends of the critical path, in ``order``."""
    finish, back = {}, {}
    for v in order:
        preds = graph.predecessors(v)
        arg = max(preds, key=lambda u: finish[u]) if preds else None
        finish[v], back[v] = (finish[arg] if preds else 0.0) + fastest(v), arg
    end = max(reversed(order), key=lambda v: finish[v])  # ties: the last (a sink after zero-time nodes)
    start = end
    while back[start] is not None:
        start = back[start]
    below = {start}
    for v in order:
        if v != start and any(u in below for u in graph.predecessors(v)):
            below.add(v)
    above = {end}
    for v in reversed(order):
        if v != end and any(w in above for w in graph.successors(v)):
            above.add(v)
    return [v for v in order if v in below and v in above]


def block_bound(graph: Graph) -> float:
    """A lower bound on the latency of every valid placement of ``graph``
    (see the module docstring); at least :func:`latency.latency_lower_bound`."""
    return max(latency_lower_bound(graph), block_plan(graph)[0])


def block_plan(graph: Graph, by_walk: bool = True, floors: bool = True) -> tuple[float, list[int], list[int], list[tuple]]:
    """The chain DP of :func:`block_bound` (without the path bound) and the choices
    reaching it: (value, kept nodes in order, positions of the articulation nodes in
    it, one step per block).  A step is ("stay", kind, nodes moved off the run's
    device, bytes) or ("move", head kind, tail kind, per inner node (node, may sit
    on the head's device, on the tail's, on a third one), bytes), bytes being those
    counted on the tail's device in its run so far; steps are empty when no
    placement fits.  latency_bound_plan turns them into a placement.  ``by_walk=False``
    leaves out the charge by walk length at a move's ends (``_thresholds``): a lower
    value, whose choices are another start for the plan.  ``floors=False`` leaves out
    each block's least time on its own (latency_floor): faster, lower."""
    k, l, cap = graph.num_accelerators, graph.num_cpus, graph.memory_cap
    fastest = _cheapest(graph)
    group = _group_of(graph)
    order = graph.topological_order()
    kept = _kept_subgraph(graph, order, fastest)
    inside = set(kept)
    pos = {v: i for i, v in enumerate(kept)}

    # bytes per kept node, with dropped colour mates' bytes moved onto one kept mate
    size = {v: graph.node(v).size for v in kept}
    for members in graph.colocation_groups():
        anchor = next((v for v in members if v in inside), None)
        if anchor is not None:
            size[anchor] += sum(graph.node(v).size for v in members if v not in inside)

    # articulation nodes: positions of the kept order that no kept edge jumps over
    n = len(kept)
    cover = [0] * (n + 1)
    for v in kept:
        for w in graph.successors(v):
            if w in inside and pos[w] - pos[v] > 1:
                cover[pos[v] + 1] += 1
                cover[pos[w]] -= 1
    arts, depth = [], 0
    for i in range(n):
        depth += cover[i]
        if depth == 0:
            arts.append(i)
    # arts[0] == 0 (the single source a), arts[-1] == n - 1 (the sink b)

    def time_on(v: int, kind: str) -> float:
        node = graph.node(v)
        if kind == "accel":
            return node.accel_time if (k > 0 and node.accel_ok) else math.inf
        return node.cpu_time if l > 0 else math.inf

    def change_delays(kind: str, cost: float):
        """(next kind, delay) for each way of moving to another device."""
        if kind == "accel":
            return [("accel", 2 * cost)] * (k >= 2) + [("cpu", cost)] * (l >= 1)
        return [("accel", cost)] * (k >= 1) + [("cpu", 0.0)] * (l >= 2)

    def walk_cost(path: list[int], head_kind: str, tail_kind: str, before: int, after: int = 0,
                  at: int | None = None, at_kind: str | None = None) -> float:
        """Least time + transfer delay along ``path`` (head's time excluded) over device
        choices with at least ``before`` (0 or 1) device changes on its edges up to
        ``path[at]`` and ``after`` on the edges beyond, ``path[at]`` on a device of
        ``at_kind`` (any kind if None); without ``at``, ``before`` changes anywhere."""
        last = len(path) - 1
        at = last if at is None else at
        states = {(head_kind, 0): 0.0}  # (kind, changes in this part, capped) -> least cost
        for j in range(1, len(path)):
            cost = graph.node(path[j - 1]).out_cost
            glued = group[path[j - 1]] == group[path[j]]  # colour mates share a device
            need = before if j <= at else after
            nxt: dict = {}
            for (kind, c), value in states.items():
                moves = [(kind, 0.0, c)]
                if not glued:
                    moves += [(kv, d, min(c + 1, need)) for kv, d in change_delays(kind, cost)]
                for kv, delay, c2 in moves:
                    if j == last and kv != tail_kind:
                        continue
                    if j == at and at < last:  # the pivot: check the first part, start the second
                        if c2 < before or (at_kind is not None and kv != at_kind):
                            continue
                        c2 = 0
                    total = value + delay + time_on(path[j], kv)
                    if total < nxt.get((kv, c2), math.inf):
                        nxt[(kv, c2)] = total
            states = nxt
        need = before if at == last else after
        return min((v for (kind, c), v in states.items() if c >= need), default=math.inf)

    def move_walks(path: list[int], k1: str, k2: str, side: str | None = None) -> list[tuple[float, float, float]]:
        """Walks along ``path`` with its head on a device D1 of kind k1, its tail on another,
        D2, of kind k2, and each inner node on D1, D2 or a third device (third devices
        told apart by kind only): the Pareto front of (time + transfer delay, bytes on
        D1, bytes on D2); with ``side`` "1" or "2", of (time + transfer delay, minus the
        bytes on that end's device, the time of those nodes), inner nodes only."""
        kind_of = {"1": k1, "2": k2, "accel": "accel", "cpu": "cpu"}
        states: dict = {"1": [(0.0, 0.0, 0.0)]}
        last = len(path) - 1
        for j in range(1, len(path)):
            v, out = path[j], graph.node(path[j - 1]).out_cost
            glued = group[path[j - 1]] == group[path[j]]
            nxt: dict = {}
            for state, points in states.items():
                for to in ("1", "2", *kinds):
                    if j == last and to != "2":
                        continue
                    if to == state:
                        delay = 0.0
                    elif glued:
                        continue
                    else:
                        delay = min((d for kv, d in change_delays(kind_of[state], out) if kv == kind_of[to]),
                                    default=math.inf)
                    t = delay + time_on(v, kind_of[to])
                    if t == math.inf:
                        continue
                    if side is None:
                        on1 = size[v] if to == "1" else 0.0
                        on2 = size[v] if to == "2" and j < last else 0.0
                    else:  # minus bytes, time
                        on1, on2 = (-size[v], time_on(v, kind_of[to])) if to == side and j < last else (0.0, 0.0)
                    nxt.setdefault(to, []).extend((c + t, b1 + on1, b2 + on2) for c, b1, b2 in points)
            states = {state: _least3(points) for state, points in nxt.items()}
        return states.get("2", [])

    def move_options(k1: str, k2: str, tried, through, inner: list[int], cover, tail: int) -> list[tuple]:
        """Options (cost, bytes only on the head's device, bytes only on the tail's, bytes
        on either, allowed shapes, walked, serial) of a block whose tail is on another device (of
        kind k2) than its head (of kind k1).  Each inner node w is on the head's device
        (every path through it changes device after it), the tail's (a change before
        it) or a third one (both); a tried path through w costs the least walk of that
        shape, and no tried path escapes its change.  At cost theta a node may only
        take the shapes costing at most theta; bytes of a node allowed on a third
        device are not counted (the relaxation lets them go anywhere).

        Along each path of ``cover`` (node-disjoint) the nodes also form one walk of
        cost at most theta (module docstring, step 4): "walked" is (the other nodes'
        bytes only on the head's, only on the tail's, on either; the Pareto points of
        (bytes on the head's, on the tail's) summed over the covering paths' walks).

        Each device runs its nodes one at a time (module docstring, step 4): "serial"
        is what :func:`_serial_cost` needs to charge the nodes a split leaves on either
        end (their times on each end, the least walk out of a head-side node to the
        tail, the least walk into a tail-side node, the tail's time)."""
        change = max(walk_cost(list(p), k1, k2, 1) for p in tried)
        shapes, leave, arrive = {}, {}, {}
        for w in inner:
            shapes[w] = tuple(max(walk_cost(p, k1, k2, b, a, at, kind) for p, at in through[w])
                              for b, a, kind in ((0, 1, k1), (1, 0, k2), (1, 1, None)))
            # w on the head's device: the tail waits for w and then a walk that changes device
            leave[w] = max(walk_cost(p[at:], k1, k2, 1) for p, at in through[w])
            # w on the tail's device: w starts after a walk from the head that changes device
            own = time_on(w, k2)
            arrive[w] = (max(walk_cost(p[:at + 1], k1, k2, 1) for p, at in through[w]) - own
                         if own < math.inf else math.inf)
        tail_time = time_on(tail, k2)

        def serial_of(allowed, below: float) -> tuple:
            """(head side, tail side) for :func:`_serial_cost`: per side (time of the nodes
            it must hold, whether there are any, the either-nodes' (time per byte, bytes)
            cheapest first, least walk out of / into a node allowed there, time added,
            bytes of the nodes it must hold, the covering paths' (time, bytes) on that end
            summed over walks costing less than ``below``, the (time per byte, bytes) of
            the other nodes allowed there, cheapest first)."""
            forced, count, loose = {1: 0.0, 2: 0.0}, {1: 0, 2: 0}, {1: [], 2: []}
            others, held_bytes = {1: [], 2: []}, {1: 0.0, 2: 0.0}
            keyed = {1: [], 2: []}  # (walk out of / into it, time, bytes, must hold) per node
            for w, on_head, on_tail, elsewhere in allowed:
                for side, ok, kind in ((1, on_head, k1), (2, on_tail, k2)):
                    if ok and w not in covered and size[w] > 0:
                        others[side].append((time_on(w, kind) / size[w], size[w]))
                if elsewhere:
                    continue
                for side, ok, other, kind in ((1, on_head, on_tail, k1), (2, on_tail, on_head, k2)):
                    if ok:
                        keyed[side].append(((leave if side == 1 else arrive)[w], time_on(w, kind), size[w], not other,
                                            pos[w]))
                    if ok and not other:
                        forced[side] += time_on(w, kind)
                        held_bytes[side] += size[w]
                        count[side] += 1
                    elif ok and size[w] > 0:
                        loose[side].append((time_on(w, kind) / size[w], size[w]))
            out = min((leave[w] for w, on_head, _, _ in allowed if on_head), default=math.inf)
            into = min((arrive[w] for w, _, on_tail, _ in allowed if on_tail), default=math.inf)
            along = {}
            for side in (1, 2):
                sums = [(0.0, 0.0)]  # (time, minus bytes): least of both
                for front in ends[str(side)]:
                    stairs = _stairs([(t, b) for c, b, t in front if c < below])
                    sums = _stairs([(x1 + y1, x2 + y2) for x1, x2 in sums for y1, y2 in stairs])
                along[side] = [(t, -b) for t, b in sums]
            return tuple((forced[side], count[side] > 0, sorted(loose[side]), walk, extra, held_bytes[side],
                          along[side], sorted(others[side]), _thresholds(keyed[side]) if by_walk else [],
                          _in_order(keyed[side], last=side == 1) if by_walk else [])
                         for side, walk, extra in ((1, out, 0.0), (2, into, tail_time)))

        walks = [move_walks(p, k1, k2) for p in cover]
        ends = {side: [move_walks(p, k1, k2, side) for p in cover] for side in ("1", "2")}
        covered = {w for p in cover for w in p[1:-1]}
        levels = sorted({change} | {c for costs in shapes.values() for c in costs if change < c < math.inf}
                        | {c for f in walks for c, _, _ in f if change < c})
        if len(levels) > _LEVELS:  # fewer levels: each allows what costs less than the next
            levels = [levels[i * (len(levels) - 1) // (_LEVELS - 1)] for i in range(_LEVELS)]
        options = []
        for theta, below in zip(levels, levels[1:] + [math.inf]):
            head_only = tail_only = either = 0.0
            rest = [0.0, 0.0, 0.0]  # uncovered nodes' bytes: only head's, only tail's, either
            for w, (on_head, on_tail, elsewhere) in shapes.items():
                if elsewhere < below:
                    continue
                if on_head < below and on_tail < below:
                    either += size[w]
                    rest[2] += size[w] if w not in covered else 0.0
                elif on_head < below:
                    head_only += size[w]
                    rest[0] += size[w] if w not in covered else 0.0
                elif on_tail < below:
                    tail_only += size[w]
                    rest[1] += size[w] if w not in covered else 0.0
                else:
                    break
            else:
                sums = [(0.0, 0.0)]
                for front in walks:
                    stairs = _stairs([(b1, b2) for c, b1, b2 in front if c < below])
                    sums = _stairs([(x1 + y1, x2 + y2) for x1, x2 in sums for y1, y2 in stairs])
                if sums:
                    allowed = tuple((w, on_head < below, on_tail < below, elsewhere < below)
                                    for w, (on_head, on_tail, elsewhere) in shapes.items())
                    options.append((theta, head_only, tail_only, either, allowed, (*rest, sums),
                                    serial_of(allowed, below)))
        return options

    def stage_costs(lo: int, hi: int):
        """For the block (lo, hi]: per run kind, the (bytes kept on the run's device,
        least LP_t) options of a run through it, and per (head kind, tail kind) the
        least LP_t when the tail is on another device than the head ("move": every
        path changes, so the most expensive of the paths tried).

        Run options (module docstring, step 3): one per prefix of the block nodes
        ordered by ``c_w`` (two changes on a path through ``w``, out and back)."""
        nodes = kept[lo:hi + 1]
        head, tail = nodes[0], nodes[-1]
        into, back = {head: 0.0}, {}  # longest fastest path head -> v (v's time included)
        for v in nodes[1:]:
            back[v] = max((u for u in graph.predecessors(v) if u in inside), key=into.__getitem__)
            into[v] = into[back[v]] + fastest(v)
        out_of, ahead = {tail: 0.0}, {}  # longest fastest path v -> tail (v's time excluded)
        for v in reversed(nodes[:-1]):
            ahead[v] = max((w for w in graph.successors(v) if w in inside),
                           key=lambda w: out_of[w] + fastest(w))
            out_of[v] = out_of[ahead[v]] + fastest(ahead[v])
        longest = out_of[head]
        paths = []  # (path, index of w): the longest fastest path through each block node w
        for w in nodes[1:]:
            before = [w]
            while before[-1] != head:
                before.append(back[before[-1]])
            path = before[::-1]
            while path[-1] != tail:
                path.append(ahead[path[-1]])
            paths.append((path, len(before) - 1))
        # a move changes device on every path, so every path tried raises its bound:
        # also the longest through each edge (a skip connection is the longest path
        # through no node, yet its tensor must cross too)
        tried = {tuple(p) for p, _ in paths}
        for u in nodes[:-1]:
            for w in graph.successors(u):
                if w in inside and ahead.get(u) != w:
                    before = [u]
                    while before[-1] != head:
                        before.append(back[before[-1]])
                    path = before[::-1] + [w]
                    while path[-1] != tail:
                        path.append(ahead[path[-1]])
                    tried.add(tuple(path))
        through = {w: [(list(p), p.index(w)) for p in tried if w in p[1:-1]] for w in nodes[1:-1]}
        cover, covered = [], set()  # node-disjoint tried paths, longest first
        for p in sorted(tried, key=len, reverse=True):
            if len(p) > 2 and not covered.intersection(p[1:-1]):
                cover.append(list(p))
                covered.update(p[1:-1])
        move = {}
        for k1 in kinds:
            for k2 in kinds:
                move[k1, k2] = move_options(k1, k2, tried, through, nodes[1:-1], cover, tail)
        run = {}
        for kind in kinds:
            # c_w: w away, head and tail on D: every tried path through w leaves D
            # before w and comes back after it
            inner = sorted((max(walk_cost(p, kind, kind, 1, 1, at) for p, at in through[w]), w)
                           for w in nodes[1:-1])
            busy = sum(time_on(v, kind) for v in nodes[1:])
            kept_bytes = sum(size[w] for _, w in inner)
            options = [(kept_bytes, max(busy, longest), ())]
            moved: tuple = ()
            for c, w in inner:
                if c == math.inf:
                    break
                busy -= time_on(w, kind)
                kept_bytes -= size[w]
                moved += (w,)
                options.append((kept_bytes, max(c, busy, longest), moved))
            run[kind] = _pareto(options)
        return run, move

    kinds = [kind for kind, count in (("accel", k), ("cpu", l)) if count > 0]
    m = len(arts)
    limit = cap * (1 + 1e-12)
    grain = cap / _BUCKETS
    art_bytes = [size[kept[a]] for a in arts]

    def held(kind: str, t: int, extra: float) -> float:
        """Bytes of a run's device after a_t joins it (none counted on a CPU)."""
        return extra + art_bytes[t] if kind == "accel" else 0.0

    # front[kind]: Pareto points (bytes already on a_t's device in its run, least
    # finish(a_t), plan) with a_t on a device of that kind, its time counted; a plan
    # is (plan before, step) or None
    front = {kind: _merge([(held(kind, 0, 0.0), time_on(kept[0], kind), None)], grain) for kind in kinds}
    for t in range(1, m):
        run, move = stage_costs(arts[t - 1], arts[t])
        block = kept[arts[t - 1]:arts[t] + 1]
        # where both ends are accelerators, the block on its own with the bytes each placement
        # leaves on them (latency_floor.move_front): (bytes on the head's device, on the
        # tail's, time) points, one at most every placement
        with_bytes = {key: move_front(graph, block, *key) if floors and k > 0 else [(0.0, 0.0, 0.0)]
                      for key in (("accel", "accel"), ("accel", None))}
        # its least time, memory aside, per end kinds (None: it stays): on both ends
        # accelerators always (the front's least time is lower: following bytes merges more
        # states), every kind in small blocks
        floor = {key: move_floor(graph, block, *key) if floors and (
                 key in with_bytes or len(block) <= _FLOOR_ALL_KINDS) else 0.0
                 for key in [*move, *((kind, None) for kind in run)]}
        nxt: dict[str, list] = {kind: [] for kind in kinds}
        for k1 in kinds:
            for b, c, plan in front[k1]:
                for kept_bytes, cost, moved in run[k1]:  # a_t stays on a_(t-1)'s device
                    nb = held(k1, t, b + kept_bytes)
                    for on_head, _, least in with_bytes.get((k1, None), [(0.0, 0.0, 0.0)]):
                        nb_ = max(nb, b + on_head) if k1 == "accel" else nb
                        if nb_ <= limit:
                            charge = max(cost, floor[k1, None], least)
                            nxt[k1].append((nb_, c + charge, (plan, ("stay", k1, moved, nb_))))
                room = limit - b if k1 == "accel" else math.inf  # what a_(t-1)'s device can still take
                for k2 in kinds:  # a_t moves: bytes allowed on either end fill a_(t-1)'s device first
                    for cost, head_only, tail_only, either, allowed, walked, serial in move[k1, k2]:
                        along = _walked(walked, room)
                        if head_only > room or along is None:
                            continue
                        top = min(either, room - head_only)  # either-bytes the head's device can take
                        for lo, hi in _splits(top):  # the head's device takes between lo and hi of them
                            nb = held(k2, t, max(along, tail_only + either - hi))
                            at_least = max(cost, floor[k1, k2], _serial_cost(serial, lo, either - hi))
                            for on_head, on_tail, least in with_bytes.get((k1, k2), [(0.0, 0.0, 0.0)]):
                                nb_ = max(nb, on_tail) if k2 == "accel" else nb
                                if on_head <= room and nb_ <= limit:
                                    nxt[k2].append((nb_, c + max(at_least, least),
                                                    (plan, ("move", k1, k2, allowed, nb_))))
        front = {kind: _merge(points, grain) for kind, points in nxt.items()}
    best = min((p for points in front.values() for p in points), key=lambda p: p[1], default=None)
    if best is None:
        return math.inf, kept, arts, []
    steps, plan = [], best[2]
    while plan is not None:
        plan, step = plan
        steps.append(step)
    return best[1], kept, arts, steps[::-1]


def path_chain_bound(graph: Graph, path: list[int]) -> float:
    """Least time + transfer along ``path`` over every way to put its nodes on devices:
    a lower bound on latency (the sample walks this path).  Maximal runs of one
    accelerator hold at most a cap of bytes -- their nodes' and those nodes' colour
    mates' (which share the device).  Exact DP over segments, O(len(path)^2) at worst."""
    return path_chain(graph, path)[0]


def path_chain(graph: Graph, path: list[int]) -> tuple[float, list[tuple[int, int, str]]]:
    """:func:`path_chain_bound` and the segments reaching it: (start, stop, kind) with
    ``path[start:stop]`` on one device of that kind (empty when nothing fits)."""
    k, l, cap = graph.num_accelerators, graph.num_cpus, graph.memory_cap
    on_path = set(path)
    size = {v: graph.node(v).size for v in path}
    for members in graph.colocation_groups():
        anchor = next((v for v in members if v in on_path), None)
        if anchor is not None:
            size[anchor] += sum(graph.node(v).size for v in members if v not in on_path)
    kinds = [kind for kind, count in (("accel", k), ("cpu", l)) if count > 0]
    group = _group_of(graph)
    nodes = [graph.node(v) for v in path]
    L = len(path)
    inf = math.inf
    # end[j][kind]: least cost of path[:j] whose last segment (ending at j-1) is of that kind
    end = [{kind: inf for kind in kinds} for _ in range(L + 1)]
    pre_cpu = [0.0]
    for n in nodes:
        pre_cpu.append(pre_cpu[-1] + n.cpu_time)

    came: dict = {}  # (j, kind) -> (i, kind before i): the segment path[i:j] and its predecessor

    def entry(i: int, kind: str) -> tuple[float, str | None]:
        """Least cost of path[:i] plus the move into a new segment of ``kind`` at i."""
        if i == 0:
            return 0.0, None
        if group[path[i - 1]] == group[path[i]]:  # colour mates share a device
            return inf, None
        cost = nodes[i - 1].out_cost
        best, arg = inf, None
        for prev, c in end[i].items():
            if prev == "accel":
                delay = (2 * cost if k >= 2 else inf) if kind == "accel" else cost
            else:
                delay = cost if kind == "accel" else (0.0 if l >= 2 else inf)
            if c + delay < best:
                best, arg = c + delay, prev
        return best, arg

    cpu_start, cpu_from = inf, None  # min over i of entry(i, cpu) - pre_cpu[i]
    for j in range(1, L + 1):
        if "cpu" in end[j]:
            value, prev = entry(j - 1, "cpu")
            if value - pre_cpu[j - 1] < cpu_start:
                cpu_start, cpu_from = value - pre_cpu[j - 1], (j - 1, prev)
            end[j]["cpu"] = cpu_start + pre_cpu[j]
            came[j, "cpu"] = cpu_from
        if "accel" in end[j]:
            t, mem, best = 0.0, 0.0, inf
            for i in range(j - 1, -1, -1):  # accelerator segment path[i:j]
                if not nodes[i].accel_ok:
                    break
                t += nodes[i].accel_time
                mem += size[path[i]]
                if mem > cap * (1 + 1e-12):
                    break
                value, prev = entry(i, "accel")
                if value + t < best:
                    best = value + t
                    came[j, "accel"] = (i, prev)
            end[j]["accel"] = best
    kind = min(end[L], key=end[L].__getitem__)
    value = end[L][kind]
    segments, j = [], L
    while value < inf and j > 0:
        i, prev = came[j, kind]
        segments.append((i, j, kind))
        j, kind = i, prev
    return value, segments[::-1]


def heaviest_path(graph: Graph, weight) -> list[int]:
    """A path of greatest total ``weight(node id)`` (ties: file order)."""
    order = graph.topological_order()
    total, back = {}, {}
    for v in order:
        preds = graph.predecessors(v)
        back[v] = max(preds, key=total.__getitem__) if preds else None
        total[v] = (total[back[v]] if preds else 0.0) + weight(v)
    path = [max(order, key=total.__getitem__)]
    while back[path[-1]] is not None:
        path.append(back[path[-1]])
    return path[::-1]


def latency_bound(graph: Graph) -> float:
    """The best of this module's lower bounds (and latency.latency_lower_bound):
    the block bound, and the chain bound along the critical path and along the
    path holding the most bytes."""
    return max([block_bound(graph)] + [path_chain_bound(graph, p) for p in bound_paths(graph)])


def bound_paths(graph: Graph) -> list[list[int]]:
    """The paths :func:`latency_bound` walks: the critical path (fastest devices) and
    the path holding the most bytes."""
    return [heaviest_path(graph, _cheapest(graph)), heaviest_path(graph, lambda v: graph.node(v).size)]
