"""KFACPreconditioner: bad batches, failing eigendecompositions, misuse, bad checkpoints."""

import warnings

import pytest
import torch
from torch import nn

import kfac_ext
from kfac_ext import ops
from kfac_ext.adaptive_damping import AdaptiveDamping


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4)).double()


def _x(seed=0):
    return torch.randn(6, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _backward(model, x):
    model.zero_grad()
    model(x).pow(2).mean().backward()


def _factors(p):
    return [(l.A.clone(), l.G.clone()) for l in p.layers]


def test_nan_batch_skips_factor_update_and_counts():
    model = _model()
    p = kfac_ext.KFACPreconditioner(model, inv_dtype=torch.float64)
    _backward(model, _x(0))
    p.step()
    before = _factors(p)
    eig_before = {i: [t.clone() for t in s["A"]] for i, s in p._second.items()}
    bad = _x(1)
    bad[0, 0, 0, 0] = float("nan")
    _backward(model, bad)
    with pytest.warns(UserWarning, match="non-finite"):
        p.step()
    assert p.skipped_factor_updates == len(p.layers)
    for (a0, g0), (a1, g1) in zip(before, _factors(p)):
        assert torch.equal(a0, a1) and torch.equal(g0, g1)
    for i, s in p._second.items():  # eigenbases recomputed from unchanged factors
        torch.testing.assert_close(s["A"][0], eig_before[i][0])
    _backward(model, _x(2))  # a clean batch afterwards updates again
    p.step()
    assert p.skipped_factor_updates == len(p.layers)
    assert all(l.factor_updates == 2 for l in p.layers)


def test_eigh_failure_keeps_previous_basis(monkeypatch):
    model = _model()
    p = kfac_ext.KFACPreconditioner(model, inv_dtype=torch.float64, kl_clip=None)
    _backward(model, _x(0))
    p.step()
    kept = {i: {w: [t.clone() for t in ts] for w, ts in s.items()} for i, s in p._second.items()}

    def failing(factors, clamp=True):
        raise RuntimeError("batched_eigh: factor 0 failed in float64")

    monkeypatch.setattr(ops, "batched_eigh", failing)
    _backward(model, _x(1))
    with pytest.warns(UserWarning, match="previous one is kept"):
        p.step()
    assert p.failed_inverse_updates == 2 * len(p.layers)
    for i, s in p._second.items():
        for w in "AG":
            assert all(torch.equal(a, b) for a, b in zip(s[w], kept[i][w]))
    # the gradient was still preconditioned with the kept basis
    monkeypatch.undo()
    assert all(torch.isfinite(l.module.weight.grad).all() for l in p.layers)


def test_first_eigh_failure_falls_back_to_identity(monkeypatch):
    model = _model()
    p = kfac_ext.KFACPreconditioner(model, inv_dtype=torch.float64, kl_clip=None, damping=0.25)

    def failing(factors, clamp=True):
        raise RuntimeError("batched_eigh: factor 0 failed in float64")

    monkeypatch.setattr(ops, "batched_eigh", failing)
    _backward(model, _x(0))
    raw = [m.weight.grad.clone() for m in (model[0], model[3])]
    with pytest.warns(UserWarning, match="identity is used"):
        p.step()
    # both factors identity: P = Γ / (1*1 + λ)
    for m, g in zip((model[0], model[3]), raw):
        torch.testing.assert_close(m.weight.grad, g / 1.25)


class _FunctionalUse(nn.Module):
    """out_proj's weight is used functionally (as in nn.MultiheadAttention): hooks never fire."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.out_proj = nn.Linear(4, 3)

    def forward(self, x):
        h = self.inner(x)
        return nn.functional.linear(h, self.out_proj.weight, self.out_proj.bias)


def test_hooks_never_fired_layer_is_skipped_with_warning():
    torch.manual_seed(0)
    model = _FunctionalUse()
    p = kfac_ext.KFACPreconditioner(model)
    model(torch.randn(5, 4)).sum().backward()
    raw = model.out_proj.weight.grad.clone()
    with pytest.warns(UserWarning, match="out_proj.*hooks never fired"):
        p.step()
    assert torch.equal(model.out_proj.weight.grad, raw)
    assert not torch.equal(model.inner.weight.grad, raw[:, :4].new_zeros(4, 4))


def test_multihead_attention_does_not_crash():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    p = kfac_ext.KFACPreconditioner(mha)
    x = torch.randn(3, 2, 8)
    mha(x, x, x)[0].sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # out_proj's hooks used to "never fire"; now it is captured
        p.step()
    assert [l.name for l in p.layers] == ["[q]", "[k]", "[v]", "[out]"]


def test_step_before_backward_raises():
    model = _model()
    p = kfac_ext.KFACPreconditioner(model)
    with pytest.raises(RuntimeError, match="before backward"):
        p.step()
    model.eval()
    with torch.no_grad():
        model(_x())
    with pytest.raises(RuntimeError, match="before backward"):
        p.step()


def test_eval_forward_is_not_captured():
    model = _model()
    p = kfac_ext.KFACPreconditioner(model)
    model.eval()
    model(_x()).sum().backward()  # eval mode + grad: documented as not captured
    assert all(l.a_count == 0 and l.g_count == 0 for l in p.layers)
    with pytest.warns(UserWarning, match="no factors yet"):
        p.step()  # nothing to precondition with: grads left as they are


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(damping=-1.0), "damping"),
        (dict(factor_decay=1.0), "factor_decay"),
        (dict(factor_decay=-0.1), "factor_decay"),
        (dict(factor_update_steps=0), "factor_update_steps"),
        (dict(inv_update_steps=-3), "inv_update_steps"),
        (dict(inv_update_steps=2.5), "inv_update_steps"),
        (dict(kl_clip=0.0), "kl_clip"),
        (dict(lr=-0.1), "lr"),
        (dict(accumulation_steps=0), "accumulation_steps"),
        (dict(compute_method="cholesky"), "compute_method"),
        (dict(factor_dtype=torch.int32), "factor_dtype"),
        (dict(damping=lambda step: -1.0), "damping"),
    ],
)
def test_invalid_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        kfac_ext.KFACPreconditioner(_model(), **kwargs)


class _TwoRanks:
    """A comm that does not precondition every layer on every rank (as HYBRID/MEM-OPT)."""

    world_size = 2
    replicates_preconditioning = False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(inv_lag_steps=-1), "inv_lag_steps"),
        (dict(eigen_refresh=3), "eigen_refresh"),
        (dict(precondition_dtype=torch.bfloat16, compute_method="inverse"), "precondition_dtype"),
        (dict(max_factor_bytes=0), "max_factor_bytes"),
        (dict(kfac_approx="mean"), "kfac_approx"),
        (dict(defaults=[1]), "defaults"),
        (dict(precondition_dtype=torch.bfloat16, comm=_TwoRanks()), "precondition_dtype"),
        (dict(relative_damping=1), "relative_damping"),
        (dict(relative_damping=True, damping=AdaptiveDamping(0.1)), "relative_damping"),
    ],
)
def test_refused_configuration_leaves_the_model_untouched(kwargs, match):
    # A constructor that raises must not leave hooks behind: they would keep
    # capturing activations for a preconditioner nobody holds.
    model = _model()
    with pytest.raises(ValueError, match=match):
        kfac_ext.KFACPreconditioner(model, **kwargs)
    assert all(not m._forward_hooks for m in model.modules())


def test_schedule_turning_invalid_raises_at_step():
    model = _model()
    p = kfac_ext.KFACPreconditioner(model, damping=lambda step: 0.01 if step < 1 else -1.0)
    _backward(model, _x())
    p.step()
    _backward(model, _x())
    with pytest.raises(ValueError, match="damping.*step 1"):
        p.step()


def test_kl_clip_none_disables_clipping():
    results = []
    for kl_clip in (None, 1e300):  # a huge lr would clip any finite kl_clip hard
        model = _model()
        p = kfac_ext.KFACPreconditioner(model, kl_clip=kl_clip, lr=1e6, inv_dtype=torch.float64)
        _backward(model, _x())
        p.step()
        results.append([m.weight.grad.clone() for m in (model[0], model[3])])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_load_state_dict_rejects_wrong_shapes_and_layers():
    model = _model()
    p = kfac_ext.KFACPreconditioner(model, inv_dtype=torch.float64)
    _backward(model, _x())
    p.step()
    good = p.state_dict()
    fresh = kfac_ext.KFACPreconditioner(_model(), inv_dtype=torch.float64)
    before = _factors(fresh)

    bad = p.state_dict()
    bad["layers"]["3"]["G"] = torch.eye(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="layer '3'.*factor G"):
        fresh.load_state_dict(bad)
    bad = p.state_dict()
    bad["layers"]["3"]["second_order"]["A"][1] = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="layer '3'"):
        fresh.load_state_dict(bad)
    bad = p.state_dict()
    bad["layers"]["extra"] = bad["layers"].pop("0")
    with pytest.raises(ValueError, match="'0'.*'extra'"):
        fresh.load_state_dict(bad)
    with pytest.raises(ValueError, match="not a KFACPreconditioner state dict"):
        fresh.load_state_dict({"layers": {}})
    # nothing was loaded by the failed attempts
    for (a0, g0), (a1, g1) in zip(before, _factors(fresh)):
        assert torch.equal(a0, a1) and torch.equal(g0, g1)
    assert fresh.steps == 0 and not fresh._second
    fresh.load_state_dict(good)
    assert fresh.steps == 1
