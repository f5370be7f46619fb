"""Optimal device placement of DNN operator graphs (Tarnawski et al., NeurIPS 2020).

A separate engine beside the K-FAC code: nothing here imports ``kfac_ext``'s
K-FAC modules, and they import nothing from here (K-FAC's eigendecomposition
assignment, a makespan problem on identical workers, lives in
``kfac_ext.assignment``). This package exports the graph model, the throughput
objective and the latency objective, all cheap to load. The solvers and tools
that pull in HiGHS or torch live in their own modules; import them from there:
``kfac_ext.placement.dp`` (``ideal_dp``), ``.milp`` (``solve_milp``),
``.baselines``, ``.fx_graph`` (``from_module``), ``.pipeline`` (``run_locally``),
``.latency`` (``solve_latency``, the paper's latency model).
"""

from .graph import Graph, GraphError, Node
from .latency import latency_of
from .objective import (
    Placement,
    PlacementError,
    Solution,
    check_placement,
    device_breakdown,
    device_load,
    throughput_loads,
)

__all__ = [
    "Graph",
    "GraphError",
    "Node",
    "Placement",
    "PlacementError",
    "Solution",
    "check_placement",
    "device_breakdown",
    "device_load",
    "latency_of",
    "throughput_loads",
]
