"""A sparse mixed-integer program assembled row by row and solved by HiGHS (``highspy``),
with HiGHS kept off our stdout.  Shared by the throughput MILP (milp.py) and the
latency IP (latency/ip.py)."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys

import highspy
import numpy as np

__all__ = ["Program", "solver_output"]


@contextlib.contextmanager
def solver_output(verbose: bool):
    """Keep HiGHS off our stdout (``--json`` prints one object there): its banner,
    printed when a solver is created whatever the options, and its log go to
    stderr when ``verbose``, else nowhere.  HiGHS writes to file descriptor 1
    from C++, so the descriptor itself is redirected for the duration."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable descriptor 1 (embedded interpreter): nothing to protect
        yield
        return
    target = os.dup(2) if verbose else os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(target, 1)
        yield
    finally:
        _flush_c_stdout()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)


def _flush_c_stdout() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


class Program:
    """A sparse mixed-integer program assembled row by row, then handed to HiGHS."""

    def __init__(self):
        self.lower, self.upper, self.cost, self.integer = [], [], [], []
        self.row_lower, self.row_upper = [], []
        self.starts, self.index, self.value = [0], [], []

    def var(self, lo=0.0, hi=1.0, cost=0.0, integer=False) -> int:
        self.lower.append(lo)
        self.upper.append(hi)
        self.cost.append(cost)
        self.integer.append(integer)
        return len(self.lower) - 1

    def row(self, terms: dict[int, float], lo=-math.inf, hi=math.inf) -> None:
        for j, a in terms.items():
            if a != 0.0:
                self.index.append(j)
                self.value.append(a)
        self.starts.append(len(self.index))
        self.row_lower.append(lo)
        self.row_upper.append(hi)

    def solve(self, start: list[float] | None, time_limit: float, rel_gap: float, verbose: bool):
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_ = len(self.lower)
        lp.num_row_ = len(self.row_lower)
        lp.col_cost_ = np.array(self.cost, dtype=np.float64)
        lp.col_lower_ = np.array(self.lower, dtype=np.float64)
        lp.col_upper_ = np.array([min(u, inf) for u in self.upper], dtype=np.float64)
        lp.row_lower_ = np.array([max(x, -inf) for x in self.row_lower], dtype=np.float64)
        lp.row_upper_ = np.array([min(x, inf) for x in self.row_upper], dtype=np.float64)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_ = lp.num_col_
        lp.a_matrix_.num_row_ = lp.num_row_
        lp.a_matrix_.start_ = np.array(self.starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.array(self.index, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(self.value, dtype=np.float64)
        lp.integrality_ = [
            highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in self.integer
        ]
        with solver_output(verbose):
            return self._run(lp, start, time_limit, rel_gap, verbose)

    @staticmethod
    def _run(lp, start, time_limit: float, rel_gap: float, verbose: bool):
        h = highspy.Highs()
        h.setOptionValue("output_flag", bool(verbose))
        h.setOptionValue("time_limit", float(max(time_limit, 0.01)))
        h.setOptionValue("mip_rel_gap", float(rel_gap))
        h.setOptionValue("random_seed", 0)
        h.setOptionValue("threads", 1)
        h.passModel(lp)
        if start is not None:
            sol = highspy.HighsSolution()
            sol.col_value = list(start)
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        info = h.getInfo()
        status = h.getModelStatus()
        has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
        values = list(h.getSolution().col_value) if has_solution else None
        return h.modelStatusToString(status), status, values, info
