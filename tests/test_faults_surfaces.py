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


def test_bias_removed_after_construction_continues_as_weight_only():
    """A bias set to None after registration is a bias frozen for good: the layer goes on
    as weight-only K-FAC (no AttributeError), with the weight block of its factor."""
    model = _mlp()
    p = P(model, kl_clip=None, damping=0.1)
    _train(model, p, steps=1)
    model[0].bias = None
    with pytest.warns(UserWarning, match="weight-only K-FAC"):
        _train(model, p, steps=1)
    assert p.layers[0].a_dim == 5 and not p.layers[0].has_bias


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
    with pytest.warns(UserWarning, match="weight of layer '0' was frozen or parametrized"):
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


@pytest.mark.parametrize(
    "wrap", [parametrizations.weight_norm, parametrizations.spectral_norm, torch.nn.utils.weight_norm]
)
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
    with pytest.raises(
        RuntimeError,
        match=r"layer '0' has weight shape \(4, 7\), registered "
        r"with \(4, 5\)",
    ):
        model(torch.randn(3, 7))
    assert p.steps == 0


# ------------------------------------------------------------- AdaptiveDamping ----


def _adaptive_setup(interval=1):
    from kfac_ext.adaptive_damping import AdaptiveDamping

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    damping = AdaptiveDamping(0.1, interval=interval, curvature_scale=16**2)
    p = P(model, damping=damping, kl_clip=None, lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, damping, p, opt


def _batches(n, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)) for _ in range(n)]


def _adaptive_steps(model, p, opt, batches, closure_of=None):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        closure = (closure_of or (lambda x, y: lambda: nn.functional.mse_loss(model(x), y)))(x, y)
        p.step(closure=closure)
        opt.step()


def test_adaptive_damping_resume_with_pending_measurement_is_bit_identical():
    import copy

    batches = _batches(6)
    model, damping, p, opt = _adaptive_setup()
    _adaptive_steps(model, p, opt, batches)
    model2, damping2, p2, opt2 = _adaptive_setup()
    _adaptive_steps(model2, p2, opt2, batches[:3])
    saved = copy.deepcopy((model2.state_dict(), opt2.state_dict(), p2.state_dict()))
    assert saved[2]["adaptive_damping"]["pending"] is not None  # what used to be dropped
    model3, damping3, p3, opt3 = _adaptive_setup()
    model3.load_state_dict(saved[0])
    opt3.load_state_dict(saved[1])
    p3.load_state_dict(saved[2])
    x, y = batches[2]
    damping3.resume(lambda: nn.functional.mse_loss(model3(x), y))
    _adaptive_steps(model3, p3, opt3, batches[3:])
    assert damping3.value == damping.value and damping3.updates == damping.updates
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)


def test_adaptive_damping_resume_without_closure_drops_it_with_a_warning():
    batches = _batches(3)
    model, damping, p, opt = _adaptive_setup()
    _adaptive_steps(model, p, opt, batches[:2])
    state = p.state_dict()
    model2, damping2, p2, opt2 = _adaptive_setup()
    p2.load_state_dict(state)
    updates = damping2.updates
    with pytest.warns(UserWarning, match="pending in the loaded state was dropped"):
        _adaptive_steps(model2, p2, opt2, batches[2:])
    assert damping2.updates == updates


@pytest.mark.parametrize(
    "result, words",
    [("0.5", "str '0.5'"), (None, "NoneType"), ((1.0, 2.0), "tuple"), (torch.ones(3), r"tensor of shape \(3,\)")],
)
def test_adaptive_damping_closure_of_the_wrong_kind_changes_nothing(result, words):
    batches = _batches(3)
    model, damping, p, opt = _adaptive_setup()
    _adaptive_steps(model, p, opt, batches[:2])  # step 1 started a measurement
    x, y = batches[2]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    grads = [q.grad.clone() for q in model.parameters()]
    value, steps = damping.value, p.steps
    assert damping.updates == 0
    with pytest.raises(TypeError, match=f"closure must return the batch's loss.*{words}"):
        p.step(closure=lambda: result)
    assert damping.value == value and p.steps == steps
    assert all(torch.equal(a, q.grad) for a, q in zip(grads, model.parameters()))
    p.step(closure=lambda: nn.functional.mse_loss(model(x), y))  # a retry is a normal step
    assert damping.updates == 1


def test_adaptive_damping_closure_returning_nan_warns():
    batches = _batches(3)
    model, damping, p, opt = _adaptive_setup()
    with pytest.warns(UserWarning, match="closure's loss is nan"):
        _adaptive_steps(model, p, opt, batches, closure_of=lambda x, y: lambda: torch.tensor(float("nan")))
    assert damping.updates == 0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(initial=True), "initial"),
        (dict(initial=0.1, interval=True), "interval"),
        (dict(initial=0.1, decay=True), "decay"),
        (dict(initial=0.1, max_damping=True), "max_damping"),
    ],
)
def test_adaptive_damping_booleans_are_not_numbers(kwargs, words):
    from kfac_ext.adaptive_damping import AdaptiveDamping

    with pytest.raises(ValueError, match=words):
        AdaptiveDamping(**kwargs)


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda s: s["adaptive_damping"].update(value=1e9), "max_damping"),
        (lambda s: s["adaptive_damping"].update(value="x"), "value"),
        (lambda s: s["adaptive_damping"].update(updates=-1), "updates"),
        (lambda s: s["adaptive_damping"]["pending"]["grads"].pop(), "pending grads"),
        (lambda s: s.update(adaptive_damping=[1]), "not an AdaptiveDamping state"),
    ],
)
def test_load_state_dict_checks_adaptive_damping_before_assigning(edit, words):
    batches = _batches(3)
    model, damping, p, opt = _adaptive_setup()
    _adaptive_steps(model, p, opt, batches)
    state = p.state_dict()
    edit(state)
    model2, damping2, p2, _ = _adaptive_setup()
    factors = [l.A.clone() for l in p2.layers]
    with pytest.raises(ValueError, match=words):
        p2.load_state_dict(state)
    assert p2.steps == 0 and damping2.value == 0.1
    assert all(torch.equal(a, l.A) for a, l in zip(factors, p2.layers))


def test_closure_with_fixed_damping_warns_once():
    model = _mlp()
    p = P(model)
    model(torch.randn(3, 5)).sum().backward()
    with pytest.warns(UserWarning, match="closure is not used"):
        p.step(closure=lambda: 0.0)


def test_loglevel_above_critical_is_refused():
    with pytest.raises(ValueError, match="loglevel"):
        P(_mlp(), loglevel=10**30)


def test_huge_g_scale_is_named_in_the_skipped_update_warning():
    model = _mlp()
    p = P(model, g_scale=1e40)
    model(torch.randn(3, 5)).sum().backward()
    with pytest.warns(UserWarning, match="g_scale=1e\\+40"):
        p.step()


# -------------------------------------------------------------------- AutoStep ----


def _auto_setup(bn=False, interval=2, tuple_out=False):
    from kfac_ext.auto_step import AutoStep

    torch.manual_seed(0)
    layers = [nn.Linear(5, 6)] + ([nn.BatchNorm1d(6)] if bn else []) + [nn.Tanh(), nn.Linear(6, 3)]
    model = nn.Sequential(*layers).double()
    if tuple_out:

        class Pair(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x), x

        model = Pair(model)
    auto = AutoStep(damping=0.5, weight_decay=1e-3, interval=interval)
    p = P(model, kl_clip=None, damping=0.1, auto_step=auto)
    return model, auto, p, torch.optim.SGD(model.parameters(), lr=1.0)


def _auto_batches(n):
    g = torch.Generator().manual_seed(5)
    return [
        (torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64))
        for _ in range(n)
    ]


def _auto_steps(model, p, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        p.step(closure=lambda x=x, y=y: (x, lambda out: nn.functional.mse_loss(out, y)))
        opt.step()


@pytest.mark.parametrize("saved_after", [1, 3])  # both right after a measuring step
def test_auto_step_resume_is_bit_identical(saved_after):
    import copy

    batches = _auto_batches(6)
    model, auto, p, opt = _auto_setup()
    _auto_steps(model, p, opt, batches)
    model2, _, p2, opt2 = _auto_setup()
    _auto_steps(model2, p2, opt2, batches[:saved_after])
    saved = copy.deepcopy((model2.state_dict(), p2.state_dict()))
    model3, auto3, p3, opt3 = _auto_setup()
    model3.load_state_dict(saved[0])
    p3.load_state_dict(saved[1])
    _auto_steps(model3, p3, opt3, batches[saved_after:])
    assert auto3.damping == auto.damping and auto3.lm.updates == auto.lm.updates == 3
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)


def test_auto_step_with_batchnorm_in_training_mode():
    """The jvp and the ratio's forward use the batch statistics (as the training forward
    did) and leave the running statistics to the training forward alone."""
    from kfac_ext.auto_step import curvature_products

    model, auto, p, opt = _auto_setup(bn=True, interval=1)
    x, y = _auto_batches(1)[0]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    stats = [b.clone() for b in model.buffers()]
    p.step(closure=lambda: (x, lambda out: nn.functional.mse_loss(out, y)))
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    assert auto.lm.updates == 1 and auto.last_alpha > 0
    # the products are those of the batch-statistics network
    names = [n for n, _ in model.named_parameters()]
    params = [q for _, q in model.named_parameters()]
    dirs = torch.randn(2, sum(q.numel() for q in params), dtype=torch.float64)
    got, _ = curvature_products(model, names, params, dirs, x, lambda out: nn.functional.mse_loss(out, y))
    batch_stats = nn.Sequential(
        *[nn.BatchNorm1d(6, track_running_stats=False).double() if isinstance(m, nn.BatchNorm1d) else m for m in model]
    )
    flat = torch.cat([q.detach().reshape(-1) for q in params])

    def out_of(vec):
        k, out = 0, {}
        for n, q in zip(names, params):
            out[n] = vec[k : k + q.numel()].reshape(q.shape)
            k += q.numel()
        return torch.func.functional_call(batch_stats, out, (x,)).reshape(-1)

    jac = torch.autograd.functional.jacobian(out_of, flat)
    hess = 2.0 / y.numel() * torch.eye(y.numel(), dtype=torch.float64)
    want = dirs @ jac.T @ hess @ jac @ dirs.T
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_auto_step_closure_returning_a_loss_changes_nothing():
    batches = _auto_batches(3)
    model, auto, p, opt = _auto_setup()
    ref, ref_auto, ref_p, ref_opt = _auto_setup()
    _auto_steps(model, p, opt, batches[:2])
    _auto_steps(ref, ref_p, ref_opt, batches)
    x, y = batches[2]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    grads = [q.grad.clone() for q in model.parameters()]
    with pytest.raises(TypeError, match=r"must return \(inputs, loss_of_outputs\), got Tensor"):
        p.step(closure=lambda: nn.functional.mse_loss(model(x), y))
    assert all(torch.equal(a, q.grad) for a, q in zip(grads, model.parameters()))
    assert p.steps == 2 and auto.steps == 2
    p.step(closure=lambda: (x, lambda out: nn.functional.mse_loss(out, y)))  # the retry
    opt.step()
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_auto_step_model_returning_a_tuple_is_named_and_gradients_restored():
    model, auto, p, opt = _auto_setup(tuple_out=True)
    x, y = _auto_batches(1)[0]
    nn.functional.mse_loss(model(x)[0], y).backward()
    grads = [q.grad.clone() for q in model.parameters()]
    with pytest.raises(TypeError, match="the model returned a tuple"):
        p.step(closure=lambda: (x, lambda out: nn.functional.mse_loss(out[0], y)))
    assert all(torch.equal(a, q.grad) for a, q in zip(grads, model.parameters()))
    assert p.steps == 0 and auto.steps == 0


# ------------------------------------------------------ activation checkpointing ----


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_gives_the_plain_factors_without_a_warning(use_reentrant):
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(6, 5, requires_grad=use_reentrant)
    plain = _mlp()
    p = P(plain, kl_clip=None)
    plain(x).pow(2).mean().backward()
    p.step()
    model = _mlp()
    q = P(model, kl_clip=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint(model, x, use_reentrant=use_reentrant).pow(2).mean().backward()
        q.step()
    for a, b in zip(p.layers, q.layers):
        assert torch.equal(a.A, b.A) and torch.equal(a.G, b.G)
    for a, b in zip(plain.parameters(), model.parameters()):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("kwargs", [dict(inv_lag_steps=1, inv_update_steps=2), dict(compute_method="inverse")])
def test_bias_frozen_mid_training_with_a_lagged_update_or_inverses(kwargs):
    """A lagged update of the old size lands before the slice; the inverse method
    recomputes the sliced layer's inverse the same way."""
    model = _mlp()
    p = P(model, kl_clip=None, damping=0.1, **kwargs)
    _train(model, p, steps=3)
    model[0].bias.requires_grad_(False)
    bias = model[0].bias.detach().clone()
    with pytest.warns(UserWarning, match="weight-only K-FAC"):
        _train(model, p, steps=3)
    assert torch.equal(model[0].bias, bias)
    assert p.layers[0].a_dim == 5 and all(torch.isfinite(q).all() for q in model.parameters())
    second = p._second[0]["A"]
    assert all(t.shape[-1] == 5 for t in second)


def test_bias_frozen_while_a_damping_measurement_is_pending_drops_it():
    batches = _batches(4)
    model, damping, p, opt = _adaptive_setup()
    _adaptive_steps(model, p, opt, batches[:2])
    assert damping.pending
    model[0].bias.requires_grad_(False)
    with pytest.warns(UserWarning, match="changed shape since the pending measurement"):
        _adaptive_steps(model, p, opt, batches[2:])
    assert damping.updates == 1  # step 3 finished step 2's measurement, on the new shapes
