"""methods.damped_inverses (the inverse method's solve: on the CPU the recursive block op
torch.ops.kfac_ext.damped_inverses, elsewhere methods.cholesky_inverses, factors of one shape
in one batched Cholesky) against float64 dense inverses, against LAPACK's accuracy on
ill-conditioned factors, and its failure paths: a factor whose float32 pivots fail is
retried alone in float64, a non-finite or indefinite one raises as damped_inverse always did."""

import pytest
import torch
from _tensors import randn, spd

from kfac_ext import methods
from kfac_ext.methods import cholesky_inverses, damped_inverse, damped_inverses, method
from kfac_ext.second_order import DiagonalData, InverseData

# odd sizes, repeated ones (a batch) and single ones (a batch of one)
SIZES = [1, 3, 65, 3, 257, 65, 130, 65, 5]


def _exact(f, damping):
    n = f.shape[0]
    return torch.linalg.inv(f.double() + damping * torch.eye(n, dtype=torch.float64))


def _rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("solve", [damped_inverses, cholesky_inverses])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_matches_float64_inverse(solve, dtype, tol):
    damping = 0.01
    factors = [spd(n, seed=10 + k).to(dtype) for k, n in enumerate(SIZES)]
    out = solve(factors, damping)
    assert len(out) == len(factors)
    for f, x in zip(factors, out):
        assert x.shape == f.shape and x.dtype == dtype
        exact = _exact(f, damping)
        assert _rel(x, exact) < tol
        # as accurate as the one-factor LAPACK function, to rounding (a different order of
        # sums: entries near zero differ by more than an elementwise rtol allows)
        lapack = _rel(damped_inverse(f, damping), exact)
        assert _rel(x, exact) < 3 * lapack + (1e-7 if dtype == torch.float32 else 1e-15)
        assert torch.equal(x, x.T)


@pytest.mark.parametrize("solve", [damped_inverses, cholesky_inverses])
def test_results_are_separate_tensors(solve):
    """A batch's results are copies: a state dict of one saves n² numbers, and writing one
    leaves the others as they were."""
    factors = [spd(65, seed=k).float() for k in range(3)]
    out = solve(factors, 0.1)
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
    assert cholesky_inverses([], 0.1) == []


# ------------------------------------------------ the CPU op (recursive blocks) ----
_op = torch.ops.kfac_ext.damped_inverses


@pytest.mark.parametrize("leaf", [1, 2, 4, 16, 64])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_op_every_blocking(leaf, dtype, tol):
    """Every split the recursion makes (power-of-two blocks, remainders of 1, 2, 72 rows, the
    split moved down when the remainder is small) at leaf sizes down to 1×1 blocks."""
    damping = 0.02
    sizes = [1, 2, 3, 17, 31, 33, 64, 65, 81, 129, 200, 257]
    factors = [spd(n, seed=100 + n).to(dtype) for n in sizes]
    out, ok = _op(factors, damping, leaf)
    assert ok.dtype == torch.bool and ok.tolist() == [True] * len(sizes)
    for f, x in zip(factors, out):
        assert x.shape == f.shape and x.dtype == dtype and x.is_contiguous()
        assert _rel(x, _exact(f, damping)) < tol
        assert torch.equal(x, x.T)


def _conditioned(n, cond, seed):
    """An SPD matrix with eigenvalues from 1 down to 1/cond, log-spaced, in a random basis."""
    q, _ = torch.linalg.qr(randn(n, n, seed=seed))
    return (q * torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)) @ q.T


@pytest.mark.parametrize("cond", [1e3, 1e4, 1e5, 1e6])
@pytest.mark.parametrize("n", [65, 128, 257])
def test_ill_conditioned_as_accurate_as_lapack(cond, n):
    """On F + λI of condition number 1e3-1e6 in float32 the relative error against the
    float64 inverse stays within 2.5× LAPACK's Cholesky inverse (measured 0.7-1.9×, the largest
    of three factors). A block inverse that forms the Schur complement with an explicit A⁻¹
    fails this at 1e4 and above (10-2000× LAPACK's error, docs/cost-model.md)."""
    factors = [_conditioned(n, cond, seed).float() for seed in range(3)]
    ours = [_rel(x, torch.linalg.inv(f.double())) for f, x in zip(factors, damped_inverses(factors, 0.0))]
    lapack = [_rel(x, torch.linalg.inv(f.double())) for f, x in zip(factors, cholesky_inverses(factors, 0.0))]
    assert max(ours) < 2.5 * max(lapack)


def test_op_reads_the_lower_triangle_only():
    """As Cholesky does: the upper triangle (NaN here) is never read, and a non-contiguous
    factor (a transposed view) is read through its strides."""
    f = spd(70, seed=3).float()
    upper_nan = f.clone()
    upper_nan[torch.triu(torch.ones(70, 70, dtype=torch.bool), 1)] = float("nan")
    (x,), ok = _op([upper_nan], 0.1)
    assert ok.tolist() == [True]
    (ref,), _ = _op([f], 0.1)
    assert torch.equal(x, ref)
    (y,), ok = _op([f.T], 0.1)  # f symmetric: f.T's lower triangle is f's upper (equal numbers)
    assert ok.tolist() == [True] and _rel(y, _exact(f, 0.1)) < 2e-5


@pytest.mark.parametrize("where", [(0, 0), (69, 0), (69, 69), (40, 3), (64, 64), (66, 65)])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_op_flags_nonfinite(where, value):
    """A NaN or ±Inf anywhere in the lower triangle fails its factor (a leaf's pivot, or a
    Schur complement's), and only that one."""
    factors = [spd(70, seed=s).float() for s in range(3)]
    i, j = where
    factors[1][i, j] = value
    factors[1][j, i] = value
    _, ok = _op(factors, 0.01)
    assert ok.tolist() == [True, False, True]


@pytest.mark.parametrize("n", [1, 2, 31, 65, 257])
def test_op_flags_indefinite(n):
    """An indefinite factor (one negative eigenvalue, in the last Schur complement or the
    first leaf) fails; λ large enough makes it definite again."""
    q, _ = torch.linalg.qr(randn(n, n, seed=n))
    ev = torch.linspace(0.5, 2.0, n, dtype=torch.float64)
    ev[n // 2] = -0.3
    f = ((q * ev) @ q.T).float()
    _, ok = _op([f, spd(n, seed=1).float()], 0.1)
    assert ok.tolist() == [False, True]
    _, ok = _op([f], 0.5)
    assert ok.tolist() == [True]


def test_indefinite_in_a_schur_complement_goes_to_the_float64_retry(monkeypatch):
    """A 257-row factor whose leading 128 rows are definite but which is indefinite overall
    fails in the op, goes alone to damped_inverse and raises its error."""
    f = spd(257, seed=5)
    f[200, 200] = -5.0
    calls = []

    def spy(g, damping):
        calls.append(g)
        return damped_inverse(g, damping)

    monkeypatch.setattr(methods, "damped_inverse", spy)
    with pytest.raises(RuntimeError, match="Cholesky of a 257x257 factor failed"):
        damped_inverses([spd(257, seed=6).float(), f.float()], 0.01)
    assert len(calls) == 2 and calls[0].dtype == torch.float32 and calls[1].dtype == torch.float64


def test_op_bad_input():
    with pytest.raises(RuntimeError, match=r"damped_inverses: factors\[1\] must be a square 2-D matrix"):
        _op([spd(3, seed=0), torch.zeros(3, 4)], 0.1)
    with pytest.raises(RuntimeError, match=r"damped_inverses: factors\[0\] must be float32 or float64"):
        _op([spd(3, seed=0).half()], 0.1)
    with pytest.raises(RuntimeError, match="damped_inverses: leaf must be >= 1"):
        _op([spd(3, seed=0)], 0.1, 0)
    with pytest.raises(RuntimeError, match="damped_inverses: leaf must be >= 1"):
        _op([spd(3, seed=0)], 0.1, 300)


def test_op_opcheck():
    torch.library.opcheck(_op.default, ([spd(5, seed=0).float(), spd(70, seed=1).float()], 0.1, 64))


def test_typed_wrapper_checks_and_matches_the_op():
    from kfac_ext import ops

    factors = [spd(5, seed=0).float(), spd(70, seed=1).float()]
    inverses, ok = ops.damped_inverses(factors, 0.1)
    want, want_ok = _op(factors, 0.1)
    assert ok.tolist() == want_ok.tolist() == [True, True]
    for x, y in zip(inverses, want):
        assert torch.equal(x, y)
    with pytest.raises(TypeError, match="damped_inverses: factors must be a list of tensors"):
        ops.damped_inverses(factors[0], 0.1)
    for bad in (-1.0, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="damped_inverses: damping must be a finite number >= 0"):
            ops.damped_inverses(factors, bad)
    with pytest.raises(RuntimeError, match=r"damped_inverses: factors\[1\] must be on the device of factors\[0\]"):
        ops.damped_inverses([factors[0], torch.empty(5, 5, device="meta")], 0.1)
