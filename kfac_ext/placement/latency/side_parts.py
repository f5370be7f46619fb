"""Side parts: what a call of the chain bound (:mod:`.chain_bound`) pays for a side branch that
is no simple route, restating the model's timing rule (:mod:`.model`) for the nodes of it.

The chain bound charges the tensors that go round a call's run through *bypasses*, chains of
one-input one-output nodes from one path node to a later one.  A branch that forks or joins
inside itself (Inception-v3's ``229 -> 230 .. 236 -> {237, 238} -> 239 -> 258 <- 229``: a
split branch and a node with two inputs) is no such chain, and was charged nothing.

A *side part* is a weakly connected set ``X`` of nodes off the path and off every bypass whose
inputs all lie in ``X`` or on the path (the path nodes feeding it: its *entries*) and whose
outputs all go to ``X`` or to the path (its *exits*).  A call holds some ``H`` of ``X`` with no
CPU-only node, and by the model pays ``H``'s accelerator times and bytes and:

* *sent* past the call: its run ``p_i .. p_j`` holds every entry, ``j`` lies before every exit
  and ``X`` has no source (so every node of it descends from the call).  ``H`` is closed under
  inputs within ``X`` (a node off the call feeding one on it would be a path that leaves the
  call and comes back); the call sends each node of ``H`` with an edge leaving it (to ``X``
  off ``H``, or to an exit), and each entry with an edge to ``X`` off ``H``.
* *fetched* into the call: every entry lies before ``p_i``, every exit in ``i .. j``, and ``X``
  has no sink (every node of it feeds the call).  ``H`` is closed under outputs within ``X``;
  the call fetches each node off ``H`` with an edge into ``H`` or into the run, and each entry
  feeding ``H`` (``p_i-1``'s fetch is paid already).  These nodes are then left out of the
  call's off-path inputs (charged there otherwise).

In either case none of ``X`` may be in the call's forced set.  The least over every ``H`` is
charged, per part, as one group of the chain bound's multiple-choice knapsack LP, an entry's
transfer shared among the groups that may pay it (as for bypasses); as the shares change, the
LP with the parts is a second lower bound and the chain bound keeps the larger.  ``X`` is no
bypass, and none of its nodes feeds the forced set (or, fetched, is charged as an input too),
so nothing is paid twice.  With more than ``max_options`` sets ``H`` the part is left out:
charged nothing, which keeps it a bound.  Tested against brute force
(tests/placement/test_latency_side_parts.py)"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..graph import Graph

__all__ = ["SidePart", "side_parts"]


@dataclass(frozen=True)
class SidePart:
    """A side part of one path: its ``entries``, its first and last exits (path positions),
    ``mask`` (its nodes as bits of the topological order's indices) and, where it may be
    sent past a call or fetched into one, the options of each: per held set ``H``, ``(bytes,
    cost, entries whose transfer the call pays)``, or None."""

    entries: tuple[int, ...]
    first_exit: float
    last_exit: int
    mask: int
    send: tuple | None
    fetch: tuple | None


def side_parts(graph: Graph, path, order, index, skip, max_options: int = 256) -> list[SidePart]:
    """The side parts of ``path`` (nodes in ``skip``, the bypasses' inner nodes, are left out)."""
    at = {v: b for b, v in enumerate(path)}
    free = [v for v in order if v not in at and index[v] not in skip]
    free_set = set(free)
    parent = {v: v for v in free}

    def find(v):
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for s, d in graph.edges:
        if s in free_set and d in free_set:
            parent[find(s)] = find(d)
    groups: dict[int, list[int]] = {}
    for v in free:  # topological order within each part
        groups.setdefault(find(v), []).append(v)
    out = []
    for nodes in groups.values():
        part = _part(graph, nodes, at, index, max_options)
        if part is not None:
            out.append(part)
    return out


def _part(graph: Graph, nodes: list[int], at: dict, index, max_options: int) -> SidePart | None:
    inside = set(nodes)
    entries, exits = set(), set()
    sources = sinks = False
    for v in nodes:
        preds, succs = graph.predecessors(v), graph.successors(v)
        sources |= not preds
        sinks |= not succs
        for u in preds:
            if u in at:
                entries.add(at[u])
            elif u not in inside:
                return None
        for w in succs:
            if w in at:
                exits.add(at[w])
            elif w not in inside:
                return None
    pos = {v: t for t, v in enumerate(nodes)}
    node = [graph.node(v) for v in nodes]
    preds_in = [[pos[u] for u in graph.predecessors(v) if u in inside] for v in nodes]
    succs_in = [[pos[w] for w in graph.successors(v) if w in inside] for v in nodes]
    fed_by = [sorted(at[u] for u in graph.predecessors(v) if u in at) for v in nodes]
    leaves = [any(w in at for w in graph.successors(v)) for v in nodes]
    send = fetch = None
    if not sources:  # every node descends from the entries
        held_sets = _closed(node, preds_in, range(len(nodes)), max_options)
        if held_sets is not None:
            send = _options(node, held_sets, succs_in, leaves, fed_by, sending=True)
    if not sinks:  # every node is an ancestor of the exits
        held_sets = _closed(node, succs_in, range(len(nodes) - 1, -1, -1), max_options)
        if held_sets is not None:
            fetch = _options(node, held_sets, preds_in, leaves, fed_by, sending=False)
    if send is None and fetch is None:
        return None
    mask = 0
    for v in nodes:
        mask |= 1 << index[v]
    return SidePart(tuple(sorted(entries)), min(exits, default=math.inf), max(exits, default=-1), mask, send, fetch)


def _closed(node, needs, order, max_options: int) -> list[int] | None:
    """Every set of accelerator nodes closed under ``needs`` (visited in ``order``, each node's
    needs before it), as bit masks; None when there are more than ``max_options``."""
    out: list[int] = []
    order = list(order)

    def grow(k: int, held: int) -> bool:
        if len(out) > max_options:
            return False
        if k == len(order):
            out.append(held)
            return True
        t = order[k]
        if not grow(k + 1, held):
            return False
        if node[t].accel_ok and all((held >> s) & 1 for s in needs[t]):
            return grow(k + 1, held | (1 << t))
        return True

    return out if grow(0, 0) else None


def _options(node, held_sets, across, leaves, fed_by, sending: bool) -> tuple:
    """Per held set ``H``: ``(bytes, cost, entries)``, the options no other with the same
    entries beats.  Sending: ``H``'s times, the send of each node of ``H`` with an edge to
    the part off ``H`` (``across``: successors in the part) or to the path (``leaves``), and
    the entries feeding the part off ``H``.  Fetching: ``H``'s times, the fetch of each node
    off ``H`` with an edge into ``H`` (``across``: predecessors in the part; a successor of
    ``t`` in ``H`` makes ``t`` fetched) or into the run (``leaves``), and the entries feeding
    ``H``."""
    n = len(node)
    best: dict[tuple, list] = {}
    for held in held_sets:
        size = cost = 0.0
        need: set[int] = set()
        if sending:
            for t in range(n):
                if (held >> t) & 1:
                    size += node[t].size
                    cost += node[t].accel_time
                    if leaves[t] or any(not (held >> s) & 1 for s in across[t]):
                        cost += node[t].out_cost
                else:
                    need.update(fed_by[t])
        else:
            fetched = set()
            for t in range(n):
                if (held >> t) & 1:
                    size += node[t].size
                    cost += node[t].accel_time
                    need.update(fed_by[t])
                    fetched.update(s for s in across[t] if not (held >> s) & 1)
                elif leaves[t]:
                    fetched.add(t)
            cost += sum(node[t].out_cost for t in fetched)
        best.setdefault(tuple(sorted(need)), []).append((size, cost))
    options = []
    for need, opts in best.items():
        opts.sort()
        low = math.inf
        for size, cost in opts:
            if cost < low:
                low = cost
                options.append((size, cost, need))
    return tuple(options)
