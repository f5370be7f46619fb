"""Latency placement in the model of Tarnawski et al. (2020), as the authors' code defines it.

One file per idea: ``model.py`` (the model: the Split encoding and the one
evaluator), ``starts.py`` (fast feasible splits), ``path_bound.py`` and
``chain_bound.py`` (lower bounds without a solver), ``search.py`` (local search), ``exact.py`` (branch and
bound), ``ip.py`` (the authors' IP on HiGHS) and ``solve.py``
(``solve_latency``: what runs when).
"""

from .model import Split, check_split, evaluate, latency_of, split_from_placement

__all__ = ["Split", "check_split", "evaluate", "latency_of", "score_placement", "solve_latency", "split_from_placement"]


def __getattr__(name: str) -> object:  # the solvers pull in highspy: loaded when asked for
    # Static imports, one per name, so the import graph sees what this loads.
    if name == "solve_latency":
        from .solve import solve_latency

        return solve_latency
    if name == "score_placement":
        from .solve import score_placement

        return score_placement
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
