"""Where Inception-v3's latency gap sits: the graph cut at module 6's join (node 165, a cut
vertex: every other node is its ancestor or its descendant) into a *prefix* (nodes up to
165) and a *tail* (after it), each solved with a given number of accelerators.

* prefix: the induced graph; its latency is 165's finish.
* tail: 165 as a source released at ``T0`` (a CPU-only node of that CPU time, the tensor's
  fetch cost kept), the rest as in the file.

For each side it prints the local search's answer (``search.improve`` with a fixed move
budget, so the figures do not depend on load) and the path and chain bounds, per number
of accelerators k.  A split of the whole graph with m accelerators in the prefix leaves at
most 12 - m to the tail, so the best the search offers is min over m of prefix(m) + tail
delta(12 - m); the whole graph's chain bound charges neither side for accelerators.

    python benchmarks/latency_inception_tail.py ANSWER.json
    (ANSWER.json: `kfac-ext place ...inceptionv3_inference.json --objective latency --json`)
"""

import argparse
import dataclasses
import json
import math
import pathlib

from kfac_ext.placement.graph import Graph
from kfac_ext.placement.latency.chain_bound import chain_bound
from kfac_ext.placement.latency.model import Split, evaluate
from kfac_ext.placement.latency.path_bound import path_bound
from kfac_ext.placement.latency.search import Budget, improve

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILE = ROOT / "workloads" / "latency-inputs" / "LayerGraphs" / "inceptionv3_inference.json"
CUT = 165
MOVES = 30_000


def halves(g: Graph, k: int, t0: float) -> tuple[Graph, Graph]:
    order = g.topological_order()
    at = order.index(CUT)
    pre, tail = order[: at + 1], order[at + 1 :]
    ps, ts = set(pre), set(tail)
    prefix = Graph([g.node(v) for v in pre], [(s, d) for s, d in g.edges if d in ps], k, 1, g.memory_cap)
    source = dataclasses.replace(g.node(CUT), accel_ok=False, cpu_time=t0, accel_time=0.0, size=0.0)
    tail_g = Graph([source] + [g.node(v) for v in tail], [(s, d) for s, d in g.edges if d in ts], k, 1, g.memory_cap)
    return prefix, tail_g


def restrict(h: Graph, calls, cpu) -> Split:
    """A split of the whole graph restricted to ``h``; calls beyond h's k (the biggest
    by accelerator time kept) go to the CPU pool."""
    keep = set(h.ids)
    mine = [tuple(v for v in nodes if v in keep) for _, nodes in calls]
    mine = sorted((c for c in mine if c), key=lambda c: -sum(h.node(v).accel_time for v in c))
    kept = mine[: h.num_accelerators]
    placed = {v for c in kept for v in c}
    return Split.of(list(enumerate(kept)), [v for v in h.ids if v not in placed])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("answer", help="the solver's --json answer for Inception-v3")
    args = ap.parse_args()
    g = Graph.from_json(FILE)
    out = json.load(open(args.answer))
    calls = [(row["accelerator"], row["nodes"]) for row in out["stats"]["calls"]]
    cpu = [v for c in out["cpus"] for v in c["nodes"]]
    whole = Split.of(calls, cpu)
    timing = evaluate(g, whole)
    t0 = timing.finish[CUT]
    pre_calls = sum(1 for _, nodes in calls if max(nodes) <= CUT)
    print(f"answer {timing.latency:.4f}: node {CUT} finishes at {t0:.4f}; {pre_calls} calls before it, ")
    print(f"{len(calls) - pre_calls} after it, of k = {g.num_accelerators}")
    wide = None  # the tail's answer with all 12 accelerators free: a second start for fewer
    for k in (12, 3, 4, 5, 6, 7, 8, 9):
        prefix, tail = halves(g, k, t0)
        starts = [restrict(tail, calls, cpu)] + ([restrict(tail, wide.calls, wide.cpu)] if wide else [])
        value, split = min(
            (tuple(reversed(improve(tail, s, math.inf, Budget(MOVES)))) for s in starts), key=lambda x: x[0]
        )
        if wide is None:
            wide = split
        pv = improve(prefix, restrict(prefix, calls, cpu), math.inf, Budget(MOVES))[1]
        print(
            f"k={k:2d}  tail: search {value:.2f} (+{value - t0:.2f}, {len(split.calls)} calls), chain bound "
            f"{chain_bound(tail, rounds=3):.2f}, path bound {path_bound(tail):.2f} | prefix: search {pv:.2f}, "
            f"chain bound {chain_bound(prefix, rounds=3):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
