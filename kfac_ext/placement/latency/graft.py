"""A start for the local search shaped by the chain bound: the bound's least chain
(:func:`.chain_bound.chain_bound`'s ``shape``) grafted onto a split.

Each call of the least chain runs ``p_i .. p_j`` of its path and holds the run's *forced*
set: every node on a path between two of its nodes and, with one call per accelerator,
their colour classes (closed under both).  :func:`graft` takes the longest span of the
chain's last calls whose forced set fits the cap (from the first node of one call to the
last node of the last call) and makes that set one call of the split: its nodes leave the
calls that held them, a call left non-contiguous is cut into its contiguous pieces, and
beyond the accelerators' count the other calls with the least accelerator time go to the
CPU pool.  The result is checked by the model's evaluator; the local search then starts
from it.

Why: on Inception-v3 the search's moves and kicks stop at 1206.1, a call over modules 7 to 9
and one over 10 and 11; the bound's chain has one call from module 8's long branch to the
end (its forced set fits the cap), which no single move reaches.  Grafted onto that split
and searched with the same budget, it gives 1199.7 (2026-12-08).  With a finer grid of start
waits the chain splits that stretch into three calls (211-224, 247-255, 256-326); their
longest span that fits, 211 to the end (0.96 of the cap), gives the same 1199.7, the last
call alone nothing.
"""

from __future__ import annotations

from ..graph import Graph
from ..objective import PlacementError
from .model import Split, contiguous_pieces, evaluate

__all__ = ["graft", "forced_set"]


def forced_set(graph: Graph, first: int, last: int) -> set[int] | None:
    """The nodes a call holding ``first`` and ``last`` must hold (between them, and with one
    call per accelerator their colour classes, closed under both); None when one of them is
    CPU-only."""
    colour = graph.colour_classes()
    of = {v: c for c, members in colour.items() for v in members}
    inside = {first, last}
    while True:
        grown = set(inside)
        for v in inside:
            if v in of:
                grown.update(colour[of[v]])
        below = _reach(graph, grown, graph.successors)
        above = _reach(graph, grown, graph.predecessors)
        grown |= below & above
        if grown == inside:
            break
        inside = grown
    if any(not graph.node(v).accel_ok for v in inside):
        return None
    return inside


def _reach(graph: Graph, start, step) -> set[int]:
    seen: set[int] = set()
    stack = list(start)
    while stack:
        u = stack.pop()
        for w in step(u):
            if w not in seen:
                seen.add(w)
                stack.append(w)
    return seen


def graft(graph: Graph, split: Split, path: list[int], runs) -> Split | None:
    """``split`` with one call grafted on (see the module's docstring): the forced set of the
    longest span of the chain's last calls (``runs``: ``(i, j, on_call)`` positions on
    ``path``) that fits the cap, from the first node of one of them to the last node of the
    last; None when there is none (no call, or a CPU-only node in the last one), or the result
    is no split of the model (calls that wait on each other in a cycle)."""
    calls = [r for r in runs if r[2]]
    if not calls:
        return None
    end = path[calls[-1][1]]
    inside = None
    for i, _, _ in calls:  # the longest span first
        inside = forced_set(graph, path[i], end)
        if inside is not None and sum(graph.node(v).size for v in inside) <= graph.memory_cap * (1 + 1e-12):
            break
        inside = None
    if inside is None:
        return None
    sets = []
    for _, nodes in split.calls:
        rest = set(nodes) - inside
        if rest:
            sets += [set(piece) for piece in contiguous_pieces(graph, rest)]
    sets.sort(key=lambda s: -sum(graph.node(v).accel_time for v in s))
    sets = ([inside] + sets)[: graph.num_accelerators]  # the grafted call first
    placed = set().union(*sets)
    out = Split.of([(a, sorted(s)) for a, s in enumerate(sets)], [v for v in graph.ids if v not in placed])
    try:
        evaluate(graph, out)
    except PlacementError:
        return None
    return out
