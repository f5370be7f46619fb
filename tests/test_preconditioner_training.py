"""KFACPreconditioner in training loops: checkpoints, accumulation, AMP, digits, curvlinops."""

import io

import pytest
import torch
import torch.nn.functional as F
from _kfac_reference import batch_factors, captured_io
from torch import nn

import kfac_ext


def _cnn(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    ).to(dtype)


def _batch(step, n=12, dtype=torch.float64):
    gen = torch.Generator().manual_seed(100 + step)
    return (torch.randn(n, 1, 8, 8, generator=gen, dtype=dtype), torch.randint(0, 5, (n,), generator=gen))


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _train(model, precond, opt, steps, start=0):
    for s in range(start, start + steps):
        x, y = _batch(s)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        precond.step()
        opt.step()


@pytest.mark.parametrize("include_eigens, k", [(True, 4), (True, 5), (False, 6)])
def test_checkpoint_gives_bit_identical_next_step(include_eigens, k):
    kwargs = dict(factor_update_steps=2, inv_update_steps=3, damping=0.01, inv_dtype=torch.float64)
    model = _cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    p = kfac_ext.KFACPreconditioner(model, **kwargs)
    _train(model, p, opt, k)
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "kfac": p.state_dict(include_eigens=include_eigens)}, buf
    )
    # step k+1 (index k) on the original; without eigens k must be an inverse step (k % 3 == 0)
    x, y = _batch(k)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    p.step()
    want = _grads(model)

    buf.seek(0)
    saved = torch.load(buf)
    model2 = _cnn(seed=1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    p2 = kfac_ext.KFACPreconditioner(model2, **kwargs)
    p2.load_state_dict(saved["kfac"])
    opt2.zero_grad()
    F.cross_entropy(model2(x), y).backward()
    p2.step()
    for a, b in zip(want, _grads(model2)):
        assert torch.equal(a, b)


def test_accumulation_equals_combined_batch():
    x, y = _batch(0, n=16)
    results = []
    for micro in (1, 2, 4):
        model = _cnn()
        p = kfac_ext.KFACPreconditioner(model, accumulation_steps=micro, damping=0.01, inv_dtype=torch.float64)
        for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
            (F.cross_entropy(model(xs), ys) / micro).backward()
        p.step()
        results.append((_grads(model), [l.A.clone() for l in p.layers]))
    for grads, factors in results[1:]:
        for a, b in zip(results[0][1], factors):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
        for a, b in zip(results[0][0], grads):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_grad_scaler_unscales_g_and_kl_clip():
    x, y = _batch(0)
    scale = 2.0**10
    out = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=scale)):
        model = _cnn()
        p = kfac_ext.KFACPreconditioner(model, grad_scaler=scaler, kl_clip=1e-4, lr=0.5, inv_dtype=torch.float64)
        loss = F.cross_entropy(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        p.step()
        out.append(([l.G.clone() for l in p.layers], _grads(model)))
    for g0, g1 in zip(out[0][0], out[1][0]):
        torch.testing.assert_close(g0, g1, rtol=1e-9, atol=1e-15)
    for p0, p1 in zip(out[0][1], out[1][1]):  # still scaled: P(scaled) = scale * P
        torch.testing.assert_close(p0 * scale, p1, rtol=1e-8, atol=1e-12)


def test_bfloat16_autocast_accumulates_float32_factors():
    torch.manual_seed(0)
    layer = nn.Linear(9, 5)
    p = kfac_ext.KFACPreconditioner(layer, factor_decay=0.0)
    x = torch.randn(32, 9)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        out.float().pow(2).mean().backward()

    xin, gout = captured_io(layer, run)
    assert xin.dtype == torch.float64  # captured_io hands back float64 copies of bf16 tensors
    p.step()
    a, g = batch_factors(layer, xin, gout)
    assert p.layers[0].A.dtype == torch.float32 and p.layers[0].G.dtype == torch.float32
    torch.testing.assert_close(p.layers[0].A.double(), a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p.layers[0].G.double(), g, rtol=1e-5, atol=1e-9)
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()


def test_growing_intervals_capture_only_on_update_steps():
    from kfac_ext.schedules import growing_interval

    model = _cnn()
    p = kfac_ext.KFACPreconditioner(
        model, factor_update_steps=growing_interval(1, 2, every=3), inv_update_steps=growing_interval(2, 2, every=3)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    captured = []
    for s in range(12):
        captured.append(p._capturing)
        _train(model, p, opt, 1, start=s)
    # interval 1 for steps 0-2, 2 for 3-5, 4 for 6-8, 8 for 9-11
    assert [i for i, c in enumerate(captured) if c] == [0, 1, 2, 4, 8]
    assert p.layers[0].factor_updates == 5


def test_digits_kfac_beats_sgd():
    sklearn = pytest.importorskip("sklearn.datasets")
    digits = sklearn.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    x, y = x[:1024], y[:1024]

    def run(use_kfac):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 10),
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        p = (
            kfac_ext.KFACPreconditioner(model, damping=0.01, lr=0.05, factor_update_steps=2, inv_update_steps=4)
            if use_kfac
            else None
        )
        gen = torch.Generator().manual_seed(1)
        for step in range(60):
            idx = torch.randint(0, len(x), (64,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            if p is not None:
                p.step()
            opt.step()
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    sgd, kfac = run(False), run(True)
    assert kfac < sgd, (kfac, sgd)


def test_factors_match_curvlinops():
    curvlinops = pytest.importorskip("curvlinops")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)
    ).double()
    n = 7
    x = torch.randn(n, 2, 7, 7, dtype=torch.float64)
    y = torch.randint(0, 4, (n,))
    params = [p for p in model.parameters()]
    op = curvlinops.KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        params,
        [(x, y)],
        fisher_type="empirical",
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    op.compute_kronecker_factors()
    p = kfac_ext.KFACPreconditioner(model, factor_decay=0.0)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    p.step()
    # curvlinops (KFAC-expand, mean loss, empirical Fisher): A = xᵀx/(N·T) on raw patches,
    # G = N·gᵀg summed over rows. Ours (docs/design.md §2): patches and g divided by T, rows N·T:
    # A_ours = A_cl / T²,  G_ours = G_cl / (N² T³);  Linear: T = 1.
    conv, lin = p.layers
    t = model[0](x[:1]).shape[-1] * model[0](x[:1]).shape[-2]
    torch.testing.assert_close(conv.A, op._input_covariances["0"] / t**2)
    torch.testing.assert_close(conv.G, op._gradient_covariances["0"] / (n**2 * t**3))
    torch.testing.assert_close(lin.A, op._input_covariances["3"])
    torch.testing.assert_close(lin.G, op._gradient_covariances["3"] / n**2)
