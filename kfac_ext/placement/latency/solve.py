"""``solve_latency``: what runs in what order, and with which share of the time.

1. Starts (:mod:`.starts`): every node on the CPU pool, then interval DPs over
   topological orders that keep colour classes together, for at most
   ``_START_SHARE`` of the time.  The best is the incumbent.
2. The path bound and the chain bound's first round (:mod:`.bound`), the better of the
   two.  If it meets the incumbent, done.
3. Local search (:mod:`.search`) from the incumbent, for a work budget of
   ``search_moves`` candidate splits (by default :func:`default_search_moves`: in
   proportion to ``time_limit`` and inverse to the graph's size, so the same command
   gives the same answer whatever the load, as long as the process gets the CPU time
   the budget needs), with ``_SEARCH_SHARE`` of the time as a safety net
   (``stats["search_stopped_by"]`` says ``"time"`` when the net cut it: then the
   answer may differ between runs);
   done if it meets the bound.  Then the chain bound's later rounds (a call's
   wait for what it fetches), until ``_ROUNDS_SHARE`` of the time: after the search,
   which needs its share more (on Inception-v3 the rounds first left it 1258 for 1206).
   Then the search again, from the incumbent with the last call of the bound's least
   chain grafted on (:mod:`.graft`), the same budget, ``_GRAFT_SHARE`` of the time as
   its net (``stats["graft_value"]``, ``graft_moves``, ``graft_stopped_by``); the better
   split is kept (Inception-v3: 1206.1 -> 1199.7).
4. An exact method on what is left of the time (but ``_EXACT_SHARE`` of it, so
   that scoring and output keep a margin under the limit):
   branch and bound (:mod:`.exact`) when there is one call per accelerator
   and the graph has at most ``_BNB_MAX_NODES`` nodes; else the authors' IP on
   HiGHS (:mod:`.ip`), warm-started from the incumbent, when its program has at
   most ``_IP_MAX_ROWS`` rows and the time left suits its size.  Either proves optimality or leaves a bound.
5. The answer is scored by the model's evaluator; the bound is the best of the
   bounds proven (each valid alone); ``optimal`` means the gap is closed.
"""

from __future__ import annotations

import math
import time

from ..graph import Graph
from ..objective import Placement, Solution, memory_violations
from .chain_bound import chain_bound
from .exact import branch_and_bound
from .graft import graft
from .model import Split, evaluate, split_from_placement
from .path_bound import path_bound
from .search import Budget, improve
from .starts import all_on_cpu, interval_split, orders

__all__ = ["solve_latency", "score_placement", "default_search_moves"]

_START_SHARE = 0.2
_BOUND_SHARE = 0.4  # the chain bound starts no path after this share of the time
_SEARCH_SHARE = 0.6  # the local search's safety net: it ends by this share of the time at the latest
# the search's default budget: this much work (nodes + edges per candidate scored) per second
# of the time limit.  Inception-v3's search reaches 1206.1 at 21,911 candidates (of 71,011 to
# converge): 300k/s gives it 26,124 at --time-limit 60, which took 6-7 s of a 2-core EPYC at
# load ~5 (2026-12-07); when the process gets much less CPU than that, the net stops it first.
_SEARCH_WORK_PER_SECOND = 300_000
# the chain bound's rounds with start waits (a round needs the one before), until this share
_ROUNDS_SHARE = 0.75
_ROUNDS = 3
# the search from the chain's shape (:mod:`.graft`): the same budget as the first search,
# with this share of the time as its net
_GRAFT_SHARE = 0.85
_ORDERS = 24
# HiGHS overruns its limit on big programs: on Inception-v3 (38k rows, load ~3) it took
# 35.5 s of 26.4 given (80 % of what was left after the search), the command 62.5 s of 60
_EXACT_SHARE = 0.6
_BNB_MAX_NODES = 30
_IP_MAX_ROWS = 60_000
# HiGHS checks its time limit seldom while it solves a big program's first LP: on
# BERT-L12 (62k rows) it ran 7.4 s of a 4 s limit, so a program gets at least one
# second per this many rows of its estimate
_IP_ROWS_PER_SECOND = 5_000
_REL_GAP = 1e-6


def default_search_moves(graph: Graph, time_limit: float) -> int:
    """The local search's default budget, candidate splits: ``_SEARCH_WORK_PER_SECOND``
    per second of ``time_limit`` over (nodes + edges), at least 1000.  It depends on the
    graph and the limit the user gave, never on the time measured."""
    return max(1000, int(_SEARCH_WORK_PER_SECOND * time_limit / max(1, len(graph) + len(graph.edges))))


def solve_latency(
    graph: Graph,
    *,
    time_limit: float = 60.0,
    subgraphs: int = 1,
    verbose: bool = False,
    search_moves: int | None = None,
) -> Solution:
    """Least latency in the paper's model found within ``time_limit`` seconds, with a proven
    lower bound; ``subgraphs`` calls per accelerator at most (the authors' default 1).
    ``search_moves``: the local search's budget (candidate splits; default
    :func:`default_search_moves` of ``time_limit``)."""
    if not (isinstance(time_limit, (int, float)) and math.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if isinstance(subgraphs, bool) or not isinstance(subgraphs, int) or subgraphs < 1:
        raise ValueError(f"subgraphs must be an integer >= 1, got {subgraphs!r}")
    if search_moves is None:
        search_moves = default_search_moves(graph, time_limit)
    if isinstance(search_moves, bool) or not isinstance(search_moves, int) or search_moves < 0:
        raise ValueError(f"search_moves must be an integer >= 0, got {search_moves!r}")
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    if graph.num_cpus == 0:  # the model's CPU pool exists whatever maxCPUs says
        graph = graph.with_resources(num_cpus=1)
    graph.validate()
    best = all_on_cpu(graph)
    best_value = evaluate(graph, best, subgraphs).latency
    stats: dict = {"subgraphs": subgraphs, "all_on_cpu": best_value}
    start_deadline = t0 + _START_SHARE * time_limit
    tried = 0
    for order in orders(graph, _ORDERS):
        if time.perf_counter() > start_deadline:
            break
        split = interval_split(graph, order, start_deadline)
        tried += 1
        if split is not None:
            value = evaluate(graph, split, subgraphs).latency
            if value < best_value:
                best, best_value = split, value
    stats.update(orders_tried=tried, start_value=best_value)
    stats["path_bound"] = path_bound(graph, subgraphs=subgraphs)
    finishes: dict = {}  # the first round's least finishes, which the later rounds start from
    stats["chain_bound"] = chain_bound(
        graph, subgraphs=subgraphs, deadline=t0 + _BOUND_SHARE * time_limit, rounds=1, found=finishes
    )
    bound = max(stats["path_bound"], stats["chain_bound"])
    status = "the path/chain bound meets the best start"
    if best_value - bound > _REL_GAP * best_value:
        budget = Budget(search_moves, t0 + _SEARCH_SHARE * time_limit)
        best, value = improve(graph, best, budget.deadline, budget)
        best_value = evaluate(graph, best, subgraphs).latency  # the model's own word
        stats.update(
            search_value=best_value,
            search_moves=budget.spent,
            search_budget=search_moves,
            search_stopped_by=budget.stopped_by or "converged",
        )
        status = "the path/chain bound meets the local search"
    shape: list = []  # the last round's least chain: (path, runs)
    if best_value - bound > _REL_GAP * best_value:  # the chain bound's later rounds (start waits)
        stats["chain_bound"] = max(
            stats["chain_bound"],
            chain_bound(
                graph,
                subgraphs=subgraphs,
                deadline=t0 + _ROUNDS_SHARE * time_limit,
                rounds=_ROUNDS - 1,
                found=finishes,
                shape=shape,
            ),
        )
        bound = max(bound, stats["chain_bound"])
    if best_value - bound > _REL_GAP * best_value and shape and "search_moves" in stats:
        start = graft(graph, best, *shape[0])  # the chain's last call grafted on, then searched
        if start is not None:
            budget = Budget(search_moves, t0 + _GRAFT_SHARE * time_limit)
            split, _ = improve(graph, start, budget.deadline, budget)
            value = evaluate(graph, split, subgraphs).latency
            stats.update(graft_value=value, graft_moves=budget.spent, graft_stopped_by=budget.stopped_by or "converged")
            if value < best_value:
                best, best_value = split, value
                status = "the local search from the bound's chain"
    if best_value - bound > _REL_GAP * best_value:
        left = _EXACT_SHARE * (deadline - time.perf_counter())
        best, best_value, bound, status = _exact(graph, best, best_value, bound, left, subgraphs, verbose, stats)
    stats["status"] = status
    return _solution(graph, best, bound, subgraphs, time.perf_counter() - t0, stats, "exact")


def _exact(graph: Graph, best: Split, best_value: float, bound: float, left: float, q: int, verbose: bool, stats: dict):
    if left <= 0:
        return best, best_value, bound, "no time left for an exact method"
    if q == 1 and len(graph) <= _BNB_MAX_NODES:
        r = branch_and_bound(graph, left, upper=best_value, start=best)
        stats.update(method="branch and bound", branches=r.branches, bnb_bound=r.bound)
        how = "branch and bound: " + ("finished" if r.optimal else "stopped by the time limit")
        return r.split, r.value, max(bound, r.bound), how
    machines = 1 + graph.num_accelerators * q
    rows = machines * (3 * len(graph) + 4 * len(graph.edges))
    if rows > min(_IP_MAX_ROWS, _IP_ROWS_PER_SECOND * left):
        stats["ip_rows_estimate"] = rows
        return best, best_value, bound, f"IP not run (about {rows} rows for {left:.1f} s left)"
    try:
        from .ip import solve_ip  # lazy: highspy, from the [placement] extra
    except ImportError:
        return best, best_value, bound, "IP not run (highspy, the [placement] extra, is not installed)"
    r = solve_ip(graph, best, left, subgraphs=q, lower=bound, rel_gap=_REL_GAP, verbose=verbose)
    stats.update(
        method="authors' IP (HiGHS)", ip_status=r.status, ip_bound=r.bound, ip_variables=r.variables, ip_rows=r.rows
    )
    return r.split, r.value, max(bound, r.bound), f"IP: {r.status}"


def score_placement(graph: Graph, placement: Placement, method: str, seconds: float = 0.0) -> Solution:
    """A baseline's placement scored in the paper's model: each accelerator's nodes cut
    into contiguous calls run one after another (``stats["subgraphs"]`` says how many
    were needed), over the memory cap allowed but flagged (``stats["memory_ok"]``)."""
    split, q = split_from_placement(graph, placement)
    violations = memory_violations(graph, placement)
    stats = {"subgraphs": q, "memory_ok": not violations}
    if violations:
        stats["memory_violation"] = violations[0]
    return _solution(graph, split, 0.0, q, seconds, stats, method, check_memory=False)


def _solution(
    graph: Graph,
    split: Split,
    bound: float,
    q: int,
    seconds: float,
    stats: dict,
    method: str,
    check_memory: bool = True,
) -> Solution:
    timing = evaluate(graph, split, q, check_memory)  # the reported value is always the evaluator's
    value = timing.latency
    bound = min(bound, value)
    gap = 0.0 if value <= 0 else max(0.0, (value - bound) / value)
    stats.update(gap=gap, calls=[dict(row, nodes=list(nodes)) for row, (_, nodes) in zip(timing.calls, split.calls)])
    accel = [0.0] * graph.num_accelerators
    for row in timing.calls:
        accel[row["accelerator"]] += row["finish"] - row["start"]
    cpu = [float(sum(graph.node(v).cpu_time for v in split.cpu))]
    optimal = bound > 0 and gap <= _REL_GAP + 1e-12
    return Solution(
        split.to_placement(graph.num_accelerators), "latency", method, value, optimal, bound, seconds, stats, accel, cpu
    )
