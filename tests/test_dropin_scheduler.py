"""Drop-in for kfac-pytorch without kfac-pytorch: ``LambdaParamScheduler``, the
interval rule, the damping between eigendecompositions, and the hyperparameters a
checkpoint carries."""

import pytest
import torch
from _tiny_classifier import tiny_model, tiny_step

import kfac_ext
from kfac_ext.adaptive_damping import AdaptiveDamping
from kfac_ext.scheduler import LambdaParamScheduler

# ---------------------------------------------------------- scheduler ----


def test_lambdas_multiply_the_current_values_and_compound():
    p = kfac_ext.KFACPreconditioner(
        tiny_model(), damping=0.004, factor_update_steps=1, inv_update_steps=3, kl_clip=0.01, lr=0.2, factor_decay=0.9
    )
    after_2 = lambda e: 0.5 if e >= 2 else 1.0  # noqa: E731
    s = LambdaParamScheduler(
        p,
        damping_lambda=after_2,
        factor_update_steps_lambda=lambda e: 10,
        inv_update_steps_lambda=lambda e: 0.5 if e == 2 else 1.0,
        kl_clip_lambda=lambda e: 2,
        lr_lambda=lambda e: 0.1,
        factor_decay_lambda=lambda e: 1.0,
    )
    s.step(step=1)
    assert p.damping(0) == 0.004 and p.inv_update_steps(0) == 3
    assert p.factor_update_steps(0) == 10 and p.kl_clip(0) == 0.02
    assert p.lr(0) == pytest.approx(0.02) and p.factor_decay(0) == 0.9
    s.step(step=2)
    assert p.damping(0) == 0.002 and p.inv_update_steps(0) == 1  # int(3 * 0.5): truncated
    assert p.factor_update_steps(0) == 100  # 10 * 10
    s.step(step=3)
    assert p.damping(0) == 0.001  # the factors compound


def test_step_without_a_step_uses_the_preconditioners_step_count():
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(model)
    seen = []
    s = LambdaParamScheduler(p, damping_lambda=lambda k: seen.append(k) or 1.0)
    for k in range(3):
        tiny_step(model, p, k)
        s.step()
    s.step(step=42)
    assert seen == [1, 2, 3, 42]


@pytest.mark.parametrize(
    "name, value",
    [
        ("damping", lambda s: 0.01),
        ("factor_update_steps", lambda s: 2),
        ("inv_update_steps", kfac_ext.schedules.growing_interval(2)),
        ("kl_clip", lambda s: 1e-3),
        ("lr", lambda s: 0.1),
        ("factor_decay", lambda s: 0.9),
        ("damping", AdaptiveDamping(0.01)),
    ],
)
def test_a_parameter_that_is_already_a_callable_is_refused(name, value):
    p = kfac_ext.KFACPreconditioner(tiny_model(), **{name: value})
    with pytest.raises(ValueError, match=f"{name} is already a callable"):
        LambdaParamScheduler(p, **{f"{name}_lambda": lambda e: 0.5})
    LambdaParamScheduler(p)  # nothing to rescale: fine


def test_scheduler_misuse_is_refused_by_name():
    p = kfac_ext.KFACPreconditioner(tiny_model(), kl_clip=None)
    with pytest.raises(ValueError, match="kl_clip is None"):
        LambdaParamScheduler(p, kl_clip_lambda=lambda e: 2)
    with pytest.raises(ValueError, match="damping_lambda must be a callable"):
        LambdaParamScheduler(p, damping_lambda=0.5)
    with pytest.raises(TypeError, match="needs a kfac_ext KFACPreconditioner"):
        LambdaParamScheduler(object(), damping_lambda=lambda e: 0.5)


def test_an_interval_truncated_to_zero_is_refused_before_anything_changes():
    p = kfac_ext.KFACPreconditioner(tiny_model(), damping=0.01, inv_update_steps=1)
    s = LambdaParamScheduler(p, damping_lambda=lambda e: 0.1, inv_update_steps_lambda=lambda e: 0.5)
    with pytest.raises(ValueError, match="inv_update_steps must be a positive integer, got 0"):
        s.step(step=1)
    assert p.damping(0) == 0.01 and p.inv_update_steps(0) == 1


# ------------------------------------------------------ interval rule ----


def _update_steps(p, model, steps, scheduler=None, at=None):
    """Steps at which factors / eigendecompositions were updated."""
    factors, eigens = [], []
    for k in range(steps):
        before = (p.layers[0].factor_updates, p._inv_tracker.last)
        tiny_step(model, p, k)
        if p.layers[0].factor_updates != before[0]:
            factors.append(k)
        if p._inv_tracker.last != before[1]:
            eigens.append(k)
        if scheduler is not None and k == at:
            scheduler.step(step=1)
    return factors, eigens


def test_a_rescaled_interval_updates_where_step_mod_interval_is_zero():
    """kfac-pytorch's rule: after intervals 1/3 become 2/6 at the end of step 4, the
    updates fall on the multiples of the new intervals (not 4 + 2, 4 + 6...)."""
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(model, factor_update_steps=1, inv_update_steps=3)
    s = LambdaParamScheduler(p, factor_update_steps_lambda=lambda e: 2, inv_update_steps_lambda=lambda e: 2)
    factors, eigens = _update_steps(p, model, 14, s, at=4)
    assert factors == [0, 1, 2, 3, 4, 6, 8, 10, 12]
    assert eigens == [0, 3, 6, 12]


def test_a_schedule_interval_updates_where_step_mod_interval_is_zero():
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(
        model, factor_update_steps=lambda s: 2 if s < 5 else 3, inv_update_steps=lambda s: 4 if s < 5 else 7
    )
    factors, eigens = _update_steps(p, model, 15)
    assert factors == [0, 2, 4, 6, 9, 12]
    assert eigens == [0, 4, 7, 14]


def test_set_hyperparameters_checks_everything_first():
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(model, damping=0.01, lr=lambda s: 0.1)
    with pytest.raises(ValueError, match="'dampling' is not a hyperparameter"):
        p.set_hyperparameters(damping=0.02, dampling=0.1)
    with pytest.raises(ValueError, match="lr is a schedule"):
        p.set_hyperparameters(damping=0.02, lr=0.5)
    with pytest.raises(ValueError, match="factor_decay must be a number in"):
        p.set_hyperparameters(damping=0.02, factor_decay=1.5)
    assert p.damping(0) == 0.01
    p.set_hyperparameters(damping=0.02, factor_update_steps=3)
    assert p.damping(0) == 0.02
    tiny_step(model, p, 0)
    assert not p._capturing  # step 1 of interval 3: the hooks already know


# --------------------------------------------------------- checkpoint ----


def test_state_dict_carries_the_rescaled_numbers():
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(model, damping=0.003, factor_update_steps=1, inv_update_steps=2, lr=lambda s: 0.1)
    s = LambdaParamScheduler(
        p, damping_lambda=lambda e: 0.5, factor_update_steps_lambda=lambda e: 2, inv_update_steps_lambda=lambda e: 2
    )
    for k in range(3):
        tiny_step(model, p, k)
        s.step()
    state = p.state_dict()
    assert state["hyperparameters"] == {
        "factor_update_steps": 8,
        "inv_update_steps": 16,
        "damping": 0.000375,
        "factor_decay": 0.95,
        "kl_clip": 0.001,
    }  # lr is a schedule: nothing to save
    fresh = kfac_ext.KFACPreconditioner(
        tiny_model(), damping=0.003, factor_update_steps=1, inv_update_steps=2, lr=lambda s: 0.2
    )
    fresh.load_state_dict(state)
    assert (fresh.damping(0), fresh.factor_update_steps(0), fresh.inv_update_steps(0)) == (0.000375, 8, 16)
    assert fresh.lr(0) == 0.2  # a schedule given here is kept
    assert not fresh._capturing  # step 3 % 8 != 0


def test_a_bad_saved_hyperparameter_is_refused_before_loading():
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(model, damping=0.003)
    tiny_step(model, p, 0)
    state = p.state_dict()
    state["hyperparameters"]["damping"] = -1.0
    fresh = kfac_ext.KFACPreconditioner(tiny_model(), damping=0.003)
    with pytest.raises(ValueError, match="load_state_dict: damping must be a finite number > 0"):
        fresh.load_state_dict(state)
    assert fresh.steps == 0 and fresh.damping(0) == 0.003


# ------------------------------------------- damping between eigendecompositions ----


def _second_step_grad(outer_product, new_damping, reload=False):
    """Layer 0's gradient at step 1, when the damping changes after step 0 (an
    eigendecomposition step) and step 1 is not one."""
    model = tiny_model()
    p = kfac_ext.KFACPreconditioner(
        model, damping=0.01, inv_update_steps=2, kl_clip=None, compute_eigenvalue_outer_product=outer_product
    )
    tiny_step(model, p, 0)
    p.set_hyperparameters(damping=new_damping)
    if reload:
        state = p.state_dict()
        p = kfac_ext.KFACPreconditioner(
            model, damping=0.3, inv_update_steps=2, kl_clip=None, compute_eigenvalue_outer_product=outer_product
        )
        p.load_state_dict(state)
    tiny_step(model, p, 1)
    return model[0].weight.grad.clone()


def test_outer_product_keeps_the_damping_of_the_eigendecomposition_step():
    """kfac-pytorch's compute_eigenvalue_outer_product=True forms 1 / (d_G d_Aᵀ + λ)
    when it decomposes, so a new damping waits for the next decomposition; False
    divides with the step's own damping."""
    unchanged = _second_step_grad(True, 0.01)
    torch.testing.assert_close(_second_step_grad(True, 0.5), unchanged, rtol=0, atol=0)
    assert not torch.allclose(_second_step_grad(False, 0.5), unchanged)
    # a checkpoint keeps it: a resumed run divides as the uninterrupted one
    torch.testing.assert_close(_second_step_grad(True, 0.5, reload=True), unchanged, rtol=0, atol=0)
