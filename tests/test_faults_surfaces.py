"""Fault suite of the surfaces added after the first fault suites (issue 26):
layers frozen or parametrized after construction, AdaptiveDamping, AutoStep and
their checkpoints. Each case: a clear error naming the argument or cause before
any state changes, a documented warning, or a correct result (docs/faults.md).
"""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import kfac_ext

P = kfac_ext.KFACPreconditioner


def _mlp(bias_frozen=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    if bias_frozen:
        model[0].bias.requires_grad_(False)
    return model


def _train(model, p, steps=3, set_to_none=True, after_build=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 5)
        opt.zero_grad(set_to_none=set_to_none)
        model(x).pow(2).mean().backward()
        p.step()
        opt.step()


# ------------------------------------------------------------ frozen bias ----

@pytest.mark.parametrize("set_to_none", [True, False])
def test_bias_frozen_after_construction_equals_frozen_before(set_to_none):
    """Weight-only K-FAC from the step the bias is frozen: the same parameters as a
    preconditioner built with the bias frozen, and the frozen bias does not move."""
    ref = _mlp(bias_frozen=True)
    _train(ref, P(ref, kl_clip=None, damping=0.1), set_to_none=set_to_none)
    model = _mlp()
    p = P(model, kl_clip=None, damping=0.1)
    model[0].bias.requires_grad_(False)
    bias = model[0].bias.detach().clone()
    with pytest.warns(UserWarning, match="bias of layer '0' was frozen after"):
        _train(model, p, set_to_none=set_to_none)
    assert torch.equal(model[0].bias, bias)
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert p.layers[0].a_dim == 5 and not p.layers[0].has_bias


def test_bias_frozen_mid_training_keeps_the_weight_block_of_the_factor():
    model = _mlp()
    p = P(model, kl_clip=None, damping=0.1)
    _train(model, p, steps=2)
    a = p.layers[0].A.clone()
    model[0].bias.requires_grad_(False)
    with pytest.warns(UserWarning, match="weight-only K-FAC"):
        _train(model, p, steps=1)
    # the running average continued from the weight block of the old one
    assert p.layers[0].A.shape == (5, 5)
    assert p.layers[0].factor_updates == 3
    assert not torch.equal(p.layers[0].A, a[:-1, :-1])  # and was updated this step


def test_only_layer_with_frozen_bias_is_not_a_step_before_backward_error():
    model = nn.Linear(4, 2)
    p = P(model, kl_clip=None)
    model.bias.requires_grad_(False)
    model(torch.randn(3, 4)).sum().backward()
    with pytest.warns(UserWarning, match="frozen after"):
        p.step()
    assert p.layers[0].factor_updates == 1


def test_bias_unfrozen_after_construction_keeps_its_plain_gradient():
    model = _mlp(bias_frozen=True)
    p = P(model, kl_clip=None)
    model[0].bias.requires_grad_(True)
    model(torch.randn(3, 5)).sum().backward()
    plain = model[0].bias.grad.clone()
    with pytest.warns(UserWarning, match="keeps its plain gradient"):
        p.step()
    assert torch.equal(model[0].bias.grad, plain)


def test_weight_frozen_after_construction_with_stale_zero_grad_does_not_move():
    model = _mlp()
    p = P(model, kl_clip=None)
    model[0].weight.requires_grad_(False)
    w = model[0].weight.detach().clone()
    _train(model, p, set_to_none=False)
    assert torch.equal(model[0].weight, w)


def test_every_weight_frozen_after_construction_names_them():
    model = nn.Linear(4, 2)
    p = P(model)
    model.weight.requires_grad_(False)
    model(torch.randn(3, 4)).sum().backward()
    with pytest.raises(RuntimeError, match=r"weights of \[''\] were frozen or parametrized"):
        p.step()
    assert p.steps == 0


# ---------------------------------------------------- parametrized weights ----

@pytest.mark.parametrize("wrap", [parametrizations.weight_norm, parametrizations.spectral_norm,
                                  torch.nn.utils.weight_norm])
def test_parametrized_linear_is_named_and_left_out(wrap):
    model = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm is deprecated
        wrap(model[0])
    with pytest.warns(UserWarning, match=r"layers \['0'\] have a computed weight"):
        p = P(model, kl_clip=None)
    assert [l.name for l in p.layers] == ["2"]
    model(torch.randn(3, 5)).sum().backward()
    plain = [q.grad.clone() for q in model[0].parameters()]
    p.step()
    assert all(torch.equal(a, q.grad) for a, q in zip(plain, model[0].parameters()))


def test_layer_parametrized_after_construction_names_it():
    model = nn.Linear(4, 2)
    p = P(model)
    parametrizations.weight_norm(model)
    model(torch.randn(3, 4)).sum().backward()
    with pytest.raises(RuntimeError, match="frozen or parametrized after"):
        p.step()


def test_layer_resized_after_construction_is_named():
    model = _mlp()
    p = P(model)
    model[0].weight = nn.Parameter(torch.randn(4, 7))
    with pytest.raises(RuntimeError, match=r"layer '0' has weight shape \(4, 7\), registered "
                                           r"with \(4, 5\)"):
        model(torch.randn(3, 7))
    assert p.steps == 0
