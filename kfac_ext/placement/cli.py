"""Place a DNN operator graph on k accelerators and l CPUs.

  kfac-ext place FILE.json | --module PKG.MOD:FACTORY --input-shape N,C,H,W
                 [--save-graph FILE.json] [--cost flops|profile] [--devices K] [--cpus L] [--memory BYTES]
                 [--objective throughput|latency [--subgraphs Q]]
                 [--method dp|milp|exact|greedy|pipedream|one|expert --split FILE]
                 [--time-limit S] [--dp-memory-mb MB] [--json] [--plot PNG]

FILE.json uses the workloads' schema (maxFPGAs, maxCPUs, maxSizePerFPGA,
nodes, edges); --devices/--cpus/--memory override the file's machine.
Methods: dp = exact optimum over contiguous splits (default for throughput),
milp = any split, HiGHS (throughput), exact = the latency solver (default for
latency: exact search or the authors' IP, with a proven bound), pipedream =
chain DP over a topological order, greedy, one = everything on one device,
expert = the split in --split (an inference split also places a
training graph's backward nodes).

--objective latency is the model of Tarnawski et al. (kfac_ext.placement.latency):
each accelerator runs at most Q contiguous calls (--subgraphs, default 1), CPUs
are one pool. A baseline's split is scored there with each accelerator's nodes
cut into contiguous calls (as the authors' evaluator does).

Every solver is bounded: dp and milp stop at --time-limit (dp also at
--dp-memory-mb of lattice, and refuses at once a graph whose ideals would
exceed it) with a one-line error; for latency the limit counts from the start
of the command, reading the file included. Devices beyond the graph's
colocation groups are dropped with a note on stderr (they cannot lower the optimum).
"""

from __future__ import annotations

import json
import math
import sys
import time

METHODS = ("dp", "milp", "exact", "greedy", "pipedream", "one", "expert")


def add_arguments(parser) -> None:
    parser.add_argument("file", nargs="?", help="graph JSON (workloads' schema); or use --module")
    parser.add_argument(
        "--module",
        metavar="PKG.MOD:FACTORY",
        help="place this model instead of a file: FACTORY() returns an nn.Module, "
        "traced with torch.fx on a random input of --input-shape",
    )
    parser.add_argument("--input-shape", metavar="N,C,H,W", help="example input shape for --module")
    parser.add_argument(
        "--cost",
        choices=("flops", "profile"),
        default="flops",
        help="--module node times: FLOP counts (default) or timed on this machine",
    )
    parser.add_argument(
        "--save-graph", metavar="FILE.json", help="with --module: also write the traced graph in the workloads' schema"
    )
    parser.add_argument("--devices", type=int, help="number of accelerators k (default: the file's maxFPGAs)")
    parser.add_argument("--cpus", type=int, help="number of CPUs l (default: the file's maxCPUs)")
    parser.add_argument("--memory", type=float, help="memory cap per accelerator, bytes (default: maxSizePerFPGA)")
    parser.add_argument("--objective", choices=("throughput", "latency"), default="throughput")
    parser.add_argument(
        "--subgraphs",
        type=int,
        default=1,
        metavar="Q",
        help="latency: calls (contiguous node sets) per accelerator at most (default 1)",
    )
    parser.add_argument(
        "--search-moves",
        type=int,
        metavar="N",
        help="latency: the local search's budget, candidate splits scored (default: in proportion to "
        "--time-limit, so a run's answer does not depend on the machine's load; the time limit stays a safety net)",
    )
    parser.add_argument("--method", choices=METHODS, help="solver (default: dp for throughput, exact for latency)")
    parser.add_argument("--split", help="expert split JSON (with --method expert)")
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="time limit of the dp and milp solvers, seconds (default 60)"
    )
    parser.add_argument(
        "--dp-memory-mb", type=float, default=1024.0, help="memory limit of the dp solver's lattice, MiB (default 1024)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--verbose", action="store_true", help="show the MILP solver's log (on stderr)")
    parser.add_argument("--plot", metavar="PNG", help="draw the per-device loads into this PNG file")


def _solve(graph, args, started: float):
    from . import baselines
    from .dp import ideal_dp

    method = args.method or ("dp" if args.objective == "throughput" else "exact")
    if method == "exact" and args.objective != "latency":
        raise ValueError("--method exact is the latency solver; for throughput use dp or milp")
    if method == "milp" and args.objective == "latency":
        raise ValueError(
            "--method milp is the throughput program; for latency use --method exact "
            "(the default), which runs the authors' IP"
        )
    if method == "exact":
        from .latency.solve import default_search_moves, solve_latency

        # the limit holds for the whole command: what reading the file took, and a
        # margin for scoring and printing, come off the solver's share
        margin = min(_LATENCY_MARGIN, 0.1 * args.time_limit)
        left = _LATENCY_SHARE * args.time_limit - (time.perf_counter() - started) - margin
        # the search's budget follows the limit the user gave, not the time left after start-up
        moves = getattr(args, "search_moves", None)
        if moves is None:
            moves = default_search_moves(graph, args.time_limit)
        return solve_latency(
            graph,
            time_limit=max(left, 0.01),
            subgraphs=args.subgraphs,
            verbose=getattr(args, "verbose", False),
            search_moves=moves,
        )
    if method == "milp":
        from . import milp  # lazy: pulls in highspy

        return milp.solve_milp(graph, time_limit=args.time_limit, verbose=getattr(args, "verbose", False))
    if method == "expert":
        if not args.split:
            raise ValueError("--method expert needs --split FILE")
        solution = baselines.expert(graph, args.split)
    elif method == "dp":
        solution = ideal_dp(graph, time_limit=args.time_limit, max_memory_bytes=args.dp_memory_mb * 2**20)
    else:
        solution = {"one": baselines.one_device, "greedy": baselines.greedy, "pipedream": baselines.pipedream}[method](
            graph
        )
    if args.objective == "latency":
        from .latency import score_placement

        solution = score_placement(graph, solution.placement, method, solution.solve_seconds)
    return solution


# share of --time-limit the latency solver is given, and seconds kept back for the
# output, so that the command's wall time (counted from the process's start) stays
# under the limit
_LATENCY_SHARE = 0.93
_LATENCY_MARGIN = 1.0


def _table(graph, solution) -> str:
    from .objective import device_breakdown

    if solution.objective == "latency":
        return _latency_table(graph, solution)
    rows = []
    for kind, devices in (("accel", solution.placement.accelerators), ("cpu", solution.placement.cpus)):
        for d, nodes in enumerate(devices):
            b = device_breakdown(graph, nodes, on_cpu=(kind == "cpu"))
            rows.append((f"{kind}{d}", b))
    head = f"{'device':<8}{'nodes':>7}{'compute':>12}{'transfer':>12}{'load':>12}{'memory (B)':>14}"
    lines = [head, "-" * len(head)]
    for name, b in rows:
        lines.append(
            f"{name:<8}{b['nodes']:>7}{b['compute']:>12.4f}{b['transfer']:>12.4f}{b['load']:>12.4f}{b['memory']:>14.4g}"
        )
    loads = [(b["load"], name) for name, b in rows]
    bottleneck = max(loads)[1] if loads else "-"
    lines.append("")
    what = "max load" if solution.objective == "throughput" else "latency"
    if solution.optimal:
        flag = "optimal"
    elif solution.lower_bound > 0:
        flag = f"lower bound {solution.lower_bound:.4f}"
    else:
        flag = "heuristic"
    lines.append(
        f"{solution.method}: {what} {solution.value:.4f} ({flag}), bottleneck {bottleneck}, "
        f"{solution.solve_seconds:.3f} s"
    )
    if solution.stats.get("memory_ok") is False:
        lines.append(f"warning: {solution.stats.get('memory_violation')}")
    return "\n".join(lines)


def _latency_table(graph, solution) -> str:
    """One row per call of the paper's model, then the CPU pool."""
    head = f"{'call':<10}{'nodes':>7}{'start':>12}{'in':>10}{'compute':>12}{'out':>10}{'finish':>12}"
    lines = [head, "-" * len(head)]
    seen: dict[int, int] = {}
    for row in solution.stats.get("calls", []):
        a = row["accelerator"]
        seen[a] = seen.get(a, -1) + 1
        lines.append(
            f"{f'accel{a}.{seen[a]}':<10}{len(row['nodes']):>7}{row['start']:>12.4f}"
            f"{row['transfer_in']:>10.4f}{row['compute']:>12.4f}{row['transfer_out']:>10.4f}"
            f"{row['finish']:>12.4f}"
        )
    cpu_nodes = sum(len(c) for c in solution.placement.cpus)
    lines.append(f"{'cpu pool':<10}{cpu_nodes:>7}")
    lines.append("")
    if solution.optimal:
        flag = "optimal"
    elif solution.lower_bound > 0:
        flag = f"lower bound {solution.lower_bound:.4f}, gap {solution.stats.get('gap', 0.0):.2%}"
    else:
        flag = "no bound"
    lines.append(f"{solution.method}: latency {solution.value:.4f} ({flag}), {solution.solve_seconds:.3f} s")
    if solution.stats.get("status"):
        lines.append(f"({solution.stats['status']})")
    if solution.stats.get("memory_ok") is False:
        lines.append(f"warning: {solution.stats.get('memory_violation')}")
    return "\n".join(lines)


def _seconds_since_start() -> float:
    """Wall seconds since this process started, when it was started as ``kfac-ext`` or
    ``python -m kfac_ext`` (Python's start-up and imports take about 1 s on a loaded
    machine); 0 when called from another program (a test, a notebook: its age is not
    this command's) or where Linux's /proc cannot be read."""
    import os

    program = sys.argv[0] if sys.argv else ""
    if not (os.path.basename(program) == "kfac-ext" or program.endswith(os.path.join("kfac_ext", "__main__.py"))):
        return 0.0
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _check_limits(args) -> None:
    for flag, value in (("--time-limit", args.time_limit), ("--dp-memory-mb", args.dp_memory_mb)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a positive number, got {value}")
    subgraphs = getattr(args, "subgraphs", 1)
    if subgraphs < 1:
        raise ValueError(f"--subgraphs must be >= 1, got {subgraphs}")
    if subgraphs != 1 and getattr(args, "objective", "throughput") != "latency":
        raise ValueError("--subgraphs goes with --objective latency")
    moves = getattr(args, "search_moves", None)
    if moves is not None:
        if moves < 0:
            raise ValueError(f"--search-moves must be >= 0, got {moves}")
        if getattr(args, "objective", "throughput") != "latency":
            raise ValueError("--search-moves goes with --objective latency")


def _check_writable(flag: str, path: str) -> None:
    """Fail before solving (or tracing) if an output file cannot be written: the file
    is opened for appending for real (``os.access`` says yes to root everywhere, and
    knows nothing of read-only mounts), and removed again if this made it."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise ValueError(f"{flag}: cannot write {path}")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise ValueError(f"{flag}: cannot write {path} ({e.strerror or e})") from None
    if not existed:
        os.unlink(path)


def cap_devices(graph):
    """The graph with at most one device of each kind per colocation group:
    every group sits on one device, so more devices cannot lower the optimum,
    and a huge --devices would only blow up the solvers. Returns (graph, note)."""
    groups = len(graph.colocation_groups())
    k, l = min(graph.num_accelerators, groups), min(graph.num_cpus, groups)
    if (k, l) == (graph.num_accelerators, graph.num_cpus):
        return graph, None
    note = (
        f"the graph has {groups} colocation groups, so at most {groups} devices of a kind can "
        f"hold work; solving with {k} accelerators and {l} CPUs "
        f"(asked: {graph.num_accelerators} and {graph.num_cpus})"
    )
    return graph.with_resources(k, l), note


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _load_graph(args, Graph):
    """The graph from FILE.json, or traced from --module (saved by --save-graph)."""
    if (args.file is None) == (args.module is None):
        raise ValueError("give a graph FILE.json or --module PKG.MOD:FACTORY (one of them)")
    if args.file is not None:
        for flag in ("input_shape", "save_graph"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} goes with --module, not a graph file")
        return Graph.from_json(args.file, validate=False)
    from .module_source import build_model, example_input, parse_shape, trace_graph

    if args.input_shape is None:
        raise ValueError("--module needs --input-shape (e.g. 8,3,32,32)")
    shape = parse_shape(args.input_shape)
    if args.save_graph is not None:
        _check_writable("--save-graph", args.save_graph)
    model = build_model(args.module)
    graph = trace_graph(
        model,
        example_input(shape),
        cost=args.cost,
        num_accelerators=2 if args.devices is None else max(args.devices, 0),
        num_cpus=0 if args.cpus is None else max(args.cpus, 0),
        memory_cap=args.memory,
    )
    if args.save_graph is not None:
        try:
            graph.save(args.save_graph)
        except OSError as e:  # e.g. the disk filled up while tracing
            raise ValueError(f"--save-graph: cannot write {args.save_graph} ({e})") from None
    return graph


def run(args) -> int:
    from .graph import Graph, GraphError
    from .objective import PlacementError

    started = time.perf_counter() - _seconds_since_start()  # the limit counts start-up too
    try:
        _check_limits(args)
        if args.plot:
            _check_writable("--plot", args.plot)
        graph = _load_graph(args, Graph).with_resources(args.devices, args.cpus, args.memory)
        if args.objective == "latency" and graph.num_cpus == 0:
            # the paper's CPUs are one pool whatever maxCPUs says (the authors ignore it)
            graph = graph.with_resources(num_cpus=1)
        graph.validate()
        graph, note = cap_devices(graph)
        if note:
            print(f"kfac-ext place: note: {note}", file=sys.stderr)
        solution = _solve(graph, args, started)
        if args.plot:
            from .plot import plot_loads

            plot_loads(graph, solution, args.plot)
    except (GraphError, PlacementError, ValueError, OSError) as e:
        print(f"kfac-ext place: {one_line(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("kfac-ext place: out of memory; use --method greedy or a smaller graph", file=sys.stderr)
        return 1
    if args.json:
        out = solution.to_json()
        out["stats"] = {k: v for k, v in out["stats"].items() if k != "passes"} | {
            "passes": len(solution.stats.get("passes", []))
        }
        print(json.dumps(out, default=_jsonable))
    else:
        print(_table(graph, solution))
    return 0


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return str(x)
