"""Drop-in for kfac-pytorch without kfac-pytorch: the module layout (``kfac_ext.enums``,
lazy submodules, ``gpt_neox`` refused, ``hyperparams``) and the names kfac-pytorch's
preconditioner has (number-like hyperparameters, ``distributed_strategy``,
``reset_batch``, its ``state_dict`` / ``load_state_dict`` keywords)."""

import importlib
import os
import subprocess
import sys

import pytest
import torch
from _tiny_classifier import tiny_model, tiny_step

import kfac_ext
from kfac_ext.enums import AllreduceMethod, AssignmentStrategy, ComputeMethod, DistributedStrategy

# ------------------------------------------------------------- layout ----


def test_enums_have_kfac_pytorchs_member_names_and_values():
    assert {m.name: m.value for m in ComputeMethod} == {"EIGEN": 1, "INVERSE": 2}
    assert {m.name: m.value for m in AssignmentStrategy} == {"COMPUTE": 1, "MEMORY": 2}
    assert {m.name: m.value for m in DistributedStrategy} == {"COMM_OPT": 1, "MEM_OPT": 2, "HYBRID_OPT": 3}
    assert {m.name: m.value for m in AllreduceMethod} == {"ALLREDUCE": 1, "ALLREDUCE_BUCKETED": 2}


def test_the_constructor_takes_kfac_ext_enums():
    p = kfac_ext.KFACPreconditioner(
        tiny_model(),
        compute_method=ComputeMethod.INVERSE,
        assignment_strategy=AssignmentStrategy.MEMORY,
        grad_worker_fraction=DistributedStrategy.HYBRID_OPT,
    )
    assert (p.compute_method, p.assignment_strategy, p.grad_worker_fraction) == ("inverse", "memory", 0.5)


def test_submodules_are_attributes_of_a_fresh_import_and_enums_need_no_torch():
    """What `import kfac_ext as kfac` must give a kfac-pytorch program, in a fresh
    interpreter (here every submodule is imported already)."""
    code = (
        "import sys, kfac_ext as kfac\n"
        "assert kfac.enums.ComputeMethod.EIGEN.value == 1\n"
        "assert 'torch' not in sys.modules, 'enums loaded torch'\n"
        "assert kfac.preconditioner.KFACPreconditioner is kfac.KFACPreconditioner\n"
        "assert kfac.scheduler.LambdaParamScheduler.__name__ == 'LambdaParamScheduler'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's kfac_ext
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, run.stderr


def test_gpt_neox_is_refused_by_name():
    with pytest.raises(ImportError, match=r"kfac\.gpt_neox.*not supported"):
        importlib.import_module("kfac_ext.gpt_neox")
    with pytest.raises(ImportError, match="GPT-NeoX"):
        kfac_ext.gpt_neox  # noqa: B018


def test_kfac_pytorch_internals_are_refused_by_name():
    internal = "has no '{}': that is an internal of kfac-pytorch"
    for owner, name in (
        (kfac_ext, "base_preconditioner"),
        (kfac_ext.preconditioner, "KAISAAssignment"),
        (kfac_ext.scheduler, "BaseKFACPreconditioner"),
        (kfac_ext.KFACPreconditioner(tiny_model()), "tdc"),
    ):
        with pytest.raises(AttributeError, match=internal.format(name)):
            getattr(owner, name)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        kfac_ext.nothing_here  # noqa: B018


def test_kfac_preconditioner_module_also_has_the_enums():
    assert kfac_ext.preconditioner.ComputeMethod is ComputeMethod
    assert kfac_ext.preconditioner.DistributedStrategy is DistributedStrategy


# ----------------------------------------- kfac-pytorch's preconditioner names ----


def test_hyperparameters_read_as_numbers_where_kfac_pytorch_gives_numbers():
    p = kfac_ext.KFACPreconditioner(tiny_model(), damping=0.003, inv_update_steps=10, lr=lambda s: 0.1)
    assert float(p.damping) == 0.003 and int(p.inv_update_steps) == 10
    assert f"{p.damping:.4f} {p.inv_update_steps}" == "0.0030 10"
    with pytest.raises(TypeError, match=r"lr is a schedule: call it with the step"):
        float(p.lr)
    assert f"{p.lr}" == repr(p.lr) == "lr=<schedule>"


@pytest.mark.parametrize(
    "fraction, strategy",
    [
        (DistributedStrategy.COMM_OPT, DistributedStrategy.COMM_OPT),
        (DistributedStrategy.HYBRID_OPT, DistributedStrategy.HYBRID_OPT),
        (DistributedStrategy.MEM_OPT, DistributedStrategy.MEM_OPT),
        (0.25, DistributedStrategy.MEM_OPT),
    ],
)
def test_distributed_strategy_and_allreduce_method(fraction, strategy):
    from kfac_ext.comm import LocalComm

    class FourRanks(LocalComm):  # only what the constructor reads
        world_size = 4

    p = kfac_ext.KFACPreconditioner(
        tiny_model(), grad_worker_fraction=fraction, comm=FourRanks(), allreduce_bucket_cap_mb=0
    )
    assert p.distributed_strategy is strategy
    assert p.allreduce_method is AllreduceMethod.ALLREDUCE
    assert kfac_ext.KFACPreconditioner(tiny_model()).allreduce_method is AllreduceMethod.ALLREDUCE_BUCKETED


def test_reset_batch_forgets_the_captured_micro_batches():
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(model, accumulation_steps=2)
    model(torch.randn(4, 6)).sum().backward()
    assert p.layers[0].a_count == 1
    p.reset_batch()
    assert p.layers[0].a_count == 0 and p.layers[0].g_count == 0


def test_kfac_pytorch_state_dict_keywords():
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(model)
    tiny_step(model, p, 0)
    state = p.state_dict(include_factors=True)
    with pytest.raises(ValueError, match=r"include_factors=False\) is not supported"):
        p.state_dict(include_factors=False)
    for compute_inverses in (True, False):
        p.load_state_dict(state, compute_inverses=compute_inverses)
    usage = p.memory_usage()
    assert usage["total"] == sum(v for k, v in usage.items() if k != "total") > 0


def test_exp_decay_factor_averaging_as_kfac_pytorchs():
    f = kfac_ext.hyperparams.exp_decay_factor_averaging(0.9)
    assert [f(s) for s in (0, 1, 2, 4, 100)] == [0.0, 0.0, 0.5, 0.75, 0.9]
    with pytest.raises(ValueError, match="step must be >= 0"):
        f(-1)
    with pytest.raises(ValueError, match="min_value must be > 0"):
        kfac_ext.hyperparams.exp_decay_factor_averaging(0)
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(model, factor_decay=f)
    tiny_step(model, p, 0)  # β = 0 at step 0: A is the first batch's factor
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    a = torch.cat([x, torch.ones(8, 1)], 1)
    torch.testing.assert_close(p.layers[0].A, a.T @ a / 8)


def test_compute_inverses_must_be_a_flag():
    p = kfac_ext.KFACPreconditioner(tiny_model())
    with pytest.raises(ValueError, match="compute_inverses must be True or False"):
        p.load_state_dict(p.state_dict(), compute_inverses="yes")
