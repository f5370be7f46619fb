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
