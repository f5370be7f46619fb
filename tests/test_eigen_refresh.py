"""eigen_refresh.SkipTest: keep a factor's eigenbasis while ‖offdiag(QᵀFQ)‖_F ≤ tol‖F‖_F.

The bound is checked in float64 against the factor itself (F − Q diag(d) Qᵀ),
the fallback against an exact eigh of the same factor, and the integration
through KFACPreconditioner against its own running factors at every update.
"""

import io

import pytest
import torch
from torch import nn

import kfac_ext
from kfac_ext import ops
from kfac_ext.eigen_refresh import SkipTest


def _rel_residual(f, d, q):
    f, d, q = f.double(), d.double(), q.double()
    return float((f - q @ torch.diag(d) @ q.T).norm() / f.norm())


def _running_factors(n, steps, seed, rank=5, decay=0.9):
    """A running average of random low-rank covariances, as K-FAC keeps it."""
    g = torch.Generator().manual_seed(seed)
    f = torch.eye(n)
    out = []
    for _ in range(steps):
        x = torch.randn(rank, n, generator=g)
        f = decay * f + (1 - decay) * (x.T @ x) / rank
        out.append(f.clone())
    return out


def _exact(fs):
    values, vectors = ops.batched_eigh(fs)
    return [[d, q] for d, q in zip(values, vectors)]


@pytest.mark.parametrize("tol", [0.02, 0.05, 0.15])
def test_kept_basis_is_within_tol_of_the_factor(tol):
    seqs = [_running_factors(n, 40, seed=n, decay=0.98) for n in (7, 23, 37)]
    refresh = SkipTest(tol)
    previous = [None] * len(seqs)
    for t in range(40):
        factors = [s[t] for s in seqs]
        previous = refresh.solve(factors, previous, _exact)
        for f, (d, q) in zip(factors, previous):
            assert _rel_residual(f, d, q) <= tol * (1 + 1e-4) + 1e-6
    assert 0 < refresh.kept < refresh.checked  # both branches were taken
    assert refresh.skip_rate == refresh.kept / refresh.checked


def test_a_larger_tol_keeps_at_least_as_often():
    seq = _running_factors(19, 60, seed=3)
    rates = []
    for tol in (0.01, 0.05, 0.2):
        refresh, prev = SkipTest(tol), [None]
        for f in seq:
            prev = refresh.solve([f], prev, _exact)
        rates.append(refresh.kept)
    assert rates == sorted(rates) and rates[-1] > rates[0]


def test_failed_test_falls_back_to_exact_eigh_of_those_factors_only():
    f_moved = _running_factors(11, 1, seed=1)[0]
    other = _running_factors(11, 1, seed=2)[0]
    f_same = _running_factors(13, 3, seed=4)[-1]
    stale = _exact([other])[0]  # a basis of an unrelated factor: test fails
    exact_same = _exact([f_same])[0]  # its own basis: test passes
    calls = []

    def exact(fs):
        calls.append([f.shape[0] for f in fs])
        return _exact(fs)

    refresh = SkipTest(0.05)
    (d1, q1), (d2, q2) = refresh.solve([f_moved, f_same], [stale, exact_same], exact)
    assert calls == [[11]]
    want_d, want_q = _exact([f_moved])[0]
    torch.testing.assert_close(d1, want_d)
    torch.testing.assert_close(q1, want_q)
    assert q2 is exact_same[1] and (refresh.checked, refresh.kept) == (2, 1)


def test_no_previous_basis_means_exact_without_a_test():
    f = _running_factors(9, 2, seed=0)[-1]
    refresh = SkipTest(0.5)
    ((d, q),) = refresh.solve([f], [None], _exact)
    assert refresh.checked == 0 and _rel_residual(f, d, q) < 1e-5


def test_zero_factor_keeps_its_basis_with_zero_eigenvalues():
    q = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))[0]
    ((d, q2),) = SkipTest(0.01).solve([torch.zeros(6, 6)], [[torch.ones(6), q]], _exact)
    assert q2 is q and torch.equal(d, torch.zeros(6))


def test_nonfinite_factor_never_installs_a_nonfinite_basis():
    prev = _exact([_running_factors(8, 3, seed=5)[-1]])[0]
    bad = torch.eye(8)
    bad[3, 3] = float("nan")
    refresh = SkipTest(0.1)

    def exact(fs):
        raise AssertionError("a non-finite factor with a previous basis must not be decomposed")

    (out,) = refresh.solve([bad], [prev], exact)
    assert out is prev and refresh.nonfinite == 1 and refresh.kept == 0
    inf = torch.eye(8)
    inf[0, 1] = inf[1, 0] = float("inf")
    (out,) = refresh.solve([inf], [prev], exact)
    assert out is prev and refresh.nonfinite == 2


@pytest.mark.parametrize("tol", [-0.1, 1.0, float("nan"), True, "0.1"])
def test_bad_tol_is_a_clear_error(tol):
    with pytest.raises(ValueError, match="tol must be a number in"):
        SkipTest(tol)


# ------------------------------------------------------- KFACPreconditioner ----


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 7), nn.ReLU(), nn.Linear(7, 3)
    )


def _train(model, pre, steps, start=0, record=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for s in range(start, start + steps):
        g = torch.Generator().manual_seed(100 + s)
        x, y = torch.randn(16, 2, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        pre.step()
        if record is not None:
            record.append([p.grad.clone() for p in model.parameters()])
        opt.step()


def test_preconditioner_bases_stay_within_tol_of_the_running_factors():
    model, refresh = _model(), SkipTest(0.05)
    pre = kfac_ext.KFACPreconditioner(
        model, factor_update_steps=1, inv_update_steps=3, eigen_refresh=refresh, kl_clip=None
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for s in range(45):
        g = torch.Generator().manual_seed(s)
        model.zero_grad()
        nn.functional.cross_entropy(
            model(torch.randn(16, 2, 6, 6, generator=g)), torch.randint(0, 3, (16,), generator=g)
        ).backward()
        pre.step()
        opt.step()
        if s % 3 == 0:  # an update step: every basis describes the factor it was built from
            for i, layer in enumerate(pre.layers):
                for w, f in (("A", layer.A), ("G", layer.G)):
                    d, q = pre._second[i][w]
                    assert _rel_residual(f, d, q) <= 0.05 * (1 + 1e-4) + 1e-6
    assert refresh.kept > 0 and refresh.checked == 2 * len(pre.layers) * 14


def test_state_dict_round_trip_continues_identically():
    model_a = _model()
    pre_a = kfac_ext.KFACPreconditioner(model_a, inv_update_steps=2, eigen_refresh=SkipTest(0.1))
    _train(model_a, pre_a, 7)
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "pre": pre_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    model_b = _model()
    model_b.load_state_dict(saved["model"])
    refresh_b = SkipTest(0.1)
    pre_b = kfac_ext.KFACPreconditioner(model_b, inv_update_steps=2, eigen_refresh=refresh_b)
    pre_b.load_state_dict(saved["pre"])
    rec_a, rec_b = [], []
    _train(model_a, pre_a, 8, start=7, record=rec_a)
    _train(model_b, pre_b, 8, start=7, record=rec_b)
    assert refresh_b.kept > 0  # the loaded bases were tested and kept
    for ga, gb in zip(rec_a, rec_b):
        for a, b in zip(ga, gb):
            assert torch.equal(a, b)


def test_nan_running_factor_keeps_the_basis_in_the_preconditioner():
    model = _model()
    pre = kfac_ext.KFACPreconditioner(model, factor_update_steps=100, inv_update_steps=2, eigen_refresh=SkipTest(0.1))
    _train(model, pre, 2)
    before = [{w: [t.clone() for t in pre._second[i][w]] for w in "AG"} for i in range(len(pre.layers))]
    pre.layers[1].A[0, 0] = float("nan")  # a corrupted running factor (e.g. a bad load)
    rec = []
    _train(model, pre, 1, start=2, record=rec)  # step 2: an update step
    assert all(torch.isfinite(g).all() for g in rec[0])
    for t, t0 in zip(pre._second[1]["A"], before[1]["A"]):
        assert torch.equal(t, t0)  # the previous basis, untouched
    assert all(torch.isfinite(t).all() for s in pre._second.values() for ts in s.values() for t in ts)
    assert pre.eigen_refresh.nonfinite == 1


def test_preconditioner_rejects_bad_eigen_refresh():
    with pytest.raises(ValueError, match="eigen_refresh must be None"):
        kfac_ext.KFACPreconditioner(_model(), eigen_refresh="skip")
    with pytest.raises(ValueError, match="eigen_refresh applies to compute_method='eigen'"):
        kfac_ext.KFACPreconditioner(_model(), compute_method="inverse", eigen_refresh=SkipTest(0.1))
    with pytest.raises(ValueError, match="inv_lag_steps"):
        kfac_ext.KFACPreconditioner(_model(), inv_lag_steps=1, eigen_refresh=SkipTest(0.1))


def test_default_is_exact_eigh():
    pre = kfac_ext.KFACPreconditioner(_model())
    assert pre.eigen_refresh is None
