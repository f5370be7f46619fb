"""The optimum makespan by trying every assignment: the reference for the
assignment tests (small instances only: n_workers ** len(costs) tries)."""

import itertools
import math


def brute_force_makespan(costs, n_workers):
    best = math.inf
    for owner in itertools.product(range(n_workers), repeat=len(costs)):
        loads = [0.0] * n_workers
        for c, w in zip(costs, owner):
            loads[w] += c
        best = min(best, max(loads))
    return best
