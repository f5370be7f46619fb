"""A start for the local search shaped by the chain bound: the bound's least chain
(:func:`.chain_bound.chain_bound`'s ``shape``) grafted onto a split.

Each call of the least chain runs ``p_i .. p_j`` of its path and holds the run's *forced*
set: every node on a path between two of its nodes and, with one call per accelerator,
their colour classes (closed under both).  :func:`graft` makes the forced set of each of the
chain's last ``last`` calls one call of the split: those nodes leave the calls that held
them, a call left non-contiguous is cut into its contiguous pieces, and beyond the
accelerators' count the other calls with the least accelerator time go to the CPU pool.  The
result is checked by the model's evaluator; the local search then starts from it.

Why: on Inception-v3 the search's moves and kicks stop at 1206.1, a call over modules 7 to 9
and one over 10 and 11; the bound's chain has one call from module 8's long branch to the
end (its forced set fits the cap), which no single move reaches.  Grafted onto that split
and searched with the same budget, it gives 1199.7 (2026-12-08).
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


def graft(graph: Graph, split: Split, path: list[int], runs, last: int = 1) -> Split | None:
    """``split`` with the forced sets of the last ``last`` calls of ``runs`` (``(i, j,
    on_call)`` positions on ``path``) as calls of their own (see the module's docstring);
    None when a forced set has a CPU-only node or is over the cap, or the result is no split
    of the model (calls that wait on each other in a cycle)."""
    grafts = []
    for i, j, on_call in [r for r in runs if r[2]][-last:] if last > 0 else []:
        inside = forced_set(graph, path[i], path[j])
        if inside is None or sum(graph.node(v).size for v in inside) > graph.memory_cap * (1 + 1e-12):
            return None
        grafts.append(inside)
    if not grafts:
        return None
    sets = [set(nodes) for _, nodes in split.calls]
    for inside in grafts:
        pieces = []
        for nodes in sets:
            nodes = nodes - inside
            if nodes:
                pieces += [set(piece) for piece in contiguous_pieces(graph, nodes)]
        sets = pieces
    sets.sort(key=lambda s: -sum(graph.node(v).accel_time for v in s))
    sets = (grafts + sets)[: graph.num_accelerators]  # the grafted calls first
    placed = set().union(*sets)
    out = Split.of([(a, sorted(s)) for a, s in enumerate(sets)], [v for v in graph.ids if v not in placed])
    try:
        evaluate(graph, out)
    except PlacementError:
        return None
    return out
