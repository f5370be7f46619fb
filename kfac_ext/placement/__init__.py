"""Optimal device placement of DNN operator graphs (Tarnawski et al., NeurIPS 2020).

Stands beside the K-FAC code and imports none of it. Solvers are imported
lazily by their modules (``kfac_ext.placement.dp``, ``.baselines``, ``.milp``)
so that loading the graph model stays cheap.
"""
from .graph import Graph, GraphError, Node
from .objective import (Placement, PlacementError, Solution, check_placement, device_breakdown,
                        device_load, throughput_loads)

__all__ = ["Graph", "GraphError", "Node", "Placement", "PlacementError", "Solution", "check_placement",
           "device_breakdown", "device_load", "throughput_loads"]
# Latency and K-FAC work assignment (cheap), and lazily the
# solvers/tools that pull in highspy or torch.fx/pipelining
from .latency import latency_of
from .makespan import MakespanResult, optimal_makespan_assignment

__all__ += ["latency_of", "solve_latency", "MakespanResult", "optimal_makespan_assignment", "from_module",
            "solve_milp", "run_locally"]
_LAZY = {"solve_latency": ".latency", "from_module": ".fx_graph", "solve_milp": ".milp", "run_locally": ".pipeline"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
