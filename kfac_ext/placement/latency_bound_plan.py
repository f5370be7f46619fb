"""A latency placement read off the memory-aware lower bound: ``plan_split``.

latency_bound.block_plan's dynamic program picks, along the articulation chain,
where the sample stays on one device and where it moves, and per block which
nodes may sit on the head's device, the tail's or a third one.  Those choices
are a relaxation's, but on the bundled workloads they are close to a real
placement: this module follows them -- a fresh device for every run, a block's
nodes on the run's device when they fit, a move's block cut where it finishes
first (timed on the block alone, within the bytes the plan leaves on the tail's
device when it can), nodes the plan sends away to CPUs (one branch per CPU) or
spare accelerators -- and puts the nodes the bound dropped (weights, side
outputs) next to a neighbour.  The result is checked (memory, colours, CPU-only
nodes) and is a start for latency_search.improve (:func:`plan_start`); None when
the plan needs more accelerators than there are or something does not fit.
On ResNet-50's operator graph the plan alone is within 1 % of the bound.
"""
from __future__ import annotations

import itertools
import math

from .graph import Graph
from .latency import latency_of, transfer_delay
from .latency_bound import block_plan
from .objective import Placement, PlacementError, check_placement

__all__ = ["plan_split", "plan_start"]


class _Devices:
    """Devices handed out in order, the bytes on each accelerator, and where each
    colocation group went."""

    def __init__(self, graph: Graph, away_kind: str):
        self.graph = graph
        self.k, self.l, self.cap = graph.num_accelerators, graph.num_cpus, graph.memory_cap
        self.group_of = {v: g for g, members in enumerate(graph.colocation_groups()) for v in members}
        self.groups = graph.colocation_groups()
        self.bytes = [sum(graph.node(v).size for v in m) for m in self.groups]
        self.cpu_only = [not all(graph.node(v).accel_ok for v in m) for m in self.groups]
        self.where: dict[int, tuple[str, int]] = {}  # group -> device
        self.load = [0.0] * self.k
        self.next_accel = 0  # runs take accelerators from the first up
        self.spares = 0  # nodes sent off the sample's way take them from the last down
        self.next_cpu = 0
        self.cpu_away = ("cpu", self.l - 1) if self.l else None
        self.away_kind = away_kind if self.l else "accel"
        self.sent: set[tuple[str, int]] = set()  # CPUs nodes were sent away to
        self.turn = 0

    def fresh(self, kind: str, current: tuple[str, int] | None) -> tuple[str, int] | None:
        """A device of ``kind`` for a new run: a fresh one while there are, then the
        emptiest other accelerator (None if there is none)."""
        if kind == "accel":
            if self.next_accel >= self.k - self.spares:  # all handed out: the emptiest other one
                others = [a for a in range(self.k) if ("accel", a) != current]
                return ("accel", min(others, key=self.load.__getitem__)) if others else None
            self.next_accel += 1
            return ("accel", self.next_accel - 1)
        spare = [c for c in range(max(1, self.l - 1)) if ("cpu", c) != current]
        if not spare:  # one CPU only: the run shares it
            return ("cpu", 0)
        self.next_cpu += 1
        return ("cpu", spare[(self.next_cpu - 1) % len(spare)])

    def third(self, busy) -> tuple[str, int] | None:
        """Where a move may send nodes off its two ends: the last CPU, or with
        ``away_kind`` "accel" the spare accelerator with most room (a new one while runs
        leave one free), None if there is none."""
        if self.away_kind == "cpu":
            return self.cpu_away
        spares = [("accel", a) for a in range(self.k - self.spares, self.k)]
        if self.next_accel < self.k - self.spares - 1:
            spares.append(("accel", self.k - self.spares - 1))
        spares = [d for d in spares if d not in busy]
        return max(spares, key=lambda d: -self.load[d[1]], default=self.cpu_away)

    def fits(self, v: int, device: tuple[str, int]) -> bool:
        g = self.group_of[v]
        if g in self.where:
            return self.where[g] == device
        if device[0] == "cpu":
            return True
        return not self.cpu_only[g] and self.load[device[1]] + self.bytes[g] <= self.cap * (1 + 1e-12)

    def put(self, v: int, device: tuple[str, int]) -> bool:
        """Place ``v``'s group on ``device`` if it is not placed yet and fits."""
        g = self.group_of[v]
        if g in self.where:
            return True
        if not self.fits(v, device):
            return False
        self.where[g] = device
        if device[0] == "accel":
            self.load[device[1]] += self.bytes[g]
            if self.next_accel <= device[1] < self.k - self.spares:  # a spare claimed by third()
                self.spares = self.k - device[1]
        return True

    def put_first(self, v: int, *devices) -> bool:
        """Place ``v``'s group on the first of ``devices`` it fits, else send it away."""
        return any(d is not None and self.put(v, d) for d in devices) or self.put_away(v)

    def put_away(self, v: int) -> bool:
        """Off the sample's way: with ``away_kind`` "cpu" the CPU a producer of ``v``
        was sent to (a branch stays together), else the next CPU in turn (branches run
        side by side); with "accel" a spare accelerator (one after another from the
        last, while runs leave them free), else the last CPU."""
        if self.away_kind == "cpu":
            for u in self.graph.predecessors(v):
                d = self.where.get(self.group_of[u])
                if d in self.sent:
                    return self.put(v, d)
            self.turn += 1
            d = ("cpu", (self.l - self.turn % self.l) % self.l)
            self.sent.add(d)
            return self.put(v, d)
        for a in range(self.k - 1, self.k - 1 - self.spares, -1):
            if self.put(v, ("accel", a)):
                return True
        if self.next_accel < self.k - self.spares - 1 or (not self.l and self.next_accel < self.k - self.spares):
            self.spares += 1
            if self.put(v, ("accel", self.k - self.spares)):
                return True
        return self.cpu_away is not None and self.put(v, self.cpu_away)

    def placement(self) -> Placement:
        acc = [[] for _ in range(self.k)]
        cpus = [[] for _ in range(self.l)]
        for g, (kind, i) in self.where.items():
            (acc if kind == "accel" else cpus)[i].extend(self.groups[g])
        return Placement(acc, cpus)


def plan_split(graph: Graph) -> Placement | None:
    """The placement latency_bound.block_plan's choices describe (module docstring):
    the fastest of the ways :func:`_follow` has (nodes sent away to CPUs or to spare
    accelerators; moves cut as the plan allows, cut freely or placed node by node),
    over the DP's choices with and without its charge by walk length (either may
    split a move's block the better way); None if none fits the devices."""
    plans = [block_plan(graph), block_plan(graph, by_walk=False)]
    best, best_value = None, math.inf
    for plan, away_kind, cuts in itertools.product(plans, ("cpu", "accel"), ("shaped", "free", None)):
        placement = _follow(graph, plan, away_kind, cuts)
        if placement is not None:
            value = latency_of(graph, placement)
            if value < best_value:
                best, best_value = placement, value
    return best


def _follow(graph: Graph, plan, away_kind: str, cuts: str | None) -> Placement | None:
    """The placement along ``plan``.  A move's block is cut by :func:`_best_cut`, first
    with its bytes on the tail's device as the plan counts them, then as room allows;
    with ``cuts`` "shaped", each node first where the plan allows it, then anywhere;
    with "free", on either end or (if the plan lets it go) on a third device.  If
    ``cuts`` is None or no cut fits, the block's nodes are placed one by one as the
    plan counts bytes."""
    _, kept, arts, steps = plan
    if not steps and len(arts) > 1:
        return None
    devices = _Devices(graph, away_kind)
    first_kind = steps[0][1] if steps else ("accel" if graph.num_accelerators else "cpu")
    current = devices.fresh(first_kind, None)
    if current is None or not devices.put_first(kept[arts[0]], current):
        return None
    later = []  # (node, devices it may take): the nodes whose bytes the bound did not count
    for t, step in enumerate(steps, start=1):
        inner, tail = kept[arts[t - 1] + 1:arts[t]], kept[arts[t]]
        if step[0] == "stay":
            moved = set(step[2])  # ("stay", kind, moved, bytes)
            for w in inner:
                if w in moved:
                    later.append((w, ()))
                else:
                    devices.put_first(w, current)
            if not devices.fits(tail, current):  # the plan's bytes were a relaxation's
                current = devices.fresh(current[0], current) or current
            devices.put_first(tail, current)
            continue
        _, _, tail_kind, allowed, _ = step
        nxt = devices.fresh(tail_kind, current)
        if nxt is None:
            return None
        cut = None
        if cuts:  # within the bytes the plan counts on nxt for the block, else as room allows
            counted = step[-1] - (graph.node(tail).size if tail_kind == "accel" else 0.0)
            shapes = {w: (on_head, on_tail, may_go) for w, on_head, on_tail, may_go in allowed}
            ends = {w: (True, True, may_go) for w, _, _, may_go in allowed}
            tries = ([(counted + _SLACK * devices.cap, shapes), (math.inf, dict.fromkeys(shapes, (True,) * 3))]
                     if cuts == "shaped" else [(counted + _SLACK * devices.cap, ends), (math.inf, ends)])
            for budget, where in tries:
                cut = _best_cut(graph, devices, inner, kept[arts[t - 1]], tail, current, nxt, budget, where,
                                away_first=budget < math.inf)
                if cut is not None:
                    break
        if cut is not None:
            for w in inner:
                devices.put_first(w, cut[w])
        else:  # as the bound counts bytes: one end allowed first, then either
            for w, on_head, on_tail, away in sorted(allowed, key=lambda a: a[1] and a[2]):
                ends = (current if on_head else None, nxt if on_tail else None)
                if away:
                    later.append((w, ends))
                else:
                    devices.put_first(w, *ends)
        devices.put_first(tail, nxt)
        current = nxt
    for w, ends in later:  # where there is room left, else away
        devices.put_first(w, *ends)
    _place_the_rest(graph, devices)
    placement = devices.placement()
    try:
        check_placement(graph, placement)
    except PlacementError:
        return None
    return placement


_SLACK = 0.01  # share of the cap a move's cut may put on its tail device beyond the plan's count
_CUTS_TRIED = 4000  # down-sets of a block timed at most (the first ones in a depth-first order)


def _best_cut(graph: Graph, devices: _Devices, inner: list[int], head: int, tail: int,
              d1: tuple[str, int], d2: tuple[str, int], budget: float,
              allowed: dict[int, tuple[bool, bool, bool]], away_first: bool = False
              ) -> dict[int, tuple[str, int]] | None:
    """Where a block whose tail moves to ``d2`` changes device: a down-set of its inner
    nodes kept on ``d1``, the rest on ``d2`` or on a third device, each node where
    ``allowed`` (on d1, on d2, on a third) lets it -- the split whose tail finishes
    first, timed on the block alone (latency.py's model, the head done at 0), among
    those that fit the devices with at most ``budget`` bytes on ``d2``; None when none
    of the splits tried fits.  The first :data:`_CUTS_TRIED` splits are tried, in a
    depth-first order that puts each node first on d1 (``away_first``: on the third
    device)."""
    d3 = devices.third((d1, d2))
    ends = (d1, d2) if d3 is None else (d1, d2, d3)
    inside = set(inner)
    preds = {w: [u for u in graph.predecessors(w) if u in inside or u == head] for w in inner + [tail]}
    fixed = {w: devices.where.get(devices.group_of[w]) for w in inner}
    size = {w: 0.0 if fixed[w] else graph.node(w).size for w in inner}
    room = {d: (devices.cap * (1 + 1e-12) - devices.load[d[1]] if d[0] == "accel" else math.inf) for d in ends}
    room[d2] = min(budget, room[d2] - (0.0 if devices.where.get(devices.group_of[tail]) else graph.node(tail).size))
    ok = {d: {w for w in inner if (fixed[w] or d) == d and (d[0] == "cpu" or graph.node(w).accel_ok)
              and allowed[w][(d1, d2, d3).index(d)]} for d in ends}

    def finish_of_tail() -> float:
        finish, free = {head: 0.0}, dict.fromkeys(ends, 0.0)
        for w in inner + [tail]:
            dev = where[w]
            ready = free[dev]
            for u in preds[w]:
                ready = max(ready, finish[u] + transfer_delay(graph.node(u).out_cost, where[u], dev))
            node = graph.node(w)
            finish[w] = free[dev] = ready + (node.accel_time if dev[0] == "accel" else node.cpu_time)
        return finish[tail]

    where = {head: d1, tail: d2}
    used = dict.fromkeys(ends, 0.0)
    best, best_value, tried = None, math.inf, 0

    def grow(i: int) -> None:
        nonlocal best, best_value, tried
        if tried >= _CUTS_TRIED:
            return
        if i == len(inner):
            tried += 1
            value = finish_of_tail()
            if value < best_value:
                best, best_value = dict(where), value
            return
        w = inner[i]
        for d in ends[::-1] if away_first else ends:
            if w not in ok[d] or used[d] + size[w] > room[d]:
                continue
            if d == d1 and not all(where[u] == d1 for u in preds[w]):
                continue  # d1 keeps a down-set: no path comes back to it
            where[w] = d
            used[d] += size[w]
            grow(i + 1)
            used[d] -= size[w]
        where.pop(w, None)

    grow(0)
    return best


def _place_the_rest(graph: Graph, devices: _Devices) -> None:
    """Nodes the bound dropped go next to a placed neighbour (a weight by its consumer,
    a side output by its producer), else to the spare device."""
    left = [v for v in graph.topological_order() if devices.group_of[v] not in devices.where]
    while left:
        stuck = []
        for v in left:
            near = [devices.where[devices.group_of[u]] for u in graph.predecessors(v) + graph.successors(v)
                    if devices.group_of[u] in devices.where]
            if not near:
                stuck.append(v)
            elif not devices.put_first(v, *near):
                devices.put_first(v, ("cpu", 0) if devices.l else None,
                                  *[("accel", a) for a in range(devices.k)])
        if len(stuck) == len(left):  # nothing placed next to anything: the spare device
            for v in stuck:
                devices.put_first(v, *[("accel", a) for a in range(devices.k)])
            return
        left = stuck


def plan_start(graph: Graph, time_limit: float) -> Placement | None:
    """:func:`plan_split` polished by latency_search.improve for at most ``time_limit``
    seconds (the plan's own value is a poor guide: a few nodes left on the wrong side
    of a cut cost a lot, and the local search moves them back at once)."""
    from .latency_search import improve  # lazy: the search module imports latency_bound

    placement = plan_split(graph)
    if placement is None:
        return None
    return improve(graph, placement, time_limit)[0]
