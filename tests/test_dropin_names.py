"""Every name a kfac-pytorch program can reach through ``kfac.enums``,
``kfac.scheduler`` and ``kfac.preconditioner`` (the classes those modules expose,
the preconditioner's public attributes, the parameters of its methods and of the
scheduler) is there in kfac_ext, or refused with an AttributeError saying it is a
kfac-pytorch internal. Skips without kfac-pytorch (see ``_kfac_pytorch``)."""

import inspect

import pytest
import torch
from _kfac_pytorch import kfac_pytorch
from torch import nn

import kfac_ext


@pytest.fixture
def kfac():
    return kfac_pytorch()


def _there_or_refused(obj, name):
    try:
        getattr(obj, name)
    except AttributeError as exc:
        assert "internal of kfac-pytorch" in str(exc), f"{name}: {exc}"


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


@pytest.mark.parametrize("module", ["enums", "scheduler", "preconditioner"])
def test_the_classes_each_module_exposes(kfac, module):
    theirs, ours = getattr(kfac, module), getattr(kfac_ext, module)
    classes = [
        n
        for n, obj in vars(theirs).items()
        if not n.startswith("_") and inspect.isclass(obj) and obj.__module__.startswith("kfac.")
    ]
    assert classes
    for name in classes:
        _there_or_refused(ours, name)


def test_enum_members(kfac):
    for name in ("AllreduceMethod", "AssignmentStrategy", "ComputeMethod", "DistributedStrategy"):
        assert {m.name: m.value for m in getattr(kfac.enums, name)} == {
            m.name: m.value for m in getattr(kfac_ext.enums, name)
        }


def test_the_preconditioners_attributes_and_method_parameters(kfac):
    theirs = kfac.preconditioner.KFACPreconditioner(_model())
    ours = kfac_ext.preconditioner.KFACPreconditioner(_model())
    for name in dir(theirs):
        if not name.startswith("_"):
            _there_or_refused(ours, name)
    for name in ("step", "state_dict", "load_state_dict", "memory_usage", "reset_batch"):
        want = set(inspect.signature(getattr(theirs, name)).parameters) - {"state_dict"}
        assert want <= set(inspect.signature(getattr(ours, name)).parameters), name
    assert ours.memory_usage().keys() >= {"total"}
    assert (ours.distributed_strategy.name, ours.allreduce_method.name) == (
        theirs.distributed_strategy.name,
        theirs.allreduce_method.name,
    )


def test_the_schedulers_parameters(kfac):
    theirs = inspect.signature(kfac.scheduler.LambdaParamScheduler)
    ours = inspect.signature(kfac_ext.scheduler.LambdaParamScheduler)
    assert list(theirs.parameters) == list(ours.parameters)
    assert list(inspect.signature(kfac.scheduler.LambdaParamScheduler.step).parameters) == list(
        inspect.signature(kfac_ext.scheduler.LambdaParamScheduler.step).parameters
    )
