"""conv2d_act_factor (the Conv2d K-FAC activation factor) against an unfold reference.

The reference is written out here from docs/design.md §2 so that this file
does not depend on kfac_ext.ops: ā = F.unfold patches (plus a ones column for
the bias), every entry divided by T, and A = āᵀā / (N·T).
"""

import itertools
import random
import zlib

import pytest
import torch
import torch.nn.functional as F

import kfac_ext._C  # noqa: F401  (registers torch.ops.kfac_ext.*)

op = torch.ops.kfac_ext.conv2d_act_factor


def unfold_reference(x, kernel_size, stride, padding, dilation, has_bias):
    """A = āᵀā / (N·T), computed in the dtype of x via F.unfold + mm."""
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    n, d, t = cols.shape
    a = cols.transpose(1, 2).reshape(n * t, d)
    if has_bias:
        a = torch.cat([a, a.new_ones(n * t, 1)], dim=1)
    a = a / t
    return a.t() @ a / (n * t)


def _cases():
    """Odd shapes over the whole parameter grid, subsampled deterministically."""
    grid = list(
        itertools.product(
            [1, 3],  # N
            [1, 3, 7],  # C
            [(1, 1), (3, 3), (5, 3)],  # kernel
            [(1, 1), (2, 2), (3, 2)],  # stride
            [(0, 0), (1, 1), (2, 1)],  # padding
            [(1, 1), (2, 2), (1, 2)],  # dilation
            [False, True],  # bias
        )
    )
    rng = random.Random(1234)
    rng.shuffle(grid)
    cases = []
    for n, c, k, s, p, d, b in grid[:120]:
        # Smallest image the kernel fits into, then a few odd sizes above it.
        hmin = max(1, d[0] * (k[0] - 1) + 1 - 2 * p[0])
        wmin = max(1, d[1] * (k[1] - 1) + 1 - 2 * p[1])
        h = hmin + rng.choice([0, 1, 2, 4, 6])
        w = wmin + rng.choice([0, 1, 3, 5])
        cases.append((n, c, h, w, k, s, p, d, b))
    return cases


CASES = _cases()

ALGO_ENV = "KFAC_EXT_CONV_FACTOR_ALGO"


@pytest.fixture(params=["shift", "shift-blas", "im2col"])
def algo(request, monkeypatch):
    """Forces one of the kernel's algorithms (unforced, small shapes like
    these would all take the im2col path). 'shift' takes the vectorised shift
    products for float32 on AVX-512 CPUs and GEMMs otherwise; 'shift-blas'
    always takes GEMMs, so both product engines are tested on one machine."""
    monkeypatch.setenv(ALGO_ENV, request.param)
    return request.param


def _id(case):
    n, c, h, w, k, s, p, d, b = case
    return f"N{n}C{c}_{h}x{w}_k{k[0]}{k[1]}_s{s[0]}{s[1]}_p{p[0]}{p[1]}_d{d[0]}{d[1]}_{'b' if b else 'nb'}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_float64_matches_unfold(case, algo):
    n, c, h, w, k, s, p, d, b = case
    g = torch.Generator().manual_seed(zlib.crc32(_id(case).encode()))
    # Non-zero mean so the bias column and border handling matter.
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g) + 0.5
    got = op(x, k, s, p, d, b)
    want = unfold_reference(x, k, s, p, d, b)
    assert got.shape == want.shape and got.dtype == torch.float64
    # Written as a product so that an all-zero factor (every tap in the
    # padding) must come out exactly zero.
    err = (got - want).abs().max()
    assert err <= 1e-10 * want.abs().max(), f"error {err}, scale {want.abs().max()}"
    # Both paths return an exactly symmetric factor (eigh and triangle
    # packing downstream rely on it).
    assert torch.equal(got, got.t())


@pytest.mark.parametrize(
    "shape,k,s,p,d",
    [
        ((3, 7, 13, 11), (3, 3), (1, 1), (1, 1), (1, 1)),
        ((2, 16, 17, 17), (3, 3), (2, 2), (1, 1), (1, 1)),
        ((3, 5, 12, 9), (5, 3), (1, 2), (2, 1), (2, 1)),
        ((1, 9, 8, 8), (1, 1), (2, 2), (0, 0), (1, 1)),
    ],
)
@pytest.mark.parametrize("has_bias", [False, True])
def test_float32_error_within_twice_unfold_mm(shape, k, s, p, d, has_bias, algo):
    g = torch.Generator().manual_seed(7)
    x64 = torch.randn(*shape, dtype=torch.float64, generator=g) * 2 + 1
    x32 = x64.float()
    exact = unfold_reference(x64, k, s, p, d, has_bias)
    ours = op(x32, k, s, p, d, has_bias)
    assert ours.dtype == torch.float32
    theirs = unfold_reference(x32, k, s, p, d, has_bias)
    err_ours = (ours.double() - exact).abs().max().item()
    err_theirs = (theirs.double() - exact).abs().max().item()
    scale = exact.abs().max().item()
    # 2x the same-precision composition's error, with a floor of a few ulps of
    # the largest entry for cases where unfold+mm happens to be nearly exact.
    assert err_ours <= max(2 * err_theirs, 4 * torch.finfo(torch.float32).eps * scale)


def test_opcheck(algo):
    import kfac_ext.ops  # noqa: F401  (registers the fake kernel opcheck also checks)

    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    for args in [((3, 3), (1, 1), (1, 1), (1, 1), True), ((3, 2), (2, 1), (0, 1), (1, 2), False)]:
        torch.library.opcheck(op, (x, *args))


def test_public_wrapper_matches_library_reference():
    from kfac_ext import ops, reference

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 11, 10, dtype=torch.float64, generator=g)
    for k, s, p, d, b in [(3, 1, 1, 1, True), ((5, 3), (2, 1), (2, 0), (1, 2), False)]:
        got = ops.conv2d_act_factor(x, k, s, p, d, b)
        want = reference.conv2d_act_factor(x, k, s, p, d, b)
        assert (got - want).abs().max() <= 1e-10 * want.abs().max()


def test_non_contiguous_input(algo):
    x = torch.randn(3, 5, 9, 2, 7, dtype=torch.float64)[:, :, :, 1, :]  # strided view
    assert not x.is_contiguous()
    got = op(x, (3, 3), (1, 1), (1, 1), (1, 1), True)
    want = unfold_reference(x, (3, 3), (1, 1), (1, 1), (1, 1), True)
    assert (got - want).abs().max() <= 1e-12 * want.abs().max()
    xl = torch.randn(2, 4, 6, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    got = op(xl, (3, 3), (1, 1), (1, 1), (1, 1), False)
    want = unfold_reference(xl.contiguous(), (3, 3), (1, 1), (1, 1), (1, 1), False)
    assert (got - want).abs().max() <= 1e-12 * want.abs().max()


def test_matches_conv_layer_shapes():
    # Output side equals the flattened Conv2d weight (+1 for bias).
    conv = torch.nn.Conv2d(5, 4, (3, 2), stride=2, padding=1, dilation=(1, 2))
    x = torch.randn(2, 5, 10, 9)
    a = op(x, conv.kernel_size, conv.stride, conv.padding, conv.dilation, True)
    assert a.shape == (conv.weight[0].numel() + 1,) * 2


def test_error_3d_input():
    with pytest.raises(RuntimeError, match="input must be 4-D"):
        op(torch.randn(3, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1), False)


def test_error_integer_dtype():
    with pytest.raises(RuntimeError, match="input must be a floating"):
        op(torch.ones(1, 2, 5, 5, dtype=torch.int64), (3, 3), (1, 1), (1, 1), (1, 1), False)


def test_error_kernel_bigger_than_padded_input():
    with pytest.raises(RuntimeError, match="output size must be > 0"):
        op(torch.randn(1, 2, 4, 4), (5, 5), (1, 1), (0, 0), (1, 1), False)
    with pytest.raises(RuntimeError, match="output size must be > 0"):
        op(torch.randn(1, 2, 4, 4), (3, 3), (1, 1), (0, 0), (2, 2), False)


@pytest.mark.parametrize(
    "name,k,s,p,d",
    [
        ("kernel_size", (0, 3), (1, 1), (0, 0), (1, 1)),
        ("stride", (3, 3), (1, 0), (0, 0), (1, 1)),
        ("padding", (3, 3), (1, 1), (-1, 0), (1, 1)),
        ("dilation", (3, 3), (1, 1), (0, 0), (0, 1)),
    ],
)
def test_error_bad_conv_parameters(name, k, s, p, d):
    with pytest.raises(RuntimeError, match=name):
        op(torch.randn(1, 2, 6, 6), k, s, p, d, False)


def test_empty_batch_or_channels_rejected():
    with pytest.raises(RuntimeError, match="N > 0 and C > 0"):
        op(torch.randn(0, 2, 6, 6), (3, 3), (1, 1), (0, 0), (1, 1), False)


@pytest.mark.parametrize(
    "k,s,p,d",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1)),
        ((3, 3), (2, 2), (1, 1), (1, 1)),
        ((5, 3), (3, 2), (2, 0), (2, 3)),
        ((3, 5), (1, 3), (0, 3), (3, 1)),
        ((1, 1), (2, 3), (1, 0), (1, 1)),
    ],
)
def test_wider_images_float64(k, s, p, d, algo):
    # Images much wider than the kernel: the column-major copy then keeps only
    # edge runs of columns, and the middle row segments are long.
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 23, 29, dtype=torch.float64, generator=g) + 0.25
    for has_bias in (False, True):
        got = op(x, k, s, p, d, has_bias)
        want = unfold_reference(x, k, s, p, d, has_bias)
        assert (got - want).abs().max() <= 1e-10 * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_returns_input_dtype(dtype, algo):
    x = torch.randn(2, 3, 9, 7).to(dtype)
    got = op(x, (3, 3), (1, 1), (1, 1), (1, 1), True)
    assert got.dtype == dtype
    want = unfold_reference(x.double(), (3, 3), (1, 1), (1, 1), (1, 1), True)
    # Accumulated in float32, rounded once to the input dtype at the end.
    assert (got.double() - want).abs().max() <= 2 * torch.finfo(dtype).eps * want.abs().max()


def test_automatic_choice_on_a_large_shape(monkeypatch):
    # Above the size threshold the unforced kernel takes the shift path; the
    # result must not depend on which path ran.
    monkeypatch.delenv(ALGO_ENV, raising=False)
    x = torch.randn(16, 8, 16, 15, dtype=torch.float64)
    auto = op(x, (3, 3), (1, 1), (1, 1), (1, 1), True)
    monkeypatch.setenv(ALGO_ENV, "im2col")
    dense = op(x, (3, 3), (1, 1), (1, 1), (1, 1), True)
    assert (auto - dense).abs().max() <= 1e-12 * dense.abs().max()


def test_error_bad_algorithm_override(monkeypatch):
    monkeypatch.setenv(ALGO_ENV, "winograd")
    with pytest.raises(RuntimeError, match="KFAC_EXT_CONV_FACTOR_ALGO must be"):
        op(torch.randn(1, 2, 6, 6), (3, 3), (1, 1), (0, 0), (1, 1), False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_random_geometries_shift_path(dtype, monkeypatch):
    # Random kernels up to 5, strides up to 4 (more phases than taps),
    # padding up to 4 (windows reaching past the image) and dilation up to 3,
    # on images up to 26 wide: every combination the axis plan has to get right.
    # float32 takes the vectorised products (runs over the live part of each
    # slot, column bands straight from the row layout) where AVX-512 exists.
    monkeypatch.setenv(ALGO_ENV, "shift")
    rng = random.Random(99)
    checked = 0
    while checked < 60:
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s = (rng.randint(1, 4), rng.randint(1, 4))
        p = (rng.randint(0, 4), rng.randint(0, 4))
        d = (rng.randint(1, 3), rng.randint(1, 3))
        h, w = rng.randint(1, 26), rng.randint(1, 26)
        if h + 2 * p[0] - d[0] * (k[0] - 1) - 1 < 0 or w + 2 * p[1] - d[1] * (k[1] - 1) - 1 < 0:
            continue
        g = torch.Generator().manual_seed(checked)
        x = torch.randn(rng.randint(1, 3), rng.randint(1, 4), h, w, dtype=torch.float64, generator=g) + 0.3
        b = rng.random() < 0.5
        got = op(x.to(dtype), k, s, p, d, b)
        want = unfold_reference(x, k, s, p, d, b)
        # float32: a few hundred terms per entry at most, each rounded once.
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        assert (got.double() - want).abs().max() <= tol * want.abs().max(), (x.shape, k, s, p, d, b)
        assert torch.equal(got, got.t())
        checked += 1


@pytest.mark.parametrize("c", [16, 17, 33, 64, 70])
@pytest.mark.parametrize("stride", [1, 2])
def test_float32_shift_products_many_channels(c, stride, monkeypatch):
    """The vectorised shift products (float32) on channel counts that fill
    whole vectors, leave partial ones (17, 33, 70) and need several column
    blocks (70 > 64), on enough positions that each product spans several
    register blocks: within the float32 error bound of the unfold reference,
    and equal to the GEMM engine within float32 rounding."""
    g = torch.Generator().manual_seed(c * 10 + stride)
    x64 = torch.randn(6, c, 19, 17, dtype=torch.float64, generator=g) + 0.4
    args = ((3, 3), (stride, stride), (1, 1), (1, 1), True)
    exact = unfold_reference(x64, *args)
    theirs = unfold_reference(x64.float(), *args)
    monkeypatch.setenv(ALGO_ENV, "shift")
    ours = op(x64.float(), *args)
    monkeypatch.setenv(ALGO_ENV, "shift-blas")
    blas = op(x64.float(), *args)
    scale = exact.abs().max().item()
    err_ours = (ours.double() - exact).abs().max().item()
    err_theirs = (theirs.double() - exact).abs().max().item()
    assert err_ours <= max(2 * err_theirs, 4 * torch.finfo(torch.float32).eps * scale)
    assert torch.equal(ours, ours.t())
    # Two float32 engines, each off by up to ~8 eps * scale here (the unfold
    # GEMM's own error on these inputs): they agree to the sum of the two. A
    # dropped or doubled position would be off by ~1/(6*19*17) of scale.
    assert (ours - blas).abs().max().item() <= 16 * torch.finfo(torch.float32).eps * scale


@pytest.mark.parametrize("algo_name", ["shift", "shift-blas"])
def test_reused_layout_buffer_leaks_nothing(algo_name, monkeypatch):
    """The channels-last layouts live in a buffer each thread keeps between
    calls, and the vectorised copy writes the gaps instead of clearing the
    buffer first. A call after one that left NaN all over that buffer (a
    larger input, so every position the next call uses was written) must
    still equal the reference: any gap the copy missed would read a NaN."""
    monkeypatch.setenv(ALGO_ENV, algo_name)
    poison = torch.full((4, 24, 21, 19), float("nan"))
    poisoned = op(poison, (3, 3), (1, 1), (1, 1), (1, 1), True)
    assert torch.isnan(poisoned[:-1, :-1]).all()  # all but the bias count 1^T 1
    g = torch.Generator().manual_seed(7)
    for stride in (1, 2):
        x = torch.randn(3, 17, 13, 11, generator=g)
        args = ((3, 3), (stride, stride), (1, 1), (1, 1), True)
        got = op(x, *args)
        want = unfold_reference(x.double(), *args)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
