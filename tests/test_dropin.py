"""Drop-in for kfac-pytorch (0.4): its whole constructor signature is accepted.

The enums here are foreign classes with kfac-pytorch's names and members (as
kfac-pytorch's own ``kfac.enums`` would be): kfac_ext reads any enum by member
name. ``kfac_ext.enums`` is tested in test_dropin_layout.py, the scheduler in
test_dropin_scheduler.py, kfac-pytorch's example programs in test_dropin_examples.py.
"""

import enum
import logging
import warnings

import pytest
import torch
from torch import nn

import kfac_ext
from kfac_ext import arguments
from kfac_ext.distributed import GradWorkerLayout, WorkPlan


class ComputeMethod(enum.Enum):
    EIGEN = 1
    INVERSE = 2


class AssignmentStrategy(enum.Enum):
    COMPUTE = 1
    MEMORY = 2


class DistributedStrategy(enum.Enum):
    COMM_OPT = 1
    MEM_OPT = 2
    HYBRID_OPT = 3


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3))


# Every keyword of kfac-pytorch's KFACPreconditioner.__init__, with non-default values.
KFAC_PYTORCH_CALL = dict(
    factor_update_steps=2,
    inv_update_steps=4,
    damping=0.003,
    factor_decay=0.9,
    kl_clip=0.002,
    lr=0.05,
    accumulation_steps=1,
    allreduce_bucket_cap_mb=0,
    assignment_strategy=AssignmentStrategy.MEMORY,
    colocate_factors=False,
    compute_method=ComputeMethod.INVERSE,
    compute_eigenvalue_outer_product=False,
    grad_worker_fraction=DistributedStrategy.HYBRID_OPT,
    symmetry_aware=True,
    grad_scaler=None,
    factor_dtype=torch.float64,
    inv_dtype=torch.float64,
    skip_layers=["nothing-matches"],
    update_factors_in_hook=False,
    defaults={"note": "kept"},
    loglevel=logging.INFO,
)


def test_every_kfac_pytorch_argument_is_accepted_and_honoured(caplog):
    with caplog.at_level(logging.INFO, logger="kfac_ext.preconditioner"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            p = kfac_ext.KFACPreconditioner(_model(), **KFAC_PYTORCH_CALL)
    assert p.compute_method == "inverse"
    assert p.assignment_strategy == "memory"
    assert p.grad_worker_fraction == 0.5
    assert p.allreduce_bucket_cap_mb == 0.0
    assert p.colocate_factors is False and p.update_factors_in_hook is False
    assert p.factor_dtype is torch.float64 and p.inv_dtype is torch.float64
    assert all(l.A.dtype is torch.float64 for l in p.layers)
    assert p.defaults == {"note": "kept"}
    assert p.factor_update_steps(0) == 2 and p.inv_update_steps(0) == 4
    assert p.damping(0) == 0.003 and p.factor_decay(0) == 0.9 and p.kl_clip(0) == 0.002
    assert [l.name for l in p.layers] == ["0", "2"]
    # loglevel: the registered layers are logged at that level
    registered = [r for r in caplog.records if "registered" in r.getMessage()]
    assert len(registered) == 2 and all(r.levelno == logging.INFO for r in registered)


def test_kfac_pytorch_language_model_call_with_loglevel_runs_a_step():
    """The call of kfac-pytorch's language-model example, with loglevel=logging.INFO."""
    model = _model()
    p = kfac_ext.KFACPreconditioner(
        model,
        factor_update_steps=1,
        inv_update_steps=1,
        damping=0.003,
        factor_decay=0.95,
        kl_clip=0.001,
        lr=0.1,
        accumulation_steps=1,
        allreduce_bucket_cap_mb=25,
        colocate_factors=True,
        compute_method=ComputeMethod.EIGEN,
        grad_worker_fraction=DistributedStrategy.COMM_OPT,
        grad_scaler=None,
        skip_layers=[],
        loglevel=logging.INFO,
    )
    model(torch.randn(4, 10)).pow(2).mean().backward()
    before = model[0].weight.grad.clone()
    p.step()
    assert not torch.equal(before, model[0].weight.grad)


def test_default_loglevel_is_debug(caplog):
    with caplog.at_level(logging.INFO, logger="kfac_ext.preconditioner"):
        kfac_ext.KFACPreconditioner(_model())
    assert not [r for r in caplog.records if "registered" in r.getMessage()]


@pytest.mark.parametrize(
    "value, expected",
    [(ComputeMethod.EIGEN, "eigen"), (ComputeMethod.INVERSE, "inverse"), ("EIGEN", "eigen"), ("inverse", "inverse")],
)
def test_compute_method_by_enum_or_string(value, expected):
    assert kfac_ext.KFACPreconditioner(_model(), compute_method=value).compute_method == expected


@pytest.mark.parametrize(
    "value, world_size, expected",
    [
        (DistributedStrategy.COMM_OPT, 8, 1.0),
        (DistributedStrategy.HYBRID_OPT, 8, 0.5),
        (DistributedStrategy.MEM_OPT, 8, 0.125),
        ("mem_opt", 4, 0.25),
        (0.25, 8, 0.25),
        (1, 8, 1.0),
    ],
)
def test_grad_worker_fraction_from_kfac_pytorch_strategies(value, world_size, expected):
    assert arguments.grad_worker_fraction(value, world_size) == expected


def test_mem_opt_in_one_process_is_one_grad_worker():
    p = kfac_ext.KFACPreconditioner(_model(), grad_worker_fraction=DistributedStrategy.MEM_OPT)
    assert p.grad_worker_fraction == 1.0


@pytest.mark.parametrize(
    "value, expected",
    [(AssignmentStrategy.COMPUTE, "compute"), (AssignmentStrategy.MEMORY, "memory"), ("Memory", "memory")],
)
def test_assignment_strategy_by_enum_or_string(value, expected):
    assert arguments.assignment_strategy(value) == expected


def test_assignment_strategy_reaches_the_distributed_comm(monkeypatch):
    seen = {}

    def fake_auto_comm(fraction, **options):
        seen.update(options, fraction=fraction)
        from kfac_ext.comm import LocalComm

        return LocalComm()

    monkeypatch.setattr(kfac_ext.preconditioner, "_auto_comm", fake_auto_comm)
    kfac_ext.KFACPreconditioner(
        _model(), assignment_strategy=AssignmentStrategy.MEMORY, allreduce_bucket_cap_mb=0, colocate_factors=False
    )
    assert seen == {
        "assignment_cost": "memory",
        "allreduce_bucket_cap_mb": 0.0,
        "colocate_factors": False,
        "fraction": 1.0,
    }


def test_memory_assignment_balances_n_squared_not_n_cubed():
    """Six layers on two grad-worker blocks: balancing ~n³ (compute) and ~n²
    (memory) gives different plans, each balanced in its own measure."""
    layout = GradWorkerLayout(2, 0, 0.5, create_groups=False)
    sizes = [(n, 1) for n in (100, 80, 70, 60, 50, 40)]
    compute = WorkPlan(sizes, layout, method="lpt", cost="compute")
    memory = WorkPlan(sizes, layout, method="lpt", cost="memory")

    def blocks(plan):
        return sorted(sorted(i for i, w in enumerate(plan.layers) if w.block == b) for b in range(2))

    assert blocks(compute) == [[0, 4], [1, 2, 3, 5]]  # 100³+50³ vs 80³+70³+60³+40³
    assert blocks(memory) == [[0, 3, 5], [1, 2, 4]]  # 100²+60²+40² vs 80²+70²+50²
    # costs are in the unit of the strategy: bytes of (Q, d) for memory
    assert sum(memory.rank_cost) == pytest.approx(4.0 * sum(n * n + n for p in sizes for n in p))


def test_grad_scaler_may_be_a_callable_returning_the_scale():
    """kfac-pytorch takes a callable returning the current scale as grad_scaler:
    gradients scaled by s with scaler=lambda: s give s times the unscaled result."""
    results = []
    for scale in (1.0, 8.0):
        model = _model()
        p = kfac_ext.KFACPreconditioner(model, grad_scaler=lambda: scale, kl_clip=None, inv_dtype=torch.float64)
        (model(torch.randn(4, 10, generator=torch.Generator().manual_seed(0))).pow(2).mean() * scale).backward()
        p.step()
        results.append(model[0].weight.grad / scale)
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("flag", ["symmetry_aware", "compute_eigenvalue_outer_product", "update_factors_in_hook"])
def test_flags_that_do_not_change_the_result(flag):
    """Either value gives the same preconditioned gradients in one process."""
    grads = []
    for value in (True, False):
        model = _model()
        p = kfac_ext.KFACPreconditioner(model, **{flag: value})
        model(torch.randn(4, 10, generator=torch.Generator().manual_seed(0))).pow(2).mean().backward()
        p.step()
        grads.append(model[0].weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
