"""methods.damped_inverses (the inverse method's solve: factors of one shape in one batched
Cholesky, one check of info and of the Cholesky diagonal) against float64 dense inverses,
and its failure paths: a factor whose float32 Cholesky fails is retried alone in float64,
a non-finite or indefinite one raises as damped_inverse always did."""

import pytest
import torch
from _tensors import randn, spd

from kfac_ext import methods
from kfac_ext.methods import damped_inverse, damped_inverses, method
from kfac_ext.second_order import DiagonalData, InverseData

# odd sizes, repeated ones (a batch) and single ones (a batch of one)
SIZES = [1, 3, 65, 3, 257, 65, 130, 65, 5]


def _exact(f, damping):
    n = f.shape[0]
    return torch.linalg.inv(f.double() + damping * torch.eye(n, dtype=torch.float64))


def _rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_matches_float64_inverse(dtype, tol):
    damping = 0.01
    factors = [spd(n, seed=10 + k).to(dtype) for k, n in enumerate(SIZES)]
    out = damped_inverses(factors, damping)
    assert len(out) == len(factors)
    for f, x in zip(factors, out):
        assert x.shape == f.shape and x.dtype == dtype
        assert _rel(x, _exact(f, damping)) < tol
        # the one-factor function's numbers, to rounding: a batched LAPACK call may order its
        # sums differently (6e-8 in norm in float32 with one thread, where entries near zero
        # differ by more than an elementwise rtol allows)
        assert _rel(x, damped_inverse(f, damping).double()) < (1e-6 if dtype == torch.float32 else 1e-14)


def test_results_are_separate_tensors():
    """A batch's results are copies: a state dict of one saves n² numbers, and writing one
    leaves the others as they were."""
    factors = [spd(65, seed=k).float() for k in range(3)]
    out = damped_inverses(factors, 0.1)
    for x in out:
        assert x.untyped_storage().nbytes() == 65 * 65 * 4
    before = out[1].clone()
    out[0].zero_()
    assert torch.equal(out[1], before)


def test_solve_keeps_order_with_diagonal_factors():
    damping = 0.03
    factors = [
        spd(7, seed=1).float(),
        randn(4, seed=2).abs().float(),
        spd(7, seed=3).float(),
        spd(9, seed=4).float(),
        randn(5, seed=5).abs().float(),
    ]
    data = method("inverse").solve(factors, damping)
    for f, d in zip(factors, data):
        if f.dim() == 1:
            assert isinstance(d, DiagonalData)
            torch.testing.assert_close(d.values, 1.0 / (f + damping))
        else:
            assert isinstance(d, InverseData)
            assert _rel(d.inverse, _exact(f, damping)) < 2e-5


def _fails_in_float32(n=40, damping=1e-9, seed=7):
    """F + λI positive definite (its smallest eigenvalue 2e-9), but in float32 a leading
    block [[1 + λ, 1 - 1e-9], [1 - 1e-9, 1 + λ]] rounds to [[1, 1], [1, 1]] (singular),
    rotated into the other rows by an orthogonal Q so that no row is trivial."""
    f = torch.eye(n, dtype=torch.float64)
    f[0, 1] = f[1, 0] = 1 - 1e-9
    q, _ = torch.linalg.qr(randn(n - 2, n - 2, seed=seed))
    f[2:, 2:] = (q * torch.linspace(0.5, 2.0, n - 2, dtype=torch.float64)) @ q.T
    return f


def test_float32_failure_is_retried_alone_in_float64(monkeypatch):
    damping = 1e-9
    bad = _fails_in_float32()
    chol, info = torch.linalg.cholesky_ex(bad.float() + damping * torch.eye(40))
    assert int(info) != 0 or not bool(torch.isfinite(chol).all()), "the case must fail in float32"
    good = [spd(40, seed=s) for s in (1, 2)]
    factors = [good[0].float(), bad.float(), good[1].float()]

    calls = []

    def spy(f, damping):
        calls.append(f)
        return damped_inverse(f, damping)

    monkeypatch.setattr(methods, "damped_inverse", spy)
    out = damped_inverses(factors, damping)
    # only the failed one goes alone to damped_inverse (which retries itself in float64)
    assert calls[0] is factors[1] and [c.dtype for c in calls] == [torch.float32, torch.float64]
    for f, x in zip(factors, out):
        assert x.dtype == torch.float32
        # float64's solve of the float32 factor (what the retry computes), to float32 accuracy
        ref = _exact(f, damping)
        assert _rel(x, ref) < 1e-4


@pytest.mark.parametrize("where", [(0, 0), (39, 0), (39, 39), (20, 3)])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_factor_raises(where, value):
    """A NaN or Inf anywhere in the factor fails the check (it reaches the Cholesky
    diagonal), the float64 retry fails too, and the error is damped_inverse's."""
    factors = [spd(40, seed=s).float() for s in range(3)]
    i, j = where
    factors[1][i, j] = value
    factors[1][j, i] = value
    with pytest.raises(RuntimeError, match="Cholesky of a 40x40 factor failed"):
        damped_inverses(factors, 0.01)


def test_indefinite_factor_raises():
    factors = [spd(6, seed=0), -torch.eye(6, dtype=torch.float64)]
    with pytest.raises(RuntimeError, match="Cholesky of a 6x6 factor failed"):
        damped_inverses(factors, 0.5)


def test_empty():
    assert damped_inverses([], 0.1) == []
