"""A rank that raises, exits or hangs mid-step: the others fail with a clear error, never hang.

The run's wall-clock bound (dist_utils' timeout) is what fails the test on a
hang; the process-group timeout here is short so that the hanging-rank case
finishes quickly.
"""

import os
import time

import pytest
import torch
from dist_utils import run_workers
from torch import nn

from kfac_ext.distributed import DistributedComm
from kfac_ext.preconditioner import KFACPreconditioner

PG_TIMEOUT_S = 6.0


def _faulty_rank(rank, world_size, fault):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    precond = KFACPreconditioner(
        model, inv_dtype=torch.float64, kl_clip=None, comm=DistributedComm(timeout=PG_TIMEOUT_S)
    )
    gen = torch.Generator().manual_seed(rank)
    for step in range(3):
        model.zero_grad()
        model(torch.randn(6, 5, generator=gen, dtype=torch.float64)).pow(2).mean().backward()
        if rank == 1 and step == 1:  # the fault hits rank 1 between backward and K-FAC step
            if fault == "raise":
                raise ValueError("injected failure on rank 1")
            if fault == "exit":
                os._exit(3)
            if fault == "hang":
                time.sleep(2 * PG_TIMEOUT_S)
                raise SystemExit("rank 1 woke up")
        precond.step()
    return "finished"


@pytest.mark.parametrize("fault", ["raise", "exit", "hang"])
def test_peer_failure_becomes_a_clear_error(fault):
    outcomes = run_workers(_faulty_rank, 2, args=(fault,), timeout=90, pg_timeout_s=PG_TIMEOUT_S, check=False)
    survivor = outcomes[0]
    assert survivor.reported and survivor.value is None, "rank 0 must not finish normally"
    assert "RuntimeError: kfac_ext: factor all-reduce failed on rank 0" in survivor.error
    if fault == "exit":
        assert outcomes[1].exitcode == 3
    else:
        assert outcomes[1].error is not None
