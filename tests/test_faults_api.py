"""Fault suite of the library's entry points: KFACPreconditioner and kfac_ext.ops.

Every case is an input a user can pass by mistake (or an attacker on purpose)
and the behaviour it must get: a clear error naming the argument, raised
before any work; a warning where the run can honestly go on; or a correct
result. CASES is the table (counted in RESULTS); the tests below it check the
results of the cases that must stay correct, not only that they do not raise.
"""

import re
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import kfac_ext
from kfac_ext import ops

P = kfac_ext.KFACPreconditioner


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3))


def _convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def _backward(model, x):
    model.zero_grad()
    model(x).pow(2).mean().backward()


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _construct(**kwargs):
    return lambda: P(_mlp(), **kwargs)


# An absurd size is refused by a check before any work (the error message says which
# check), so the time it takes is not the verdict; this only catches a regression that
# starts computing, with a margin no machine load reaches.
FAIL_FAST_S = 120


def _seconds(fn, limit=FAIL_FAST_S):
    """fn() must raise within `limit` seconds (an absurd size must not run for long)."""

    def timed():
        start = time.perf_counter()
        try:
            fn()
        finally:
            assert time.perf_counter() - start < limit

    return timed


def _aliased_unpack():
    mats = [torch.zeros(3, 3)]
    ops.unpack_triu_(mats[0].view(-1)[:6], mats)


# (id, thunk, expected): expected is ("error", exception type, message regex),
# ("warning", regex) or ("ok",).
CASES = [
    # ---- constructor arguments: a clear error naming the argument ----
    ("damping=0", _construct(damping=0.0), ("error", ValueError, "damping")),
    ("damping<0", _construct(damping=-1e-3), ("error", ValueError, "damping")),
    ("damping schedule hits 0", _construct(damping=lambda s: 0.0), ("error", ValueError, "damping")),
    ("damping=nan", _construct(damping=float("nan")), ("error", ValueError, "damping")),
    ("grad_worker_fraction=0", _construct(grad_worker_fraction=0.0), ("error", ValueError, "grad_worker_fraction")),
    ("grad_worker_fraction=5", _construct(grad_worker_fraction=5), ("error", ValueError, "grad_worker_fraction")),
    (
        "grad_worker_fraction=nan",
        _construct(grad_worker_fraction=float("nan")),
        ("error", ValueError, "grad_worker_fraction"),
    ),
    (
        "grad_worker_fraction='half'",
        _construct(grad_worker_fraction="half"),
        ("error", ValueError, "grad_worker_fraction"),
    ),
    ("grad_worker_fraction=True", _construct(grad_worker_fraction=True), ("error", ValueError, "grad_worker_fraction")),
    (
        "allreduce_bucket_cap_mb=-1",
        _construct(allreduce_bucket_cap_mb=-1),
        ("error", ValueError, "allreduce_bucket_cap_mb"),
    ),
    (
        "allreduce_bucket_cap_mb=inf",
        _construct(allreduce_bucket_cap_mb=float("inf")),
        ("error", ValueError, "allreduce_bucket_cap_mb"),
    ),
    ("skip_layers='['", _construct(skip_layers="["), ("error", ValueError, "skip_layers")),
    ("skip_layers=5", _construct(skip_layers=5), ("error", ValueError, "skip_layers")),
    ("skip_layers=['ok', 3]", _construct(skip_layers=["ok", 3]), ("error", ValueError, "skip_layers")),
    ("inv_dtype=float16", _construct(inv_dtype=torch.float16), ("error", ValueError, "inv_dtype")),
    ("inv_dtype=bfloat16", _construct(inv_dtype=torch.bfloat16), ("error", ValueError, "inv_dtype")),
    ("inv_dtype=None", _construct(inv_dtype=None), ("error", ValueError, "inv_dtype")),
    ("factor_dtype=float16", _construct(factor_dtype=torch.float16), ("error", ValueError, "factor_dtype")),
    ("factor_dtype=int32", _construct(factor_dtype=torch.int32), ("error", ValueError, "factor_dtype")),
    ("compute_method='cholesky'", _construct(compute_method="cholesky"), ("error", ValueError, "compute_method")),
    (
        "assignment_strategy='speed'",
        _construct(assignment_strategy="speed"),
        ("error", ValueError, "assignment_strategy"),
    ),
    ("loglevel='loud'", _construct(loglevel="loud"), ("error", ValueError, "loglevel")),
    ("grad_scaler=object()", _construct(grad_scaler=object()), ("error", ValueError, "grad_scaler")),
    ("colocate_factors='yes'", _construct(colocate_factors="yes"), ("error", ValueError, "colocate_factors")),
    ("update_factors_in_hook=1", _construct(update_factors_in_hook=1), ("error", ValueError, "update_factors_in_hook")),
    ("defaults=[1]", _construct(defaults=[1]), ("error", ValueError, "defaults")),
    ("factor_decay=1", _construct(factor_decay=1.0), ("error", ValueError, "factor_decay")),
    ("kl_clip=0", _construct(kl_clip=0.0), ("error", ValueError, "kl_clip")),
    ("lr<0", _construct(lr=-0.1), ("error", ValueError, "lr")),
    ("accumulation_steps=0", _construct(accumulation_steps=0), ("error", ValueError, "accumulation_steps")),
    ("factor_update_steps=1.5", _construct(factor_update_steps=1.5), ("error", ValueError, "factor_update_steps")),
    ("inv_lag_steps=-1", _construct(inv_lag_steps=-1), ("error", ValueError, "inv_lag_steps")),
    ("unknown keyword", _construct(momentum=0.9), ("error", TypeError, "momentum")),
    ("model is a list of layers", lambda: P([nn.Linear(2, 2)]), ("error", TypeError, "nn.Module")),
    ("model passed as the optimizer's parameters", lambda: P(_mlp().parameters()), ("error", TypeError, "nn.Module")),
    # ---- what registration finds ----
    ("no supported layer", lambda: P(nn.Sequential(nn.Conv3d(3, 4, 3))), ("warning", "no layer registered")),
    ("every layer skipped", _construct(skip_layers="linear"), ("warning", "no layer registered")),
    ("tied weights", lambda: _tied_preconditioner(), ("warning", "share one weight")),
    ("frozen weight", lambda: _frozen_preconditioner(), ("ok",)),
    # ---- misuse during training ----
    ("step() twice after one backward", lambda: _step_twice(), ("warning", "called again")),
    ("step() before backward", lambda: P(_mlp()).step(), ("error", RuntimeError, "before backward")),
    (
        "every registered module replaced",
        lambda: _replace_all(),
        ("error", RuntimeError, "none of the registered layers is part of the model"),
    ),
    ("module added after construction", lambda: _add_module(), ("warning", "added to the model")),
    ("empty Linear batch", lambda: _empty_batch(_mlp(), torch.randn(0, 10)), ("warning", "0 rows")),
    ("empty Conv2d batch", lambda: _empty_batch(_convnet(), torch.randn(0, 3, 6, 6)), ("warning", "0 rows")),
    ("NaN batch", lambda: _nan_batch(), ("warning", "non-finite")),
    ("zero_grad(set_to_none=False) then backward", lambda: _zeroed_in_place(), ("ok",)),
    # ---- ops: aliasing ----
    ("cov_update_(f, f)", lambda: _self_alias(), ("error", RuntimeError, "must not share memory")),
    ("cov_update_ x a slice of factor", lambda: _partial_alias(), ("error", RuntimeError, "must not share memory")),
    ("channel_cov_update_ aliasing", lambda: _channel_alias(), ("error", RuntimeError, "must not share memory")),
    ("unpack_triu_ packed inside mats", _aliased_unpack, ("error", RuntimeError, "must not share memory")),
    # ---- ops: damping ----
    ("eigen_precondition damping=0", lambda: ops.eigen_precondition(*_layer(), 0.0), ("error", ValueError, "damping")),
    (
        "raw eigen_precondition damping=0",
        lambda: torch.ops.kfac_ext.eigen_precondition(*_layer(), 0.0),
        ("error", RuntimeError, "damping must be a finite number > 0"),
    ),
    (
        "eigen_precondition damping=inf",
        lambda: ops.eigen_precondition(*_layer(), float("inf")),
        ("error", ValueError, "damping"),
    ),
    ("precondition_grads_ damping<0", lambda: _precondition_grads(-1.0), ("error", ValueError, "damping")),
    # the schemas take a float: a numeric string or a bool is refused, not converted
    (
        "eigen_precondition damping='0.1'",
        lambda: ops.eigen_precondition(*_layer(), "0.1"),
        ("error", ValueError, "damping must be a finite number > 0; got '0.1'"),
    ),
    ("precondition_grads_ damping=True", lambda: _precondition_grads(True), ("error", ValueError, "damping")),
    ("eigen_precondition damping=np.float32", lambda: ops.eigen_precondition(*_layer(), np.float32(0.1)), ("ok",)),
    # ---- ops: sizes that must fail fast ----
    (
        "conv2d_act_factor kernel 100000, padding 100000",
        _seconds(lambda: ops.conv2d_act_factor(torch.randn(1, 2, 5, 5), 100000, 1, 100000, 1, True)),
        ("error", RuntimeError, "factor would be"),
    ),
    (
        "conv2d_act_factor kernel 1000",
        _seconds(lambda: ops.conv2d_act_factor(torch.randn(1, 2, 5, 5), 1000, 1, 1000, 1, True)),
        ("error", RuntimeError, "factor would be"),
    ),
    (
        "conv2d_act_factor padding 1e17",
        _seconds(lambda: ops.conv2d_act_factor(torch.randn(1, 2, 5, 5), 3, 1, 10**17, 1, True)),
        ("error", RuntimeError, "zero-padded input"),
    ),
    (
        "conv2d_act_factor dilation 1e18",
        lambda: ops.conv2d_act_factor(torch.randn(1, 2, 5, 5), 3, 1, 0, 10**18, True),
        ("error", RuntimeError, "output size|overflows"),
    ),
    (
        "conv2d_act_factor N=0",
        lambda: ops.conv2d_act_factor(torch.randn(0, 2, 5, 5), 3, 1, 1, 1, True),
        ("error", RuntimeError, "N > 0"),
    ),
    (
        "conv2d_act_factor kernel of 3 ints",
        lambda: ops.conv2d_act_factor(torch.randn(1, 2, 5, 5), (1, 2, 3), 1, 0, 1, True),
        ("error", ValueError, "pair"),
    ),
    (
        "conv2d_act_factor 3-D input",
        lambda: ops.conv2d_act_factor(torch.randn(2, 5, 5), 3, 1, 1, 1, True),
        ("error", RuntimeError, "4-D"),
    ),
    # ---- ops: bad dtypes, shapes, devices, types ----
    (
        "cov_update_ int tensors",
        lambda: ops.cov_update_(torch.zeros(3, 3, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int32), 1.0, 0.0),
        ("error", RuntimeError, "float32 or float64"),
    ),
    (
        "cov_update_ float16 factor",
        lambda: ops.cov_update_(
            torch.zeros(3, 3, dtype=torch.float16), torch.zeros(2, 3, dtype=torch.float16), 1.0, 0.0
        ),
        ("error", RuntimeError, "float32 or float64"),
    ),
    (
        "cov_update_ non-contiguous factor",
        lambda: ops.cov_update_(torch.zeros(6, 3)[::2], torch.randn(2, 3), 1.0, 0.0),
        ("error", RuntimeError, "contiguous"),
    ),
    (
        "cov_update_ x on meta",
        lambda: ops.cov_update_(torch.zeros(3, 3), torch.zeros(2, 3, device="meta"), 1.0, 0.0),
        ("error", RuntimeError, "device"),
    ),
    (
        "cov_update_ x a list",
        lambda: ops.cov_update_(torch.zeros(3, 3), [[1.0, 2.0, 3.0]], 1.0, 0.0),
        ("error", TypeError, "x must be a torch.Tensor"),
    ),
    (
        "cov_update_ wrong width",
        lambda: ops.cov_update_(torch.zeros(3, 3), torch.randn(2, 4), 1.0, 0.0),
        ("error", RuntimeError, "x must be 2-D"),
    ),
    (
        "batched_eigh NaN factor",
        lambda: ops.batched_eigh([torch.full((3, 3), float("nan"))]),
        ("error", RuntimeError, "factor"),
    ),
    ("batched_eigh non-square", lambda: ops.batched_eigh([torch.randn(3, 4)]), ("error", RuntimeError, "square")),
    (
        "batched_eigh a tensor, not a list",
        lambda: ops.batched_eigh(torch.eye(3)),
        ("error", TypeError, "list of tensors"),
    ),
    (
        "kl_clip_sum lengths differ",
        lambda: ops.kl_clip_sum([torch.ones(2)], []),
        ("error", RuntimeError, "equal length"),
    ),
    (
        "kl_clip_sum dtypes differ",
        lambda: ops.kl_clip_sum([torch.ones(2)], [torch.ones(2, dtype=torch.float64)]),
        ("error", RuntimeError, "dtype"),
    ),
    (
        "kl_clip_sum shapes differ",
        lambda: ops.kl_clip_sum([torch.ones(2)], [torch.ones(3)]),
        ("error", RuntimeError, "shape"),
    ),
    (
        "eigen_precondition qa of the wrong size",
        lambda: ops.eigen_precondition(
            [torch.randn(2, 3)], [torch.eye(4)], [torch.ones(3)], [torch.eye(2)], [torch.ones(2)], 0.1
        ),
        ("error", RuntimeError, "qa\\[0\\]"),
    ),
    ("pack_triu of nothing", lambda: ops.pack_triu([]), ("error", ValueError, "at least one")),
    (
        "unpack_triu_ wrong size",
        lambda: ops.unpack_triu_(torch.zeros(5), [torch.zeros(3, 3)]),
        ("error", RuntimeError, "6 entries"),
    ),
    ("precondition_grads_ kl_clip=0", lambda: _precondition_grads(0.1, kl_clip=0.0), ("error", ValueError, "kl_clip")),
]


def _tied_preconditioner():
    # Whole-weight ties are preconditioned per use (test_tied_weights.py); a grouped
    # conv's tie is not registered, with a warning.
    model = nn.Sequential(nn.Conv2d(6, 6, 1, groups=2), nn.Tanh(), nn.Conv2d(6, 6, 1, groups=2))
    model[2].weight = model[0].weight
    return P(model)


def _frozen_preconditioner():
    model = _mlp()
    model[0].weight.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = P(model)
    assert [l.name for l in p.layers] == ["2"]


def _step_twice():
    model = _mlp()
    p = P(model)
    _backward(model, torch.randn(4, 10))
    p.step()
    p.step()


def _replace_all():
    model = _mlp()
    p = P(model)
    model[0], model[2] = nn.Linear(10, 8), nn.Linear(8, 3)
    _backward(model, torch.randn(4, 10))
    p.step()


def _add_module():
    model = _mlp()
    p = P(model)
    model.append(nn.Linear(3, 2))
    _backward(model, torch.randn(4, 10))
    p.step()


def _empty_batch(model, x):
    p = P(model, factor_decay=0.5)
    _backward(model, x)
    p.step()


def _nan_batch():
    model = _mlp()
    p = P(model)
    x = torch.randn(4, 10)
    x[0, 0] = float("nan")
    _backward(model, x)
    p.step()


def _zeroed_in_place():
    model = _mlp()
    p = P(model)
    for _ in range(2):
        model.zero_grad(set_to_none=False)
        model(torch.randn(4, 10)).pow(2).mean().backward()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            p.step()
    assert p.steps == 2


def _self_alias():
    f = torch.eye(3)
    ops.cov_update_(f, f, 1.0, 1.0)


def _partial_alias():
    f = torch.eye(4)
    ops.cov_update_(f, f[:2], 1.0, 1.0)


def _channel_alias():
    f = torch.eye(3)
    ops.channel_cov_update_(f, f.view(1, 3, 3), 1.0, 1.0)


def _layer():
    return ([torch.randn(2, 3)], [torch.eye(3)], [torch.zeros(3)], [torch.eye(2)], [torch.zeros(2)])


def _precondition_grads(damping, kl_clip=None):
    w, b = torch.randn(2, 2), torch.randn(2)
    return ops.precondition_grads_(
        [w], [b], [torch.eye(3)], [torch.ones(3)], [torch.eye(2)], [torch.ones(2)], damping, kl_clip
    )


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fault(case):
    _, thunk, expected = case
    kind = expected[0]
    if kind == "error":
        with pytest.raises(expected[1], match=expected[2]):
            thunk()
    elif kind == "warning":
        with pytest.warns(UserWarning, match=expected[1]):
            thunk()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            thunk()


def test_fault_table_counts():
    kinds = [c[2][0] for c in CASES]
    assert len(set(c[0] for c in CASES)) == len(CASES)  # ids are unique
    assert kinds.count("error") + kinds.count("warning") + kinds.count("ok") == len(CASES)


# ---------------------------------------------- the results behind the cases ----


def test_damping_zero_would_have_made_nan_gradients():
    """Why damping=0 is refused: with a singular factor (batch of 2 < 10 inputs and
    factor_decay=0) the eigen method divides by zero."""
    model = _mlp()
    p = P(model, damping=1e-12, factor_decay=0.0, kl_clip=None)
    _backward(model, torch.randn(2, 10))
    p.step()
    assert all(torch.isfinite(g).all() for g in _grads(model))


def test_tied_grouped_conv_weights_keep_their_plain_gradient():
    model = nn.Sequential(nn.Conv2d(6, 6, 1, groups=2), nn.Tanh(), nn.Conv2d(6, 6, 1, groups=2))
    model[2].weight = model[0].weight
    with pytest.warns(UserWarning, match=r"\['0', '2'\] share one weight"):
        p = P(model, kl_clip=None)
    assert p.layers == []
    _backward(model, torch.randn(5, 6, 3, 3))
    plain = _grads(model)
    p.step()
    assert all(torch.equal(a, b) for a, b in zip(plain, _grads(model)))


def test_tied_weights_one_named_in_skip_layers_registers_the_other():
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
    model[2].weight = model[0].weight
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = P(model, skip_layers=r"^2$")
    assert [l.name for l in p.layers] == ["0"]


def test_second_step_without_backward_leaves_gradients_and_counters():
    model = _mlp()
    p = P(model)
    _backward(model, torch.randn(4, 10))
    p.step()
    once = _grads(model)
    factors = [l.A.clone() for l in p.layers]
    with pytest.warns(UserWarning, match="called again"):
        p.step()
    assert all(torch.equal(a, b) for a, b in zip(once, _grads(model)))
    assert all(torch.equal(a, l.A) for a, l in zip(factors, p.layers))
    assert p.steps == 1
    _backward(model, torch.randn(4, 10))  # a new backward: a normal step again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.step()
    assert p.steps == 2


def test_empty_linear_batch_leaves_the_factors():
    model = _mlp()
    p = P(model, factor_decay=0.5)
    _backward(model, torch.randn(4, 10))
    p.step()
    before = [(l.A.clone(), l.G.clone()) for l in p.layers]
    with pytest.warns(UserWarning, match="0 rows"):
        _backward(model, torch.randn(0, 10))
        p.step()
    assert p.skipped_factor_updates == 2  # both layers
    for (a, g), l in zip(before, p.layers):
        assert torch.equal(a, l.A) and torch.equal(g, l.G)


def test_empty_conv_batch_does_not_raise_and_later_batches_count():
    model = _convnet()
    p = P(model, factor_decay=0.5)
    with pytest.warns(UserWarning, match="0 rows"):
        _backward(model, torch.randn(0, 3, 6, 6))
        p.step()
    assert all(l.factor_updates == 0 for l in p.layers)
    _backward(model, torch.randn(3, 3, 6, 6))
    p.step()
    assert all(l.factor_updates == 1 for l in p.layers)


def test_empty_micro_batch_is_left_out_of_the_average():
    """Two micro-batches, one empty: the factor is the other one's."""
    torch.manual_seed(1)
    x = torch.randn(5, 10)
    ref_model, model = _mlp(), _mlp()
    ref = P(ref_model, factor_decay=0.0)
    _backward(ref_model, x)
    ref.step()
    p = P(model, factor_decay=0.0, accumulation_steps=2)
    model.zero_grad()
    model(x).pow(2).mean().backward()
    model(x[:0]).pow(2).sum().backward()
    with pytest.warns(UserWarning, match="accumulation_steps=2"):
        p.step()
    for a, b in zip(ref.layers, p.layers):
        torch.testing.assert_close(a.A, b.A)
        torch.testing.assert_close(a.G, b.G)


def test_added_module_warns_once():
    model = _mlp()
    p = P(model)
    model.append(nn.Linear(3, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            _backward(model, torch.randn(4, 10))
            p.step()
    added = [w for w in caught if "added to the model" in str(w.message)]
    assert len(added) == 1 and "'3'" in str(added[0].message)


def test_one_replaced_module_warns_and_the_rest_is_preconditioned():
    model = _mlp()
    p = P(model)
    model[2] = nn.Linear(8, 3)
    with pytest.warns(UserWarning, match="'2' is no longer part of the model"):
        _backward(model, torch.randn(4, 10))
        p.step()
    assert p.layers[0].factor_updates == 1


def test_raw_cov_update_aliasing_message_names_both():
    f = torch.eye(3)
    with pytest.raises(RuntimeError, match=re.escape("factor must not share memory with x")):
        torch.ops.kfac_ext.cov_update_(f, f, 1.0, 1.0, False)
