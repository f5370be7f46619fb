"""The chain bound: a lower bound on the least latency by a DP over the runs of one path on
one unit, charging everything a run forces into its call (:func:`path_chain_bound`), over
candidate paths and rounds that carry each node's least finish (:func:`chain_bound`).
It starts from the path bound's per-node tables (:mod:`.path_bound`); the timing rule
is the model's (:mod:`.model`), relaxed as each docstring says.  The DP of one path:
:func:`_setup` (what it reads, its tables), then per path position :func:`_cpu_step` and
:func:`_calls_from` (a call from there, and :func:`_stretch_after_call`), then
:func:`_record_finishes` and :func:`_trace_runs`.  Tested against brute
force on small graphs, with mutation checks (tests/placement/test_latency_chain_bound.py).
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

from ..graph import Graph
from .path_bound import cpu_only, path_tables
from .side_parts import side_parts

__all__ = ["chain_bound", "candidate_paths", "path_chain_bound"]


def chain_bound(
    graph: Graph,
    subgraphs: int = 1,
    paths=None,
    deadline: float = math.inf,
    rounds: int = 3,
    found: dict | None = None,
    shape: list | None = None,
) -> float:
    """The best of :func:`path_chain_bound` over ``paths`` (default :func:`candidate_paths`),
    each run with the path bound's per-node tables; the paths not finished by ``deadline``
    (``time.perf_counter()``) are left out, which keeps it a bound.

    Then ``rounds - 1`` more rounds: each path's DP gave a lower bound on the finish of each of
    its nodes, valid in every split (:func:`_finish_floors` carries them to every node), and
    the DPs run again with them: a call that fetches a tensor starts no sooner than it can be
    ready (on Inception-v3, a call that starts inside a module and fetches the branches the
    CPU pool ran); each round's finishes feed the next.

    ``found`` (a dict) carries those finishes between calls: it receives them, and a call
    that finds it filled by an earlier one (on the same graph and paths) takes it for the
    rounds already run, so all its ``rounds`` use ready floors (``solve_latency`` runs one
    round before the local search and the others after it).

    ``shape`` (a list) receives ``(path, runs)`` of the last round's best path: its least
    chain's runs (:func:`path_chain_bound`'s ``runs``), a shape for a split."""
    if paths is None:
        paths = candidate_paths(graph)
    _, cpu, acc = path_tables(graph, subgraphs=subgraphs)
    best = 0.0
    if found is None:
        found = {}
    if not found:
        rounds -= 1
        for p in paths:
            if time.perf_counter() > deadline:
                return best
            best = max(best, path_chain_bound(graph, p, subgraphs, (cpu, acc), deadline=deadline, finishes=found))
    for _ in range(rounds):
        ready = _finish_floors(graph, found)
        top = -math.inf
        for p in paths:
            if time.perf_counter() > deadline:
                return best
            runs: list = []
            value = path_chain_bound(
                graph, p, subgraphs, (cpu, acc), deadline=deadline, ready=ready, finishes=found, runs=runs
            )
            best = max(best, value)
            if shape is not None and value > top:
                top = value
                shape[:] = [(p, runs)]
    return best


def _finish_floors(graph: Graph, found: dict) -> dict[int, float]:
    """Per node, a lower bound on the moment its output is ready (its finish) in every split,
    from ``found`` (path node -> [its finish, its finish when on a call], each a lower bound
    in every split): a CPU node finishes after its inputs and its CPU time; a call holding
    ``v`` ends no sooner than, per input ``u``, the end of ``u``'s call (``u`` in it) or
    ``u``'s finish, its fetch and ``v``'s accelerator time (``u`` outside it)."""
    oncpu_only = cpu_only(graph)
    any_: dict[int, float] = {}
    call: dict[int, float] = {}
    for v in graph.topological_order():
        n = graph.node(v)
        preds = graph.predecessors(v)
        on_cpu = n.cpu_time + max((any_[u] for u in preds), default=0.0)
        on_call = math.inf
        if v not in oncpu_only:
            on_call = max(
                (min(call[u], any_[u] + graph.node(u).out_cost + n.accel_time) for u in preds), default=n.accel_time
            )
        lb = found.get(v)
        if lb is not None:
            on_cpu = max(on_cpu, lb[0])
            on_call = max(on_call, lb[1])
        call[v] = on_call
        any_[v] = min(on_cpu, on_call)
    return any_


def candidate_paths(graph: Graph) -> list[list[int]]:
    """Source-to-sink paths on which :func:`path_chain_bound` is tried: the longest by
    accelerator time, by CPU time, by bytes, by output cost, and by a mix of them."""
    if not graph.nodes:
        return []
    cap = graph.memory_cap
    acc_total = sum(n.accel_time for n in graph.nodes) or 1.0
    cost_total = sum(n.out_cost for n in graph.nodes) or 1.0
    size_total = sum(n.size for n in graph.nodes) or 1.0
    weights = [
        lambda n: n.accel_time,
        lambda n: n.cpu_time,
        lambda n: n.size,
        lambda n: n.out_cost,
        lambda n: n.accel_time / acc_total + n.out_cost / cost_total + n.size / size_total,
    ]
    if math.isfinite(cap) and cap > 0:
        weights.append(lambda n: n.accel_time + n.size / cap * acc_total / max(1, len(graph)))
    out, seen = [], set()
    for w in weights:
        p = _longest_path(graph, w)
        if tuple(p) not in seen:
            seen.add(tuple(p))
            out.append(p)
    return out


def _longest_path(graph: Graph, weight) -> list[int]:
    order = graph.topological_order()
    best: dict[int, float] = {}
    back: dict[int, int | None] = {}
    for v in order:
        preds = graph.predecessors(v)
        u = max(preds, key=lambda u: best[u], default=None)
        best[v] = weight(graph.node(v)) + (best[u] if u is not None else 0.0)
        back[v] = u
    v = max(order, key=lambda v: best[v])
    path = []
    while v is not None:
        path.append(v)
        v = back[v]
    path.reverse()
    while graph.successors(path[-1]):  # run on to a sink, so the last node sends nothing off the path
        path.append(graph.successors(path[-1])[0])
    return path


def path_chain_bound(
    graph: Graph,
    path: list[int],
    subgraphs: int = 1,
    tables=None,
    runs: list | None = None,
    deadline: float = math.inf,
    finishes: dict | None = None,
    ready: dict | None = None,
) -> float:
    """A lower bound on the least latency from one path ``p_0 -> ... -> p_L-1`` (each an input
    of the next), restating the model's timing rule (:mod:`.model`) for the units on it.

    In any split, the path's nodes fall into runs of consecutive nodes on one unit (a call,
    or a CPU node): a call holding ``p_i`` and ``p_l`` holds every ``p_j`` between, as no
    path may leave it and come back, so each call is one run and the runs of calls are
    distinct calls (at most ``k * subgraphs`` of them).  A call whose run is ``p_i .. p_j``
    holds every node on a path between two of its nodes (contiguity) and, with one call per
    accelerator, the whole colour class of each; closing ``{p_i, p_j}`` under both rules
    gives the *forced* set: their bytes fit the cap
    and their accelerator times are all paid, and no path node outside the run is among
    them (it would be in the call, so in the run).  It starts after ``p_i-1`` has finished (an
    input from outside), fetches ``p_i-1``'s output, and sends ``p_j``'s (its edge to
    ``p_j+1`` leaves the call): finish >= finish(p_i-1) + out_cost(p_i-1) + accel(forced)
    + out_cost(p_j).  A CPU node ``p_j`` finishes >= finish(p_j-1) + cpu_time(p_j).  The
    latency is at least the last node's finish; the DP over runs and calls used takes the
    least such chain, so it is below every split's latency.  Unlike :func:`path_bound` it
    charges the bytes and times of every node a run forces in, not only the path's own.

    Tensors that go round the run are charged too, through *bypasses*: a route from a path
    node ``p_a`` to a later ``p_b`` whose inner nodes are off the path, each with one input
    and one output but for weights and dropped statistics (:func:`_route_next`; a direct edge
    is a bypass with none).  A call with run ``p_i .. p_j``
    sends one output on every bypass from ``a`` in ``i .. j-1`` to ``b > j`` (the route
    leaves the call at ``p_a`` or an inner node), and fetches one on every bypass from
    ``a < i-1`` to ``b`` in ``i .. j`` (it enters from ``p_a`` or an inner node); on one from
    ``p_i-1`` it pays the inner nodes it holds (the LP of :func:`_routes_cost`).  Bypasses
    from different ``a`` share no node, so per ``a`` the call pays at least ``min(out_cost(p_a),
    sum over its bypasses of their inner nodes' least out_cost)``, and these add up.

    A node off the path and off its bypasses that feeds the forced set from outside it is
    on the call (its accelerator time paid, its bytes held) or fetched (its out_cost paid);
    the least of these over the bytes left under the cap, with fractions allowed (a
    knapsack's LP, :func:`_inputs_cost`), is charged.  Such a node is no bypass's node and
    no ``p_i-1``, so nothing is paid twice.  An option bigger than the bytes left is never
    taken, not even in part.  Held, such an input needs its own inputs on the call, held or
    fetched up its branch (:class:`_Upstream`; the LP of :func:`_routes_cost`).

    A node of the forced set off the path and its bypasses with an edge to ``p_j+1`` or to a
    node after it sends its output out of the call (that node is not on the call: the call
    holds ``p_j`` but not ``p_j+1``); its out_cost is charged.  These are no bypass's nodes and
    not ``p_j``, so no send is paid twice.

    A join waits for the branches a call leaves off.  When the path goes on from the call's
    run ``p_i .. p_j`` on the CPU pool, ``p_j+1 .. p_b``, a bypass from a node of the run into
    ``p_b`` is sent at the call's end by ``p_a`` or by the last inner node the call holds, and
    the rest of its inner nodes run after that, each on the CPU pool or on some other call
    (:func:`_route_waits`: their least time, the route's ``r[h]`` with ``h`` inner nodes
    held); ``p_b`` starts no sooner.  So ``p_b`` finishes no sooner than the call's start +
    the call's fixed part + the LP above with ``r[h]`` added to that route's option ``h``
    (the LP's minimum over every choice, so the choice the split makes is covered) + the
    CPU time of ``p_b``, and of each CPU node after it up to the last such join.  The call and
    that CPU stretch are one transition of the DP (a CPU node right after a call is reached
    only through it), ending at the last route's join; a call may start before it (then the
    route is one it fetches).  A bypass from ``p_j`` itself costs nothing sent at ``p_j``.

    ``tables`` = ``(cpu, acc)`` of :func:`path_bound` adds that bound's per-node floors:
    a CPU node ``p_j`` finishes no sooner than ``cpu[p_j]``, and a call holding ``p_j`` has
    run it no sooner than ``acc[p_j]``, then still sends ``p_j``'s output.

    ``ready`` (node -> a lower bound on its finish in every split, :func:`_finish_floors`)
    adds a wait at the call's start: per bypass it fetches it fetches ``p_a``'s output or an
    inner node's (its option in the LP), and starts no sooner than that is ready.  With ``T``
    the latest ready floor of its choices, the call ends no sooner than ``max(start of the
    chain, T)`` + the fixed part + the LP over the options ready by ``T``; :func:`_start_waits`
    takes the least of this over a grid of ``T``.  ``finishes``, a dict, receives per path
    node ``[least finish, least finish on a call]``: the least of the chains that end a run
    at it and of the calls that end at it or after (a call holding it ends there), lower
    bounds in every split, merged with what it holds (the larger kept).

    ``runs``, a list, receives the least chain's runs ``(i, j, on_call)`` (positions on the
    path): a shape for a split, which :mod:`.starts` fills in."""
    L = len(path)
    if L == 0:
        return 0.0
    ctx = _setup(graph, path, subgraphs, tables, ready)
    for i in range(L):
        if i % 16 == 0 and time.perf_counter() > deadline:
            return 0.0  # out of time: no bound from this path
        _cpu_step(ctx, i)
        before = ctx.F[i - 1] if i > 0 else ctx.prev0
        if ctx.kq == 0 or min(before) == math.inf:
            continue
        _calls_from(ctx, i, before)
    if finishes is not None:
        _record_finishes(ctx, finishes)
    value = min(ctx.F[L - 1])
    if runs is not None and value < math.inf:
        _trace_runs(ctx, value, runs)
    return value


def _setup(graph: Graph, path: list[int], subgraphs: int, tables, ready: dict | None) -> SimpleNamespace:
    """What :func:`path_chain_bound`'s DP reads about the graph and the path, and its
    tables (``F``, ``Fp``, ``back``, ``backp``, ``call_end``, ``join_waits``), empty."""
    L = len(path)
    kq = graph.num_accelerators * subgraphs
    cap = graph.memory_cap * (1 + 1e-12)
    order = graph.topological_order()
    index = {v: i for i, v in enumerate(order)}
    anc = [0] * len(order)
    for v in order:
        m = 0
        for u in graph.predecessors(v):
            m |= anc[index[u]] | (1 << index[u])
        anc[index[v]] = m
    desc = [0] * len(order)
    for v in reversed(order):
        m = 0
        for w in graph.successors(v):
            m |= desc[index[w]] | (1 << index[w])
        desc[index[v]] = m
    node = [graph.node(v) for v in order]
    members: list[list[int]] = [[i] for i in range(len(order))]  # what placing i on a call forces in
    if subgraphs == 1:
        for cls in graph.colour_classes().values():
            ms = [index[v] for v in cls]
            for i in ms:
                members[i] = ms
    inf = math.inf
    colour = {v: c for c, cls in graph.colour_classes().items() for v in cls} if subgraphs == 1 else {}
    sealed: set[int] = set()  # inner nodes whose tensor cannot cross: a colour mate reads it
    ends = _bypasses(graph, path, colour, sealed)
    sealed = {index[x] for x in sealed}
    on_path = {index[v] for v in path}
    on_route = {index[x] for routes in ends for _, _, inner in routes for x in inner}
    # leaves_until[x]: x (off the path and its bypasses) sends out of any call whose run ends
    # before this path position: a successor of x is p_b or after it for some b > j
    latest = [-1] * len(order)  # the last path position among a node's ancestors (or itself)
    at_path = {index[v]: b for b, v in enumerate(path)}
    for x in range(len(order)):
        best_b = at_path.get(x, -1)
        for u in graph.predecessors(order[x]):
            best_b = max(best_b, latest[index[u]])
        latest[x] = best_b
    leaves_until = [
        -1 if x in on_path or x in on_route else max((latest[index[w]] for w in graph.successors(order[x])), default=-1)
        for x in range(len(order))
    ]
    trees = _Upstream(graph, order, index, at_path, on_route)
    parts = side_parts(graph, path, order, index, on_route)
    feeding_inputs = [  # inputs off the path and off every bypass (charged there)
        [index[u] for u in graph.predecessors(v) if index[u] not in on_path and index[u] not in on_route] for v in order
    ]
    path_mask = 0
    before_mask = []  # before_mask[i]: the bits of p_0 .. p_i-1
    for v in path:
        before_mask.append(path_mask)
        path_mask |= 1 << index[v]
    starts: list[list[tuple[int, float, tuple]]] = [[] for _ in path]  # starts[a]: (b, m, inner)
    for b, routes in enumerate(ends):
        for a, m, inner in routes:
            starts[a].append((b, m, tuple(index[x] for x in inner)))
    cost_at = [graph.node(v).out_cost for v in path]
    path_index = [index[v] for v in path]
    ready_at = [ready.get(v, 0.0) for v in order] if ready else None
    call_end = [inf] * L  # call_end[j]: least end of a call whose run ends at p_j
    # F[j][u]: least finish of p_j's unit when p_j ends its run and u calls are used so far;
    # Fp[j][u] the same with p_j on the CPU pool and no route from an earlier call still to
    # join the path after p_j.  A CPU stretch after a call is one transition of the call, which
    # charges the joins' waits (see :func:`_route_waits`); only Fp feeds a CPU node.
    F = [[inf] * (kq + 1) for _ in range(L)]
    Fp = [[inf] * (kq + 1) for _ in range(L)]
    # back[j][u] (for F) and backp[j][u] (for Fp): ("clean",) = see backp; ("cpu",) = p_j on
    # the CPU pool after p_j-1 in Fp; ("call", i) = a call runs p_i .. p_j; ("stretch", i, e) =
    # a call runs p_i .. p_e, then p_e+1 .. p_j on the CPU pool
    back: list[list] = [[None] * (kq + 1) for _ in range(L)]
    backp: list[list] = [[None] * (kq + 1) for _ in range(L)]
    prev0 = [0.0] + [inf] * kq  # "before p_0": nothing finished, no call used
    join_waits: dict[tuple, list[float]] = {}
    cpu_at = [graph.node(v).cpu_time for v in path]
    cpu_floor = [tables[0][v] if tables else 0.0 for v in path]
    return SimpleNamespace(
        kq=kq,
        cap=cap,
        order=order,
        index=index,
        anc=anc,
        desc=desc,
        node=node,
        members=members,
        inf=inf,
        colour=colour,
        sealed=sealed,
        ends=ends,
        on_path=on_path,
        on_route=on_route,
        latest=latest,
        at_path=at_path,
        leaves_until=leaves_until,
        trees=trees,
        parts=parts,
        feeding_inputs=feeding_inputs,
        path_mask=path_mask,
        before_mask=before_mask,
        starts=starts,
        cost_at=cost_at,
        path_index=path_index,
        ready_at=ready_at,
        call_end=call_end,
        F=F,
        Fp=Fp,
        back=back,
        backp=backp,
        prev0=prev0,
        join_waits=join_waits,
        cpu_at=cpu_at,
        cpu_floor=cpu_floor,
        path=path,
        graph=graph,
        tables=tables,
        L=L,
    )


def _cpu_step(ctx: SimpleNamespace, i: int) -> None:
    """The DP's step that puts ``p_i`` alone on the CPU pool after ``p_i-1`` there (after a
    call, the call's stretch has pushed it)."""
    (kq, F, Fp, back, backp, prev0, cpu_at, cpu_floor) = (
        ctx.kq,
        ctx.F,
        ctx.Fp,
        ctx.back,
        ctx.backp,
        ctx.prev0,
        ctx.cpu_at,
        ctx.cpu_floor,
    )
    before_cpu = Fp[i - 1] if i > 0 else prev0
    row = Fp[i]
    for u in range(kq + 1):
        t = max(before_cpu[u] + cpu_at[i], cpu_floor[i])
        if t < row[u]:
            row[u] = t
            backp[i][u] = ("cpu",)
    for u in range(kq + 1):
        if row[u] < F[i][u]:
            F[i][u] = row[u]
            back[i][u] = ("clean",)


def _calls_from(ctx: SimpleNamespace, i: int, before: list[float]) -> None:
    """The DP's steps that start a call at ``p_i`` (``before``: the least finishes of
    ``p_i-1`` per number of calls used): a call runs ``p_i .. p_j`` for each ``j`` it can
    reach, then perhaps a CPU stretch up to the last join it feeds."""
    (
        kq,
        cap,
        index,
        anc,
        desc,
        node,
        members,
        sealed,
        ends,
        leaves_until,
        trees,
        feeding_inputs,
        path_mask,
        before_mask,
        starts,
        cost_at,
        path_index,
        ready_at,
        call_end,
        F,
        back,
        join_waits,
        path,
        tables,
        L,
    ) = (
        ctx.kq,
        ctx.cap,
        ctx.index,
        ctx.anc,
        ctx.desc,
        ctx.node,
        ctx.members,
        ctx.sealed,
        ctx.ends,
        ctx.leaves_until,
        ctx.trees,
        ctx.feeding_inputs,
        ctx.path_mask,
        ctx.before_mask,
        ctx.starts,
        ctx.cost_at,
        ctx.path_index,
        ctx.ready_at,
        ctx.call_end,
        ctx.F,
        ctx.back,
        ctx.join_waits,
        ctx.path,
        ctx.tables,
        ctx.L,
    )
    sent = [p for p in ctx.parts if p.send and p.entries[0] >= i]  # side parts it may send past
    fetched = [p for p in ctx.parts if p.fetch and (not p.entries or p.entries[-1] < i) and p.first_exit >= i]
    pi = index[path[i]]
    t_in = node[index[path[i - 1]]].out_cost if i > 0 else 0.0
    inside = run_mask = below = above = 0  # below/above: descendants/ancestors of the call's nodes
    hanging: set[int] = set()  # inputs off the path and its bypasses feeding the forced set
    mem = compute = 0.0
    fetch = {}  # a < i-1 -> [finite sum, direct edges] of its bypasses ending in i..j
    fetch_total = 0.0
    sending = 0.0  # out_cost of the forced nodes off the path that send past p_j
    stops = [0.0] * (L + 1)  # stops[b]: their out_cost that stops counting at j = b
    send = {}  # a in i..j-1 -> [finite sum, direct edges] of its bypasses ending after j
    fetch_routes: list[tuple[int, tuple]] = []  # (a, inner nodes) of the bypasses in fetch
    send_routes: list[tuple[int, int, tuple]] = []  # (a, b, inner nodes), b > j once filtered
    for j in range(i, L):
        sending -= stops[j]
        for a, m, inner in ends[j]:
            if a < i - 1:
                fetch_routes.append((a, tuple(index[x] for x in inner)))
                old = _group(cost_at[a], fetch.get(a))
                acc_m = fetch.setdefault(a, [0.0, 0])
                _add(acc_m, m, 1)
                fetch_total += _group(cost_at[a], acc_m) - old
            elif a == i - 1 and inner:  # p_i-1's output is fetched already; inner nodes held are paid
                fetch_routes.append((a, tuple(index[x] for x in inner)))
            elif a in send:
                _add(send[a], m, -1)
        if j > i:  # p_j-1 joins the run: its bypasses that end after j
            a = j - 1
            group = [0.0, 0]
            for b, m, inner in starts[a]:
                if b > j:
                    _add(group, m, 1)
                    send_routes.append((a, b, inner))
            if group[1] or group[0] > 0:
                send[a] = group
        pj = index[path[j]]
        new = ((1 << pi) | (1 << pj)) & ~inside
        ok = True
        while new:  # close under colour classes and contiguity until nothing is added
            while new:
                low = new & -new
                x = low.bit_length() - 1
                new ^= low
                if (inside >> x) & 1:
                    continue
                for y in members[x]:
                    if (inside >> y) & 1:
                        continue
                    inside |= 1 << y
                    below |= desc[y]
                    above |= anc[y]
                    if not node[y].accel_ok:
                        ok = False
                    mem += node[y].size
                    compute += node[y].accel_time
                    hanging.update(feeding_inputs[y])
                    if leaves_until[y] > j:
                        sending += node[y].out_cost
                        stops[leaves_until[y]] += node[y].out_cost
            new = below & above & ~inside  # on a path between two of the call's nodes
        if not ok or mem > cap:
            break
        run_mask |= 1 << pj
        stray = inside & path_mask & ~run_mask  # a path node off the run pulled in by a colour class
        if stray:
            if stray & before_mask[i]:
                break  # it lies before p_i: no longer run repairs that
            continue  # it lies after p_j: the run must reach it
        hanging = {x for x in hanging if not (inside >> x) & 1}
        room = cap - mem  # cap with the evaluator's tolerance: an option that fits there is kept
        extra = fetch_total + sum(_group(cost_at[a], g) for a, g in send.items())
        if hanging:
            extra += _inputs_cost([node[x] for x in hanging], room)
        waits = []  # (b, fixed part of the wait for the route into the CPU node p_b)
        starts_at = []  # (T, c): the call starts no sooner than T and pays c, or later
        own = [(j, b, inner) for b, _, inner in starts[j] if inner and j < L - 1]  # sent at p_j
        if fetch_routes or send_routes or hanging or own:
            send_routes = [r for r in send_routes if r[1] > j]
            groups, delays, entries = _routes_groups(
                node,
                cost_at,
                fetch_routes,
                send_routes + own,
                hanging,
                inside,
                room,
                trees,
                i,
                sealed,
                j,
                ready_at,
                path_index,
            )
            hulls = [_hull(options, room) for options in groups]
            extra = max(extra, _hulls_cost(hulls, room))
            if entries:
                starts_at = _start_waits(groups, hulls, entries, room, min(before), extra)
            for g, a, b, inner, held in delays:  # p_b on the CPU pool waits for this route
                r = join_waits.get(inner)
                if r is None:
                    r = join_waits[inner] = _route_waits(node, cost_at[a], inner)
                waited = [(s, c + r[h]) for (s, c), h in zip(groups[g], held)]
                waits.append((b, _hulls_cost(hulls[:g] + [_hull(waited, room)] + hulls[g + 1 :], room)))
        out_parts = [p for p in sent if p.entries[-1] <= j < p.first_exit and not inside & p.mask]
        in_parts = [p for p in fetched if p.last_exit <= j and not inside & p.mask]
        if out_parts or in_parts:  # :mod:`.side_parts`: another LP with them, the larger kept
            held = 0
            for p in in_parts:
                held |= p.mask
            groups, _, _ = _routes_groups(
                node,
                cost_at,
                fetch_routes,
                [r for r in send_routes if r[1] > j] + own,
                {x for x in hanging if not (held >> x) & 1},  # charged in their part instead
                inside,
                room,
                trees,
                i,
                sealed,
                j,
                parts=(in_parts, out_parts),
            )
            extra = max(extra, _choices_cost(groups, room))
        fixed = t_in + compute + node[pj].out_cost * (j < L - 1) + max(sending, 0.0)
        w = fixed + extra
        floor = tables[1][path[j]] + node[pj].out_cost * (j < L - 1) if tables else 0.0
        ended = [max(before[u] + w, floor) for u in range(kq)]
        if starts_at:
            for u in range(kq):
                ended[u] = max(ended[u], fixed + min(max(before[u], t) + c for t, c in starts_at))
        row = F[j]
        for u in range(kq):
            t = ended[u]
            if t < row[u + 1]:
                row[u + 1] = t
                back[j][u + 1] = ("call", i)
        call_end[j] = min(call_end[j], min(ended))
        _stretch_after_call(ctx, i, j, before, ended, fixed, extra, waits, floor)


def _stretch_after_call(
    ctx: SimpleNamespace,
    i: int,
    j: int,
    before: list[float],
    ended: list[float],
    fixed: float,
    extra: float,
    waits: list,
    floor: float,
) -> None:
    """The DP's steps after a call that runs ``p_i .. p_j`` and ends at ``ended`` (per number
    of calls used before it): ``p_j+1 .. p_b`` on the CPU pool, each after its input, and
    ``p_b`` after every route from the call into it (``waits``: ``(b, LP with that route's
    wait)``; ``fixed`` and ``extra`` the call's parts); up to the last route's end, past
    which no wait is pending (the stretch ends there, clean, or a call runs next)."""
    (L, kq, F, Fp, back, backp, cpu_at, cpu_floor) = (
        ctx.L,
        ctx.kq,
        ctx.F,
        ctx.Fp,
        ctx.back,
        ctx.backp,
        ctx.cpu_at,
        ctx.cpu_floor,
    )
    last = max([b for b, _ in waits], default=j + 1)
    wait_at = [0.0] * (last + 1)
    for b, lp in waits:
        wait_at[b] = max(wait_at[b], fixed + max(extra, lp))
    cur = list(ended)
    floor_b = floor
    for b in range(j + 1, min(last, L - 1) + 1):
        floor_b = max(floor_b + cpu_at[b], cpu_floor[b])
        row, rows = (Fp[b], backp) if b == last else (F[b], back)
        for u in range(kq):
            cur[u] = max(cur[u], before[u] + wait_at[b]) + cpu_at[b]
            t = max(cur[u], floor_b)
            if t < row[u + 1]:
                row[u + 1] = t
                rows[b][u + 1] = ("stretch", i, j)


def _record_finishes(ctx: SimpleNamespace, finishes: dict) -> None:
    """Per path node, ``[least finish, least finish on a call]`` into ``finishes``: the least
    of the chains that end a run at it and of the calls that end at it or after, lower
    bounds in every split (the larger of it and what is there kept)."""
    (inf, call_end, F, path, L) = (ctx.inf, ctx.call_end, ctx.F, ctx.path, ctx.L)
    on_call = inf
    for j in range(L - 1, -1, -1):
        on_call = min(on_call, call_end[j])  # a call holding p_j ends at some p_j' >= p_j
        old = finishes.setdefault(path[j], [0.0, 0.0])
        old[0] = max(old[0], min(min(F[j]), on_call))  # F[j]: p_j ends its run; else a call's
        old[1] = max(old[1], on_call)


def _trace_runs(ctx: SimpleNamespace, value: float, runs: list) -> None:
    """The least chain (of latency ``value``), as runs ``(i, j, on_call)`` appended to
    ``runs``, which is then reversed: path order."""
    (F, back, backp, L) = (ctx.F, ctx.back, ctx.backp, ctx.L)
    j, u, table = L - 1, F[L - 1].index(value), back
    while j >= 0:
        step = table[j][u]
        if step[0] == "clean":
            table = backp
            continue
        table = back
        if step[0] == "cpu":
            runs.append((j, j, False))
            table, j = backp, j - 1
            continue
        i, e = step[1], (step[2] if step[0] == "stretch" else j)
        runs.extend((x, x, False) for x in range(j, e, -1))
        runs.append((i, e, True))
        u, j = u - 1, i - 1
    runs.reverse()


def _bypasses(
    graph: Graph, path: list[int], colour: dict | None = None, sealed: set | None = None
) -> list[list[tuple[int, float, tuple]]]:
    """``ends[b]``: the bypasses ``(a, m, inner)`` into ``p_b`` (see :func:`path_chain_bound`):
    ``inner`` the route's inner nodes from ``p_a``'s side, ``m`` the least out_cost of those
    whose tensor can cross, inf for a direct edge ``p_a -> p_b`` with ``b > a + 1``.

    ``colour`` (node -> colour class; give it only with one call per accelerator) seals an
    inner node ``x`` whose next node on the route is a colour mate: both sit on one device, so
    no call holds ``x`` without its reader and ``x``'s tensor never leaves or enters a call
    there (an operator graph's normalisation writes its output through a zero-cost node of its
    own class).  The sealed nodes are added to ``sealed``; a route with no crossing left but
    ``p_a``'s gets ``m`` = inf."""
    at = {v: i for i, v in enumerate(path)}
    colour = colour or {}
    ends: list[list[tuple[int, float, tuple]]] = [[] for _ in path]
    for a, v in enumerate(path):
        for x in graph.successors(v):
            if x in at:
                if at[x] > a + 1:
                    ends[at[x]].append((a, math.inf, ()))
                continue
            m = math.inf
            inner = []
            prev = v
            crossable = False
            while x not in at and (nxt := _route_next(graph, prev, x, at)) is not None:
                if x in colour and colour.get(nxt) == colour[x]:
                    if sealed is not None:
                        sealed.add(x)
                else:
                    m = min(m, graph.node(x).out_cost)
                inner.append(x)
                crossable = True
                prev, x = x, nxt
            if x in at and crossable and at[x] > a:
                ends[at[x]].append((a, m, tuple(inner)))
    return ends


def _route_next(graph: Graph, prev: int, x: int, at) -> int | None:
    """The node after ``x`` on a bypass that reached ``x`` from ``prev``, or None where none
    goes on.  ``x`` passes one tensor on: ``prev`` is its one input but for sources off the
    path that feed ``x`` alone (weights: :func:`_weights_cost`; their bytes left out), and it has
    one consumer but for sinks off the path (a normalisation's saved statistics).  So the
    bypass's inner nodes are a chain that shares no node with another bypass, and a call
    holding one of them and ``p_b`` holds those between (contiguity)."""
    for u in graph.predecessors(x):
        if u != prev and (u in at or graph.predecessors(u) or len(graph.successors(u)) != 1):
            return None
    outs = [w for w in graph.successors(x) if w in at or graph.successors(w)]
    return outs[0] if len(outs) == 1 else None


def _add(group: list, m: float, sign: int) -> None:
    if m == math.inf:
        group[1] += sign
    else:
        group[0] += sign * m


def _group(cost: float, group) -> float:
    """What a call pays at least for one ``a``'s bypasses: ``p_a``'s output, or one inner
    node's on each route."""
    if group is None:
        return 0.0
    return cost if group[1] > 0 else min(cost, max(group[0], 0.0))


def _inputs_cost(inputs, room: float) -> float:
    """The least of ``sum over inputs of (x accel_time + (1 - x) out_cost)`` with each ``x``
    in [0, 1] and ``sum x size <= room``: a lower bound on what a call pays for inputs that
    it either holds or fetches, when ``room`` bytes are left under its cap."""
    total = 0.0
    gains = []
    for n in inputs:
        total += n.out_cost
        gain = n.out_cost - n.accel_time
        if gain > 0 and n.size <= room:  # an input bigger than the room is fetched whole
            gains.append((gain, n.size))
    room = max(room, 0.0)
    gains.sort(key=lambda g: -g[0] / g[1] if g[1] > 0 else -math.inf)
    for gain, size in gains:
        if size <= room:
            total -= gain
            room -= size
        else:
            total -= gain * room / size
            break
    return total


def _routes_cost(
    node, cost_at, fetch_routes, send_routes, inputs, inside: int, room: float, trees=None, i: int = 0, sealed=()
) -> float:
    """:func:`_routes_groups`'s least total (the LP of :func:`_choices_cost`)."""
    groups, _, _ = _routes_groups(node, cost_at, fetch_routes, send_routes, inputs, inside, room, trees, i, sealed)
    return _choices_cost(groups, room)


def _routes_groups(
    node,
    cost_at,
    fetch_routes,
    send_routes,
    inputs,
    inside: int,
    room: float,
    trees=None,
    i: int = 0,
    sealed=(),
    last: int | None = None,
    ready=None,
    path_index=(),
    parts=((), ()),
):
    """A lower bound on what a call pays for its bypasses and off-path inputs, transfers and
    the time of the inner nodes it holds, with their bytes within ``room``.

    A bypass fetched enters the call after its feeder (``p_a`` or an inner node): the inner
    nodes after it are on the call (else the route would leave the call and come back).  A
    bypass sent leaves the call at ``p_a`` or an inner node, the inner nodes up to it on the
    call.  One choice per route, ``p_a``'s out_cost shared among its routes (all of them
    choosing ``p_a`` pay it once); a route with an inner node already in the forced set is
    left out (charged nothing); a ``sealed`` inner node (:func:`_bypasses`) is no crossing.  An input is held or fetched; held, it needs its own inputs
    (``trees``, :class:`_Upstream`: held or fetched in turn, ``p_a``'s output fetched and
    shared with the routes from ``a``).  Fractions allowed: the LP of this multiple-choice
    knapsack (:func:`_choices_cost`), whose groups this returns, with ``delays`` (given
    ``last``, the run's last position ``j``): per bypass sent through inner nodes, ``(group
    index, a, b, inner nodes, inner nodes held per option)`` (for :func:`_route_waits`).  A
    bypass from ``p_j`` itself costs nothing sent at ``p_j`` (the call sends ``p_j`` anyway).
    Given ``ready`` (per node, a lower bound on its finish), also ``entries``: per bypass
    fetched, ``(group index, per option the ready floor of the node it fetches)``."""
    groups = []
    delays = []
    entries = []
    fetch_count: dict[int, int] = {}
    for routes, fetched in ((fetch_routes, True), (send_routes, False)):
        live = [(r[0], r[1] if len(r) == 3 else -1, r[-1]) for r in routes if not any((inside >> x) & 1 for x in r[-1])]
        count: dict[int, int] = {}
        for a, _, _ in live:
            count[a] = count.get(a, 0) + 1
        for part in parts[not fetched]:
            for a in part.entries:
                count[a] = count.get(a, 0) + 1
        if fetched and trees is not None:
            for x in inputs:
                for a in trees.path_leaves(x):
                    if a < i - 1:
                        count[a] = count.get(a, 0) + 1
        if fetched:
            fetch_count = count
        for a, b, inner in live:
            share = 0.0 if (fetched and a == i - 1) or (not fetched and a == last) else cost_at[a] / count[a]
            times = [node[x].accel_time + _weights_cost(node, trees, x, inside) for x in inner]
            sizes = [node[x].size for x in inner]
            # a sealed x_t (its reader is a colour mate) is never the feeder or the leaver
            if fetched:  # feeder p_a: all inner nodes held; feeder x_t: those after it held
                options = [(sum(sizes), share + sum(times))]
                options += [
                    (sum(sizes[t + 1 :]), node[x].out_cost + sum(times[t + 1 :]))
                    for t, x in enumerate(inner)
                    if x not in sealed
                ]
                if ready is not None:
                    entries.append((len(groups), [ready[path_index[a]]] + [ready[x] for x in inner if x not in sealed]))
            else:  # leaver p_a: none held; leaver x_t: x_1 .. x_t held
                options = [(0.0, share)]
                options += [
                    (sum(sizes[: t + 1]), node[x].out_cost + sum(times[: t + 1]))
                    for t, x in enumerate(inner)
                    if x not in sealed
                ]
                if inner and last is not None:
                    held = [0] + [t + 1 for t, x in enumerate(inner) if x not in sealed]
                    delays.append((len(groups), a, b, inner, held))
            groups.append(options)
        for part in parts[not fetched]:  # :mod:`.side_parts`: an entry's transfer shared as a route's
            free = i - 1 if fetched else last
            shares = {a: 0.0 if a == free else cost_at[a] / count[a] for a in part.entries}
            options = part.fetch if fetched else part.send
            groups.append([(s, c + sum(shares[a] for a in need)) for s, c, need in options])
    for x in inputs:
        if trees is None:
            groups.append([(0.0, node[x].out_cost), (node[x].size, node[x].accel_time)])
        else:
            groups.append(trees.provide(x, i, {a: cost_at[a] / c for a, c in fetch_count.items()}))
    return groups, delays, entries


# grid points of :func:`_start_waits` at most (besides the first and no limit); a coarser grid
# charges a call from the grid point below the ready floor it waits for.  Inception-v3's chain
# bound: 1183.59 with 6 points, 1186.27 with 24 and with 1000, at the same CPU time (2026-12-08)
_START_GRID = 64


def _start_waits(groups, hulls, entries, room: float, earliest: float, extra: float) -> list[tuple[float, float]]:
    """``[(T, c)]``: a call whose fetched bypasses' options (``entries``, their ready floors)
    are ``groups``' starts no sooner than ``max(earliest, T)`` and pays at least ``c`` (the
    LP), for one ``T`` of the list, whatever it chooses: with ``T*`` the latest ready floor of
    its choices (or ``earliest``), between two grid points ``g_k <= T* <= g_k+1`` it starts
    after ``g_k`` and chooses among the options ready by ``g_k+1``.  The grid: ``earliest``,
    the ready floors above it (every few of them when they are many), and no limit.  Empty
    when no option waits past ``earliest``."""
    grid = sorted({r for _, readies in entries for r in readies if r > earliest})
    if not grid:
        return []
    if len(grid) > _START_GRID:  # fewer points: each interval is charged as its ends allow
        grid = grid[:: -(-len(grid) // _START_GRID)] + grid[-1:]
    out = []
    lower = earliest
    for upper in grid:
        restricted = list(hulls)
        for g, readies in entries:
            if max(readies) <= upper:
                continue  # every option ready by then: the group as it is
            ready_by = [o for o, r in zip(groups[g], readies) if r <= upper]
            if not ready_by:
                break  # no choice is ready by upper
            restricted[g] = _hull(ready_by, room)
        else:
            out.append((lower, max(extra, _hulls_cost(restricted, room))))
        lower = upper
    out.append((lower, extra))
    return out


def _route_waits(node, cost: float, inner: tuple) -> list[float]:
    """``r[h]``: the least time from the moment a call sends the ``h``-th node of a bypass's
    ``inner`` nodes (``h`` = 0: its path node ``p_a``, whose out_cost is ``cost``) to the
    moment the last inner node's output is ready for a CPU node, the ``inner[h:]`` being off
    that call: each on the CPU pool (its cpu_time after its input) or on some other call
    (fetch the input before it, run the stretch, send the last), every other rule relaxed
    (memory, accelerators, weights).  ``r[len(inner)]`` = 0."""
    m = len(inner)
    out = []
    for h in range(m + 1):
        d = [math.inf] * (m + 1)  # d[e]: inner[h:e] done, inner[e-1]'s output ready
        d[h] = 0.0
        for e in range(h, m):
            x = inner[e]
            best = d[e] + node[x].cpu_time
            run = 0.0
            for s in range(e, h - 1, -1):  # a call holding inner[s .. e]
                run += node[inner[s]].accel_time
                fetched = cost if s == 0 else node[inner[s - 1]].out_cost
                best = min(best, d[s] + fetched + run + node[x].out_cost)
            d[e + 1] = best
        out.append(d[m])
    return out


class _Upstream:
    """What a call pays to hold an input ``x`` from off the path (not in the forced set): x's
    time and bytes, and each input ``u`` of x provided in turn.  ``u`` on the path: ``p_i-1``
    is fetched already (charged as the call's first transfer), ``p_a`` with ``a < i - 1``
    is fetched, its out_cost shared (the caller's ``shares``) among everything that may
    fetch it; ``p_a`` in the run is on the call.  ``u`` off the path and off the bypasses
    with ``x`` its only successor: fetched (its out_cost) or held (recursively), and no
    other input's tree holds it, so nothing is charged twice; any other ``u`` is charged
    nothing.  No node of the tree is in the forced set (it would pull ``x`` in, as ``x``
    lies between it and the call).  At most ``budget`` nodes per tree."""

    _MAX_OPTIONS = 8

    def __init__(self, graph: Graph, order, index, at_path, on_route, budget: int = 16):
        self.node = [graph.node(v) for v in order]
        self.preds = [[index[u] for u in graph.predecessors(v)] for v in order]
        self.at_path = at_path
        self.climbable = [
            x not in at_path and x not in on_route and len(graph.successors(v)) == 1 for x, v in enumerate(order)
        ]
        self.private = [not graph.predecessors(v) and len(graph.successors(v)) == 1 for v in order]  # weights
        self.budget = budget
        self._trees: dict[int, tuple] = {}
        self._leaves: dict[int, list[int]] = {}
        self._cache: dict[int, list] = {}

    def tree(self, x: int) -> tuple:
        """``(x, subtrees, path positions of x's inputs on the path)``."""
        t = self._trees.get(x)
        if t is None:
            left = [self.budget]
            t = self._grow(x, left)
            self._trees[x] = t
        return t

    def _grow(self, x: int, left: list) -> tuple:
        left[0] -= 1
        subs, at = [], []
        for u in self.preds[x]:
            if u in self.at_path:
                at.append(self.at_path[u])
            elif self.climbable[u] and left[0] > 0:
                subs.append(self._grow(u, left))
        return (x, tuple(subs), tuple(at))

    def path_leaves(self, x: int) -> list[int]:
        out = self._leaves.get(x)
        if out is None:
            out = []
            stack = [self.tree(x)]
            while stack:
                _, subs, at = stack.pop()
                out.extend(at)
                stack.extend(subs)
            self._leaves[x] = out
        return out

    def provide(self, x: int, i: int, shares: dict) -> list:
        """The options ``(bytes, cost)`` of having ``x``'s output on the call: fetched, or held."""
        if any(a < i - 1 for a in self.path_leaves(x)):
            return self._provide(self.tree(x), i, shares)  # the shares vary with the run
        hit = self._cache.get(x)  # every input on the path is free: the same for every run
        if hit is None:
            hit = self._cache[x] = self._provide(self.tree(x), i, shares)
        return hit

    def _provide(self, t: tuple, i: int, shares: dict) -> list:
        x, subs, at = t
        n = self.node[x]
        held = [(n.size, n.accel_time)]
        for a in at:
            if a < i - 1:
                held = [(s, c + shares.get(a, 0.0)) for s, c in held]
        for sub in subs:
            opts = self._provide(sub, i, shares)
            held = self._pareto([(s1 + s2, c1 + c2) for s1, c1 in held for s2, c2 in opts])
        return self._pareto([(0.0, n.out_cost)] + held)

    def _pareto(self, options: list) -> list:
        """The options no other beats in both bytes and cost; over the cap on their number,
        neighbours are merged into one that takes the smaller bytes and the smaller cost of
        the two (a relaxation: it lowers the least total, which keeps it a bound)."""
        options.sort()
        front = []
        for s, c in options:
            if not front or c < front[-1][1]:
                front.append((s, c))
        while len(front) > self._MAX_OPTIONS:
            front = [
                (front[k][0], front[k + 1][1]) if k + 1 < len(front) else front[k] for k in range(0, len(front), 2)
            ]
        return front


def _weights_cost(node, trees, x: int, inside: int) -> float:
    """What a call holding a bypass's inner node ``x`` pays at least for the sources that feed
    ``x`` alone (its weights): each held (its time) or fetched (its out_cost), but for those
    already in the forced set (paid there)."""
    if trees is None:
        return 0.0
    return sum(
        min(node[w].accel_time, node[w].out_cost)
        for w in trees.preds[x]
        if trees.private[w] and w not in trees.at_path and not (inside >> w) & 1
    )


def _choices_cost(groups, room: float) -> float:
    """The LP of a multiple-choice knapsack: one option ``(size, cost)`` per group, fractions
    allowed, sizes within ``room``; least total cost.  Each group starts at its smallest
    option; the segments of the groups' lower convex hulls that trade bytes for cost are
    taken steepest first (the LP optimum of this problem)."""
    return _hulls_cost([_hull(options, room) for options in groups], room)


def _hull(options, room: float) -> tuple[float, float, list]:
    """One group of :func:`_choices_cost`: its smallest option's cost and bytes, and the
    segments ``(slope, bytes, gain)`` of its lower convex hull."""
    options = sorted(options)
    options = [o for o in options if o[0] <= room] or options[:1]  # one bigger than the room is never chosen
    hull = [options[0]]
    for o in options[1:]:
        if o[1] >= hull[-1][1]:
            continue  # more bytes and no cheaper: never chosen
        while len(hull) >= 2:  # keep the hull convex
            (s1, c1), (s2, c2) = hull[-2], hull[-1]
            if (c2 - c1) * (o[0] - s1) >= (o[1] - c1) * (s2 - s1):
                hull.pop()
            else:
                break
        hull.append(o)
    segments = []
    for (s1, c1), (s2, c2) in zip(hull, hull[1:]):
        size, gain = s2 - s1, c2 - c1
        segments.append((gain / size if size > 0 else -math.inf, size, gain))
    return hull[0][1], hull[0][0], segments


def _hulls_cost(hulls, room: float) -> float:
    """:func:`_choices_cost` from the groups' :func:`_hull`."""
    total = 0.0
    segments = []
    for cost, size, segs in hulls:
        total += cost
        room -= size
        segments += segs
    room = max(room, 0.0)
    segments.sort()
    for _, size, gain in segments:  # gain < 0: cost saved for ``size`` more bytes
        if size <= room:
            total += gain
            room -= size
        else:
            total += gain * room / size
            break
    return total
