"""Good latency placements fast: contiguous starts, then local search on the exact latency.

``improve(graph, placement, time_limit)`` moves one colocation group (alone, with
the weights hanging off it, or with the branch it lies on) at a time to another
device -- one its neighbours use, an empty or the emptiest accelerator, a CPU --
keeping a move when the single-sample latency (latency.py's model, recomputed
from scratch by :class:`FastLatency`) drops, until a full pass finds nothing
or the time is up; ``iterated_search`` restarts it from the segment DP's splits
(latency_segments) along several orders (``level_order``: by depth, so that a
cut runs across parallel branches), then from random ones and from random
perturbations.
``chain_order`` is a topological order that keeps weights
next to their consumers, so that a contiguous split of it (latency.chain_split)
does not pay for a weight it cut off from its layer.
"""
from __future__ import annotations

import math
import random
import time

from .graph import Graph
from .objective import Placement

__all__ = ["FastLatency", "chain_order", "improve", "iterated_search", "level_order", "path_split"]


def chain_order(graph: Graph) -> list[int]:
    """The topological order with every source moved to just before its first
    consumer and every sink to just after its last producer (still topological)."""
    return _sources_and_sinks_by_neighbours(graph, graph.topological_order())


def level_order(graph: Graph, late: bool = False, rng: random.Random | None = None) -> list[int]:
    """A topological order by earliest start on accelerators with free transfers
    (``late``: by latest start that keeps the longest path), then as :func:`chain_order`
    for sources and sinks.  Parallel branches interleave by depth, so a contiguous
    split of it can cut all the branches of a module at once (Inception) where
    the plain order cuts one branch off the others.  With ``rng`` each node's time
    is scaled by a random factor in [0.3, 1.7] first (another order to split)."""
    topo = graph.topological_order()
    pos = {v: i for i, v in enumerate(topo)}
    time_of = {v: graph.node(v).accel_time * (rng.uniform(0.3, 1.7) if rng else 1.0) for v in topo}
    if late:  # latest start = (longest path) - (longest path from v to a sink)
        tail: dict[int, float] = {}
        for v in reversed(topo):
            tail[v] = time_of[v] + max((tail[w] for w in graph.successors(v)), default=0.0)
        start = {v: -tail[v] for v in topo}
    else:
        start = {}
        for v in topo:
            start[v] = max((start[u] + time_of[u] for u in graph.predecessors(v)), default=0.0)
    # (start, finish, position): along an edge start and finish never decrease, and
    # ties (zero-time nodes) keep the topological order
    order = sorted(topo, key=lambda v: (start[v], start[v] + time_of[v], pos[v]))
    at = {v: i for i, v in enumerate(order)}
    if any(at[u] > at[w] for u, w in graph.edges):  # float rounding on near-zero times
        order = topo
    return _sources_and_sinks_by_neighbours(graph, order)


def _sources_and_sinks_by_neighbours(graph: Graph, order: list[int]) -> list[int]:
    pos = {v: i for i, v in enumerate(order)}

    def key(v: int):
        succ, pred = graph.successors(v), graph.predecessors(v)
        if not pred and succ:
            return (min(pos[w] for w in succ) - 0.5, pos[v])
        if not succ and pred:
            return (max(pos[u] for u in pred) + 0.5, pos[v])
        return (float(pos[v]), pos[v])

    return sorted(order, key=key)


class FastLatency:
    """latency.latency_of for many device assignments of one graph: plain lists
    indexed by topological position; devices 0..k-1 are accelerators, k..k+l-1 CPUs."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.order = graph.topological_order()
        self.pos = {v: i for i, v in enumerate(self.order)}
        self.k, self.l = graph.num_accelerators, graph.num_cpus
        nodes = [graph.node(v) for v in self.order]
        self.accel = [n.accel_time for n in nodes]
        self.cpu = [n.cpu_time for n in nodes]
        self.out = [n.out_cost for n in nodes]
        self.preds = [[self.pos[u] for u in graph.predecessors(v)] for v in self.order]

    def __call__(self, dev: list[int]) -> float:
        return self._finish_from(dev, 0, [0.0] * (self.k + self.l), [0.0] * len(dev), 0.0)

    def snapshot(self, dev: list[int]) -> tuple[list[float], list[list[float]], list[float]]:
        """The schedule of ``dev`` as :meth:`resume` needs it: finish times, every
        device's free time before each position, the latest finish before each."""
        k = self.k
        free = [0.0] * (k + self.l)
        finish = [0.0] * len(dev)
        frees, latest, run = [], [], 0.0
        accel, cpu, out = self.accel, self.cpu, self.out
        for i, preds in enumerate(self.preds):
            frees.append(free[:])
            latest.append(run)
            d = dev[i]
            ready = free[d]
            for p in preds:
                arrive = finish[p]
                dp = dev[p]
                if dp != d:
                    arrive += out[p] * ((dp < k) + (d < k))
                if arrive > ready:
                    ready = arrive
            f = ready + (accel[i] if d < k else cpu[i])
            finish[i] = f
            free[d] = f
            if f > run:
                run = f
        return finish, frees, latest

    def resume(self, dev: list[int], start: int, snapshot) -> float:
        """The latency of ``dev`` when it differs from the snapshot's assignment only
        at positions >= ``start``: the schedule before ``start`` is reused."""
        if start >= len(dev):
            return self(dev)
        done, frees, latest = snapshot
        return self._finish_from(dev, start, frees[start][:], done[:], latest[start])

    def _finish_from(self, dev: list[int], start: int, free: list[float],
                     finish: list[float], run: float) -> float:
        """Schedule positions ``start``.. of ``dev`` given each device's ``free`` time
        and the ``finish`` times before ``start`` (updated in place); the latest finish.
        The inner loop of every evaluation: kept flat, no calls per node."""
        k = self.k
        accel, cpu, out, preds_of = self.accel, self.cpu, self.out, self.preds
        for i in range(start, len(dev)):
            d = dev[i]
            ready = free[d]
            for p in preds_of[i]:
                arrive = finish[p]
                dp = dev[p]
                if dp != d:
                    arrive += out[p] * ((dp < k) + (d < k))
                if arrive > ready:
                    ready = arrive
            f = ready + (accel[i] if d < k else cpu[i])
            finish[i] = f
            free[d] = f
            if f > run:
                run = f
        return run

    def devices_of(self, placement: Placement) -> list[int]:
        dev = [0] * len(self.order)
        for a, nodes in enumerate(placement.accelerators):
            for v in nodes:
                dev[self.pos[v]] = a
        for c, nodes in enumerate(placement.cpus):
            for v in nodes:
                dev[self.pos[v]] = self.k + c
        return dev

    def placement(self, dev: list[int]) -> Placement:
        acc = [[] for _ in range(self.k)]
        cpus = [[] for _ in range(self.l)]
        for i, d in enumerate(dev):
            (acc[d] if d < self.k else cpus[d - self.k]).append(self.order[i])
        return Placement(acc, cpus)


def improve(graph: Graph, placement: Placement, time_limit: float,
            evaluator: FastLatency | None = None) -> tuple[Placement, float, dict]:
    """Local search from a valid ``placement``; returns (placement, latency, stats).
    Every kept move respects memory caps, colour classes and CPU-only nodes."""
    t0 = time.perf_counter()
    ev = evaluator or FastLatency(graph)
    k, l, cap = ev.k, ev.l, graph.memory_cap
    dev = ev.devices_of(placement)
    groups = [[ev.pos[v] for v in members] for members in graph.colocation_groups()]
    groups.sort(key=min)
    size = [sum(graph.node(ev.order[i]).size for i in g) for g in groups]
    accel_ok = [all(graph.node(ev.order[i]).accel_ok for i in g) for g in groups]
    group_of = [0] * len(dev)
    for gi, g in enumerate(groups):
        for i in g:
            group_of[i] = gi
    neighbours = [set() for _ in groups]
    for i, preds in enumerate(ev.preds):
        for p in preds:
            if group_of[p] != group_of[i]:
                neighbours[group_of[i]].add(group_of[p])
                neighbours[group_of[p]].add(group_of[i])
    chains = _chains(groups, group_of, ev.preds, neighbours)
    hangs_on = [{h for h in neighbours[g] if neighbours[h] == {g}} for g in range(len(groups))]
    used = [0.0] * k  # bytes per accelerator
    count = [0] * (k + l)  # groups per device
    for gi, g in enumerate(groups):
        d = dev[g[0]]
        count[d] += 1
        if d < k:
            used[d] += size[gi]
    best = ev(dev)
    first = [min(g) for g in groups]  # a move of a group leaves the schedule before it alone
    snapshot = ev.snapshot(dev)
    moves = passes = 0
    improved = True
    while improved and time.perf_counter() - t0 < time_limit:
        improved = False
        passes += 1
        for gi, g in enumerate(groups):
            if time.perf_counter() - t0 >= time_limit:
                break
            here = dev[g[0]]
            targets = {dev[groups[h][0]] for h in neighbours[gi]}
            empty = [next((d for d in range(lo, hi) if count[d] == 0), None)
                     for lo, hi in ((0, k), (k, k + l))]
            emptiest = min((a for a in range(k) if a != here), key=used.__getitem__, default=None)
            targets |= {d for d in empty + [emptiest, k if l else None] if d is not None}
            targets.discard(here)
            # the group alone, and with the groups that hang off it only (its weights,
            # side outputs): moved alone, those would add a transfer
            hanging = [h for h in neighbours[gi] if neighbours[h] == {gi} and dev[groups[h][0]] == here]
            units = [[gi]] + ([[gi] + hanging] if hanging else [])
            # and the whole branch it lies on (a chain of groups with one way in and out)
            chain, spine = chains[gi]
            at = spine.index(gi)
            for part in (spine[:at + 1], spine[at:], spine):  # up to gi, from gi, all of it
                unit = [h for h in part + [h for c in part for h in chain if h in hangs_on[c]]
                        if dev[groups[h][0]] == here]
                if len(unit) > 1 and unit not in units:
                    units.append(unit)
            for d in sorted(targets):
                for unit in units:
                    need = sum(size[h] for h in unit)
                    if d < k and (not all(accel_ok[h] for h in unit)
                                  or used[d] + need > cap * (1 + 1e-12)):
                        continue
                    for h in unit:
                        for i in groups[h]:
                            dev[i] = d
                    value = ev.resume(dev, min(first[h] for h in unit), snapshot)
                    if value < best * (1 - 1e-12):
                        best, moves, improved = value, moves + 1, True
                        snapshot = ev.snapshot(dev)
                        count[here] -= len(unit)
                        count[d] += len(unit)
                        if here < k:
                            used[here] -= need
                        if d < k:
                            used[d] += need
                        break
                    for h in unit:
                        for i in groups[h]:
                            dev[i] = here
                if dev[g[0]] != here:
                    break
    stats = {"moves": moves, "passes": passes, "seconds": time.perf_counter() - t0}
    return ev.placement(dev), best, stats


def path_split(graph: Graph, path: list[int]) -> Placement | None:
    """A placement that follows the segments of latency_bound.path_chain along ``path``
    (the bound's own plan for the sample's route): accelerator segments on
    accelerators (a fresh one while any is left, else the first with room), CPU
    segments on CPU 0, colour mates with their node, every other node with a
    placed neighbour that has room (else CPU 0).  None if that does not fit."""
    from .latency_bound import path_chain  # the bound module imports nothing from here

    k, l, cap = graph.num_accelerators, graph.num_cpus, graph.memory_cap
    _, segments = path_chain(graph, path)
    if not segments:
        return None
    group_of = {v: g for g, members in enumerate(graph.colocation_groups()) for v in members}
    members = graph.colocation_groups()
    group_size = [sum(graph.node(v).size for v in m) for m in members]
    group_ok = [all(graph.node(v).accel_ok for v in m) for m in members]
    where: dict[int, int] = {}  # group -> device (0..k-1 accelerators, k.. CPUs)
    used = [0.0] * k

    def put(g: int, d: int) -> bool:
        if d < k:
            if not group_ok[g] or used[d] + group_size[g] > cap * (1 + 1e-12):
                return False
            used[d] += group_size[g]
        where[g] = d
        return True

    fresh = 0
    for start, stop, kind in segments:
        groups = [group_of[v] for v in path[start:stop] if group_of[v] not in where]
        groups = list(dict.fromkeys(groups))
        if kind == "cpu":
            for g in groups:
                where[g] = k
            continue
        need = sum(group_size[g] for g in groups)
        if fresh < k:
            d, fresh = fresh, fresh + 1
        else:
            d = next((a for a in range(k) if used[a] + need <= cap * (1 + 1e-12)), None)
            if d is None:
                return None
        for g in groups:
            if not put(g, d) and not (l and put(g, k)):
                return None
    for v in graph.topological_order():
        g = group_of[v]
        if g in where:
            continue
        near = [where[group_of[u]] for u in graph.predecessors(v) + graph.successors(v)
                if group_of[u] in where]
        if not any(put(g, d) for d in near + list(range(k))):
            if not l:
                return None
            where[g] = k
    acc = [[] for _ in range(k)]
    cpus = [[] for _ in range(l)]
    for g, m in enumerate(members):
        d = where[g]
        (acc[d] if d < k else cpus[d - k]).extend(m)
    return Placement(acc, cpus)


def _chains(groups, group_of, preds, neighbours) -> list[tuple[list[int], list[int]]]:
    """For each group, the maximal chain of groups it lies on -- each link the only
    way out of one and into the next, not counting groups that hang off one group
    alone (weights, side outputs), which ride along: (chain with those hanging
    groups, the chain alone in order)."""
    n = len(groups)
    succ = [set() for _ in range(n)]
    pred = [set() for _ in range(n)]
    for i, ps in enumerate(preds):
        for p in ps:
            a, b = group_of[p], group_of[i]
            if a != b:
                succ[a].add(b)
                pred[b].add(a)
    hangs = [len(neighbours[g]) == 1 for g in range(n)]
    main_succ = [{h for h in succ[g] if not hangs[h]} for g in range(n)]
    main_pred = [{h for h in pred[g] if not hangs[h]} for g in range(n)]

    def linked(a: int, b: int) -> bool:
        return main_succ[a] == {b} and main_pred[b] == {a}

    out: list = [None] * n
    for g in range(n):
        if out[g] is not None or hangs[g]:
            continue
        first = g
        while len(main_pred[first]) == 1 and linked(next(iter(main_pred[first])), first) \
                and next(iter(main_pred[first])) != g:
            first = next(iter(main_pred[first]))
        chain, cur = [first], first
        while len(main_succ[cur]) == 1 and linked(cur, next(iter(main_succ[cur]))):
            cur = next(iter(main_succ[cur]))
            chain.append(cur)
        members = chain + [h for c in chain for h in neighbours[c] if hangs[h]]
        for c in chain:
            out[c] = (members, chain)
    for g in range(n):
        if out[g] is None:
            out[g] = ([g], [g])
    return out


def iterated_search(graph: Graph, placement: Placement, value: float, time_limit: float,
                    evaluator: FastLatency | None = None, seed: int = 0,
                    max_restarts: int | None = None) -> tuple[Placement, float, dict]:
    """Restarts of :func:`improve` until ``time_limit`` (or ``max_restarts``), keeping
    the fastest result.

    First from the segment DP's splits (``_SEGMENT_STARTS``: along the level orders
    and the chain order, CPU segments on one CPU or spread; the same starts on
    every machine).  Then, taking turns: the DP along a level order
    of randomly scaled node times, and a random perturbation of the best so far
    (a random window of the topological order, with the nodes' colour mates, on
    one device seen near it).  Seeded: with ``max_restarts`` and time to spare, a
    run is repeatable on any machine."""
    from .latency_segments import segment_split
    from .objective import PlacementError, check_placement

    t0 = time.perf_counter()
    rng = random.Random(seed)
    ev = evaluator or FastLatency(graph)
    n, devices = len(ev.order), ev.k + ev.l
    group_of = {v: g for g, members in enumerate(graph.colocation_groups()) for v in members}
    members = graph.colocation_groups()
    tries = kept = 0
    seen = set()
    budget = math.inf if max_restarts is None else max_restarts

    def left() -> float:
        return time_limit - (time.perf_counter() - t0)

    def restart(start: Placement | None) -> None:
        nonlocal placement, value, tries, kept
        if start is None:
            return
        tries += 1
        key = tuple(ev.devices_of(start))
        if key in seen:  # a split tried already: improve would end where it did
            return
        seen.add(key)
        candidate, candidate_value, _ = improve(graph, start, left(), ev)
        if candidate_value < value * (1 - 1e-12):
            placement, value, kept = candidate, candidate_value, kept + 1

    orders = {"early": level_order(graph), "late": level_order(graph, late=True),
              "chain": chain_order(graph)}
    for name, cpus in _SEGMENT_STARTS:
        if left() <= 0 or tries >= budget:
            break
        restart(segment_split(graph, orders[name], time_limit=left(), cpus=cpus,
                              upper_bound=value * _DP_SLACK))
    turn = 0
    while left() > 0 and tries < budget:
        turn += 1
        if turn % 2:
            order = level_order(graph, late=turn % 4 == 3, rng=rng)
            restart(segment_split(graph, order, time_limit=left(), upper_bound=value * _DP_SLACK))
            continue
        dev = ev.devices_of(placement)
        start, width = rng.randrange(n), rng.randint(2, 12)
        near = {dev[j] for j in range(max(0, start - width), min(n, start + 2 * width))}
        target = rng.choice(sorted(near | {rng.randrange(devices)}))
        for j in range(start, min(n, start + width)):
            for v in members[group_of[ev.order[j]]]:
                dev[ev.pos[v]] = target
        candidate = ev.placement(dev)
        try:
            check_placement(graph, candidate)
        except PlacementError:  # over a memory cap, or a CPU-only node on an accelerator
            tries += 1
            continue
        restart(candidate)
    return placement, value, {"tries": tries, "kept": kept, "seconds": time.perf_counter() - t0}


# iterated_search's first restarts: (order, CPUs a CPU segment may spread over: None
# = all).  On the bundled workloads, after improve: Inception-v3 940.6 from "early"
# (1014.1 from "chain"; 948.3 on one CPU), ResNet-50 layers 995.4 from "late" on one
# CPU (998.0 on all), GNMT its optimum 219.1 from "early".  (Filling accelerators to
# 0.8-0.99 of the cap gave 1008.6 on Inception-v3 along "chain", but never beat these.)
_SEGMENT_STARTS = tuple((name, cpus) for cpus in (None, 1) for name in ("early", "late", "chain"))
# the DP's starts need not beat the best so far (improve takes a lot off them: Inception-v3
# 982 -> 941), but prefixes much slower than it are not worth extending
_DP_SLACK = 1.25
