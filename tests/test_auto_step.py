"""AutoStep: the exact quadratic model's curvature products (against an explicit float64
Gauss–Newton matrix), the (α, μ) it chooses, the step SGD(lr=1) applies, its guards and
its state."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from kfac_ext import KFACPreconditioner
from kfac_ext.adaptive_damping import AdaptiveDamping
from kfac_ext.auto_step import AutoStep, curvature_products, solve_step
from kfac_ext.comm import LocalComm

N = 5  # batch


def _model():
    """Conv2d then Linear on odd shapes, float64."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5 * 4, 7)).double()


def _batch(kind):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, 2, 5, 4, generator=g, dtype=torch.float64)
    if kind == "ce":
        y = torch.randint(0, 7, (N,), generator=g)
        return x, lambda out: F.cross_entropy(out, y)
    t = torch.randn(N, 7, generator=g, dtype=torch.float64)
    return x, lambda out: F.mse_loss(out, t, reduction="sum") / N


def _explicit_ggn(model, x, loss_of_outputs):
    """Jᵀ H J of the batch-mean loss over all parameters (flattened in named order)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def unflatten(vec):
        out, k = {}, 0
        for n, s in zip(names, shapes):
            out[n] = vec[k : k + s.numel()].reshape(s)
            k += s.numel()
        return out

    def outputs(vec):
        return functional_call(model, unflatten(vec), (x,)).reshape(-1)

    out = outputs(theta).detach()
    jac = torch.autograd.functional.jacobian(outputs, theta)  # (outs, P)
    hess = torch.autograd.functional.hessian(lambda o: loss_of_outputs(o.reshape(N, -1)), out)  # (outs, outs)
    return jac.T @ hess @ jac, unflatten


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_curvature_products_equal_the_explicit_gauss_newton_matrix(kind):
    model = _model()
    x, loss = _batch(kind)
    ggn, _ = _explicit_ggn(model, x, loss)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    g = torch.Generator().manual_seed(4)
    dirs = torch.randn(2, sum(p.numel() for p in params), generator=g, dtype=torch.float64)
    got, got_loss = curvature_products(model, names, params, dirs, x, loss)
    u, v = dirs
    want = torch.stack([torch.stack([a @ ggn @ b for b in (u, v)]) for a in (u, v)])
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert want[0, 1].abs() > 1e-3 and want.diagonal().min() > 0  # not a trivial check
    assert float(got_loss) == pytest.approx(loss(model(x)).item(), rel=1e-12)
    one, _ = curvature_products(model, names, params, dirs[:1], x, loss)
    assert torch.allclose(one, want[:1, :1], rtol=1e-10)


def test_solve_step_is_the_closed_form_minimiser_and_falls_back():
    curv = torch.tensor([[3.0, 0.5], [0.5, 2.0]], dtype=torch.float64)
    norms = torch.tensor([[1.0, 0.2], [0.2, 0.5]], dtype=torch.float64)
    lin = torch.tensor([-1.0, 0.4], dtype=torch.float64)
    c, how = solve_step(curv, norms, lin, 0.3)
    a, b, d = 3.0 + 0.3, 0.5 + 0.3 * 0.2, 2.0 + 0.3 * 0.5
    det = a * d - b * b
    alpha, mu = -(d * -1.0 - b * 0.4) / det, -(a * 0.4 - b * -1.0) / det  # Cramer's rule
    assert how == "full" and c.tolist() == pytest.approx([alpha, mu], rel=1e-12)
    # δ parallel to Δ: singular 2x2, the 1-D problem in Δ.
    sing = torch.tensor([[2.0, 4.0], [4.0, 8.0]], dtype=torch.float64)
    c, how = solve_step(sing, sing, torch.tensor([-1.0, -2.0], dtype=torch.float64), 1.0)
    assert how == "1d" and c.tolist() == pytest.approx([1.0 / 4.0, 0.0])
    nan = curv.clone()
    nan[1, 1] = math.nan
    assert solve_step(nan, norms, lin, 0.3)[1] == "1d"
    neg = -torch.eye(2, dtype=torch.float64)
    assert solve_step(neg, 0 * neg, lin, 0.0) == (None, "skip")
    assert solve_step(neg[:1, :1], neg[:1, :1] * 0, lin[:1], 0.0) == (None, "skip")


@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_the_step_is_the_exact_model_minimiser_and_sgd_lr1_applies_it(kind):
    """Two steps on one batch (the second has momentum), each checked against α, μ
    solved from the explicit GGN; SGD(lr=1) moves θ by exactly the written step."""
    eta, lam, damping = 1e-2, 0.05, 0.1
    model = _model()
    x, loss = _batch(kind)
    auto = AutoStep(damping=lam, weight_decay=eta, interval=0)
    pre = KFACPreconditioner(model, comm=LocalComm(), kl_clip=None, damping=damping, auto_step=auto)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    previous = None
    for step in range(3):
        twin = copy.deepcopy(model)
        # The twin's factors must be this step's: copy the running state into it.
        direction, g = _twin_direction_with_state(pre, twin, x, loss, eta, damping)
        ggn, _ = _explicit_ggn(copy.deepcopy(model), x, loss)  # (a copy: no capture)
        theta = _flat([p.detach() for p in model.parameters()]).clone()
        dirs = [_flat(direction)] + ([theta - previous] if previous is not None else [])
        k = len(dirs)
        system = torch.tensor(
            [[float(a @ (ggn + (lam + eta) * torch.eye(len(a), dtype=a.dtype)) @ b) for b in dirs] for a in dirs],
            dtype=torch.float64,
        )
        lin = torch.tensor([float(_flat(g) @ d) for d in dirs], dtype=torch.float64)
        want = -torch.linalg.solve(system, lin)

        opt.zero_grad()
        loss(model(x)).backward()
        pre.step(closure=lambda: (x, loss))
        got = [auto.last_alpha] + ([auto.last_mu] if k == 2 else [])
        assert got == pytest.approx(want.tolist(), rel=1e-8, abs=1e-12)
        if k == 1:
            assert auto.last_mu == 0.0
        else:
            assert abs(auto.last_mu) > 1e-6
        written = -_flat([p.grad for p in model.parameters()])
        assert torch.allclose(written, sum(c * d for c, d in zip(want, dirs)), rtol=1e-8, atol=1e-12)
        opt.step()
        moved = _flat([p.detach() for p in model.parameters()])
        assert torch.equal(moved, theta + written)  # exactly the written step
        previous = theta
    assert auto.fallbacks == {"1d": 0, "skip": 0}


def _twin_direction_with_state(pre, twin, x, loss, eta, damping):
    """The direction the auto-step preconditioner will take, from a twin preconditioner
    (no auto_step) loaded with its state: -(P(g + ηθ)) on every parameter."""
    other = KFACPreconditioner(twin, comm=LocalComm(), kl_clip=None, damping=damping)
    state = pre.state_dict()
    state.pop("auto_step", None)
    other.load_state_dict(state)
    loss(twin(x)).backward()
    for p in twin.parameters():
        p.grad.add_(p.detach(), alpha=eta)
    g = [p.grad.clone() for p in twin.parameters()]
    other.step()
    return [-p.grad.clone() for p in twin.parameters()], g


def test_unregistered_parameters_take_minus_the_gradient():
    """A layer K-FAC skips enters Δ as -g: with everything skipped Δ = -(g + ηθ)."""
    model = _model()
    x, loss = _batch("ce")
    auto = AutoStep(damping=0.1, weight_decay=0.0, interval=0)
    with pytest.warns(UserWarning, match="no layer registered"):
        pre = KFACPreconditioner(
            model, comm=LocalComm(), kl_clip=None, auto_step=auto, skip_layers=["Conv2d", "Linear"]
        )
    loss(model(x)).backward()
    g = [p.grad.clone() for p in model.parameters()]
    pre.step(closure=lambda: (x, loss))
    ggn, _ = _explicit_ggn(model, x, loss)
    d = -_flat(g)
    alpha = float(-(_flat(g) @ d) / (d @ ggn @ d + 0.1 * d @ d))
    assert auto.last_alpha == pytest.approx(alpha, rel=1e-9)
    assert torch.allclose(_flat([p.grad for p in model.parameters()]), -alpha * d)


def test_a_quadratic_loss_gives_ratio_one_and_less_damping():
    """Linear model, squared error: the GGN is the Hessian, the model exact, ρ = 1."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3).double()
    x, t = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    loss = lambda out: F.mse_loss(out, t, reduction="sum") / 9  # noqa: E731
    auto = AutoStep(damping=1.0, weight_decay=0.01, interval=2)
    pre = KFACPreconditioner(model, comm=LocalComm(), kl_clip=None, auto_step=auto)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(5):
        opt.zero_grad()
        loss(model(x)).backward()
        pre.step(closure=lambda: (x, loss))
        opt.step()
    assert auto.lm.updates == 3  # measured at steps 0, 2 and 4, each inside its step
    assert auto.lm.last_rho == pytest.approx(1.0, abs=1e-9)
    assert auto.damping == pytest.approx(((19 / 20) ** 2) ** 3)


def test_negative_curvature_skips_the_step_without_touching_the_parameters():
    model = _model()
    x, _ = _batch("ce")
    loss = lambda out: -(out**2).sum() / N  # noqa: E731  (concave in the outputs)
    auto = AutoStep(damping=1e-8, interval=0)
    pre = KFACPreconditioner(model, comm=LocalComm(), kl_clip=None, auto_step=auto)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    loss(model(x)).backward()
    with pytest.warns(UserWarning, match="skipped"):
        pre.step(closure=lambda: (x, loss))
    opt.step()
    assert auto.fallbacks["skip"] == 1
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("sgd", [dict(lr=0.5), dict(lr=1.0, momentum=0.9), dict(lr=1.0, weight_decay=0.1)])
def test_an_optimizer_that_does_not_apply_the_step_is_refused(sgd):
    model = _model()
    x, loss = _batch("ce")
    pre = KFACPreconditioner(model, comm=LocalComm(), kl_clip=None, auto_step=AutoStep(damping=0.1))
    opt = torch.optim.SGD(model.parameters(), **sgd)
    with pytest.raises(RuntimeError, match="lr=1.0"):
        for _ in range(3):
            opt.zero_grad()
            loss(model(x)).backward()
            pre.step(closure=lambda: (x, loss))
            opt.step()


def test_state_dict_round_trip_continues_identically():
    x, loss = _batch("mse")

    def make(model):
        auto = AutoStep(damping=0.3, weight_decay=1e-3, interval=2)
        return (
            auto,
            KFACPreconditioner(model, comm=LocalComm(), kl_clip=None, auto_step=auto, damping=0.1),
            torch.optim.SGD(model.parameters(), lr=1.0),
        )

    def run(model, pre, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss(model(x)).backward()
            pre.step(closure=lambda: (x, loss))
            opt.step()

    model = _model()
    auto, pre, opt = make(model)
    run(model, pre, opt, 4)  # steps 0-3: step 2's measurement is finished, none pending
    saved_model, saved_pre = copy.deepcopy(model.state_dict()), copy.deepcopy(pre.state_dict())
    run(model, pre, opt, 2)
    other = _model()
    other_auto, other_pre, other_opt = make(other)
    other.load_state_dict(saved_model)
    other_pre.load_state_dict(saved_pre)
    assert other_auto.damping == saved_pre["auto_step"]["damping"]["value"]
    run(other, other_pre, other_opt, 2)
    assert other_auto.last_mu == auto.last_mu != 0.0  # δ came through the state
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    bad = copy.deepcopy(saved_pre)
    bad["auto_step"]["previous_params"]["0.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match="previous_params"):
        other_pre.load_state_dict(bad)


def test_bad_settings_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="kl_clip=None"):
        KFACPreconditioner(model, comm=LocalComm(), auto_step=AutoStep())
    with pytest.raises(ValueError, match="AdaptiveDamping"):
        KFACPreconditioner(model, comm=LocalComm(), kl_clip=None, auto_step=AutoStep(), damping=AdaptiveDamping(1.0))
    with pytest.raises(TypeError, match="auto_step"):
        KFACPreconditioner(model, comm=LocalComm(), kl_clip=None, auto_step=True)
    for kwargs, words in (
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(interval=-1), "interval"),
        (dict(damping=0.0), "damping"),
        (dict(damping=True), "damping"),
    ):
        with pytest.raises(ValueError, match=words):
            AutoStep(**kwargs)
    pre = KFACPreconditioner(model, comm=LocalComm(), kl_clip=None, auto_step=AutoStep())
    x, loss = _batch("ce")
    loss(model(x)).backward()
    with pytest.raises(ValueError, match="closure"):
        pre.step()
