"""The CUDA kernels (csrc/cuda/) against the float64 CPU references.

Accuracy rule: every CUDA op within 2x the error that the
same-precision torch composition *on the same GPU* makes against the float64
reference on the CPU (both errors measured here), plus a floor of a few ulps
for results that come out exact. Shapes are chosen to cross each kernel's
internal boundaries: 64-wide output tiles and 16-row steps of the Conv2d
factor, the 32x32 limit of syevjBatched and the stream pool of syevd, the
32-matrix chunks of the list kernels. tests/test_ops.py runs its generic
cases on CUDA too; this file holds what is specific to the GPU path
(streams, no host synchronisation, path boundaries, the accuracy rule).
"""

from __future__ import annotations

import functools

import _tensors
import pytest
import torch
from _tensors import rel_err

from kfac_ext import ops
from kfac_ext import reference as ref

pytestmark = pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)

DTYPES = [torch.float32, torch.float64]


# ------------------------------------------------------------ helpers ----

# This file's tensors live on the GPU unless a call says device="cpu".
randn = functools.partial(_tensors.randn, device="cuda")
sym = functools.partial(_tensors.sym, device="cuda")
spd = functools.partial(_tensors.spd, device="cuda")
eigen_layers = functools.partial(_tensors.eigen_layers, device="cuda")


def assert_as_accurate_as_torch(ours, torch_same_precision, exact64, what):
    """err(ours) <= 2 * err(torch composition, same dtype, on the GPU) + a floor.

    The floor: 8 ulps for float32; for float64 the composition's own error is
    round-off noise of the order of the reference's (computed by another
    BLAS on the CPU), so there the bar is simply 1e-11 relative.
    """
    floor = 8 * torch.finfo(torch.float32).eps if ours.dtype != torch.float64 else 1e-11
    budget = 2 * rel_err(torch_same_precision, exact64) + floor
    err = rel_err(ours, exact64)
    assert err <= budget, f"{what}: relative error {err:.3g} > budget {budget:.3g}"


def to_cpu64(tensors):
    return [t.double().cpu() for t in tensors]


# -------------------------------------------------------- covariance ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "d,rows,append_ones",
    [(1, 5, True), (13, 37, False), (13, 37, True), (65, 1000, True), (200, 3, False), (0, 4, True)],
)
def test_cov_update(dtype, d, rows, append_ones):
    n = d + append_ones
    factor64 = sym(n, seed=d, device="cpu")
    x64 = randn(rows, d, seed=d + 1, device="cpu")
    exact = ref.cov_update(factor64, x64, 0.3, 0.9, append_ones)
    factor, x = factor64.to("cuda", dtype), x64.to("cuda", dtype)
    theirs = ref.cov_update(factor, x, 0.3, 0.9, append_ones)
    ops.cov_update_(factor, x, 0.3, 0.9, append_ones)
    assert torch.equal(factor, factor.T), "the mirror must make the factor exactly symmetric"
    if n:
        assert_as_accurate_as_torch(factor, theirs, exact, "cov_update_")


def test_cov_update_beta_zero_and_strided_x():
    factor = torch.full((18, 18), float("nan"), dtype=torch.float64, device="cuda")
    x = randn(60, 40, seed=3)[::3, 5:22]  # strided rows and columns
    ops.cov_update_(factor, x, 0.5, 0.0, append_ones=True)
    exact = ref.cov_update(torch.zeros(18, 18, dtype=torch.float64), x.cpu(), 0.5, 0.0, True)
    assert rel_err(factor, exact) <= 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,length", [(1, 9, 17), (5, 7, 33), (3, 130, 49), (2, 64, 300)])
def test_channel_cov_update(dtype, n, c, length):
    factor64 = sym(c, seed=c, device="cpu")
    x64 = randn(n, c, length, seed=c + 7, device="cpu")
    exact = ref.channel_cov_update(factor64, x64, 0.25, 0.75)
    factor, x = factor64.to("cuda", dtype), x64.to("cuda", dtype)
    theirs = ref.channel_cov_update(factor, x, 0.25, 0.75)
    ops.channel_cov_update_(factor, x, 0.25, 0.75)
    assert torch.equal(factor, factor.T)
    assert_as_accurate_as_torch(factor, theirs, exact, "channel_cov_update_")


# --------------------------------------------------- conv2d_act_factor ----

# (N, C, H, W, kernel, stride, padding, dilation, bias): odd sizes, every
# geometry knob, factors below, at and above one 64-wide tile, and a row
# count that is not a multiple of the kernel's 16-row step.
CONV_CASES = [
    (2, 3, 9, 7, (3, 3), (1, 1), (1, 1), (1, 1), True),
    (3, 5, 11, 10, (3, 3), (2, 2), (0, 1), (1, 1), False),
    (2, 4, 13, 12, (3, 2), (1, 2), (2, 0), (2, 3), True),
    (1, 7, 8, 8, (1, 1), (1, 1), (0, 0), (1, 1), True),  # D = 8: one partial tile
    (2, 7, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1), True),  # D = 64: exactly one tile
    (3, 70, 10, 9, (3, 3), (1, 1), (1, 1), (1, 1), True),  # D = 631: 10 tiles, 55 upper
    (5, 16, 17, 17, (5, 5), (3, 3), (2, 2), (1, 1), False),
    # The explicit im2col + GEMM path (D >= 1024, or D >= 512 with >= 32768 rows):
    (2, 120, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), True),  # D = 1081
    (8, 64, 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), False),  # D = 576, 32768 rows
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:4])))
def test_conv2d_act_factor(dtype, case):
    n, c, h, w, k, s, p, dil, bias = case
    x64 = randn(n, c, h, w, seed=n * c + h, device="cpu")
    exact = ref.conv2d_act_factor(x64, k, s, p, dil, bias)
    x = x64.to("cuda", dtype)
    theirs = ref.conv2d_act_factor(x, k, s, p, dil, bias)  # unfold + GEMM on the GPU
    ours = ops.conv2d_act_factor(x, k, s, p, dil, bias)
    assert ours.shape == exact.shape and ours.dtype == dtype and ours.is_cuda
    assert torch.equal(ours, ours.T)
    assert_as_accurate_as_torch(ours, theirs, exact, "conv2d_act_factor")


def test_conv2d_act_factor_half_input_and_channels_last():
    x = randn(2, 6, 10, 10, seed=1).to(torch.float16).to(memory_format=torch.channels_last)
    exact = ref.conv2d_act_factor(x.double().cpu(), (3, 3), (1, 1), (1, 1), (1, 1), True)
    ours = ops.conv2d_act_factor(x, (3, 3), (1, 1), (1, 1), (1, 1), True)
    assert ours.dtype == torch.float16
    assert rel_err(ours, exact) <= 2e-3  # float accumulation, one rounding to half


def test_conv2d_act_factor_many_row_splits():
    """Large N*T with few tiles: many row slices added atomically."""
    x64 = randn(64, 3, 32, 32, seed=5, device="cpu")
    exact = ref.conv2d_act_factor(x64, (3, 3), (1, 1), (1, 1), (1, 1), True)
    x = x64.cuda().float()
    theirs = ref.conv2d_act_factor(x, (3, 3), (1, 1), (1, 1), (1, 1), True)
    ours = ops.conv2d_act_factor(x, (3, 3), (1, 1), (1, 1), (1, 1), True)
    assert_as_accurate_as_torch(ours, theirs, exact, "conv2d_act_factor (split rows)")


# -------------------------------------------------------- batched_eigh ----

# Sizes around the syevjBatched limit (32) and a group of six equal large
# factors (syevd spread over the stream pool).
EIGH_SIZES = [5, 32, 33, 5, 1, 100, 100, 100, 100, 100, 100, 32, 257]


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_eigh(dtype):
    factors = [spd(n, seed=i, dtype=dtype) for i, n in enumerate(EIGH_SIZES)]
    values, vectors = ops.batched_eigh(factors)
    for i, (f, d, q) in enumerate(zip(factors, values, vectors)):
        assert d.dtype == dtype and q.dtype == dtype and d.is_cuda
        assert q.T.is_contiguous(), "column-major Q, as on the CPU and in the fake kernel"
        f64 = f.double().cpu()
        exact = torch.linalg.eigvalsh(f64)
        theirs_d, theirs_q = torch.linalg.eigh(f)  # same dtype, same GPU
        assert_as_accurate_as_torch(d, theirs_d, exact, f"eigenvalues of factors[{i}]")
        # Eigenvectors are defined up to sign: compare reconstructions.
        recon = q.double() @ torch.diag(d.double()) @ q.double().T
        theirs_recon = theirs_q.double() @ torch.diag(theirs_d.double()) @ theirs_q.double().T
        assert_as_accurate_as_torch(recon, theirs_recon, f64, f"Q diag(d) Qᵀ of factors[{i}]")
        eye = torch.eye(f.shape[0], dtype=torch.float64, device="cuda")
        ortho = (q.double().T @ q.double() - eye).abs().max().item()
        theirs_ortho = (theirs_q.double().T @ theirs_q.double() - eye).abs().max().item()
        assert ortho <= 2 * theirs_ortho + 8 * torch.finfo(dtype).eps * f.shape[0]


def test_batched_eigh_clamps_and_groups_share_nothing():
    x = randn(3, 40, seed=9, device="cpu")
    singular = (x.T @ x).cuda()
    values, vectors = ops.batched_eigh([singular, singular.clone()])
    unclamped, _ = ops.batched_eigh([singular], clamp=False)
    assert (unclamped[0] < 0).any(), "test premise: round-off gives negative eigenvalues"
    assert (values[0] >= 0).all()
    assert values[0].data_ptr() != values[1].data_ptr()
    assert vectors[0].data_ptr() != vectors[1].data_ptr()


def test_batched_eigh_float64_retry(monkeypatch):
    factors = [spd(n, seed=i, dtype=torch.float32) for i, n in enumerate([7, 7, 40])]
    monkeypatch.setenv("KFAC_EXT_FAULT_EIGH_FLOAT32", "1")
    values, vectors = ops.batched_eigh(factors)
    for f, d, q in zip(factors, values, vectors):
        assert d.dtype == torch.float32 and q.dtype == torch.float32
        exact = torch.linalg.eigvalsh(f.double().cpu())
        assert rel_err(d, exact) <= 1e-6, "eigenvalues must come from float64 (then rounded)"
        recon = q.double() @ torch.diag(d.double()) @ q.double().T
        assert rel_err(recon, f.double()) <= 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [7, 50])
@pytest.mark.parametrize("bad", ["inf", "nan"])
def test_batched_eigh_names_the_failing_factor(dtype, n, bad):
    """syevjBatched (n <= 32) returned info 0 and finite output for a NaN pair
    off the diagonal: the input check, not cuSOLVER, must catch it."""
    factors = [spd(m, seed=i, dtype=dtype) for i, m in enumerate([5, n, n])]
    factors[2][3, 4] = factors[2][4, 3] = float(bad)
    with pytest.raises(RuntimeError, match=rf"factors\[2\] \({n}x{n}\)"):
        ops.batched_eigh(factors)


# -------------------------------------------------- eigen_precondition ----


@pytest.mark.parametrize("dtype", DTYPES)
def test_eigen_precondition(dtype):
    shapes = [(7, 5), (64, 577), (7, 5), (1, 1), (10, 3), (7, 5), (64, 577), (257, 65)]
    layers = eigen_layers(shapes, dtype)
    exact = ref.eigen_precondition(*[to_cpu64(lst) for lst in layers], 0.003)
    theirs = ref.eigen_precondition(*layers, 0.003)
    ours = ops.eigen_precondition(*layers, 0.003)
    ptrs = {p.data_ptr() for p in ours}
    assert len(ptrs) == len(ours), "every layer's result owns its memory"
    for i, (p, e, t) in enumerate(zip(ours, exact, theirs)):
        assert p.shape == shapes[i] and p.dtype == dtype and p.is_contiguous()
        assert_as_accurate_as_torch(p, t, e, f"eigen_precondition layer {i}")


def test_eigen_precondition_strided_inputs():
    grads, qa, da, qg, dg = eigen_layers([(9, 6)], torch.float64)
    g_t = grads[0].T.contiguous().T  # column-major gradient
    ours = ops.eigen_precondition([g_t], [qa[0].T.contiguous().T], da, qg, dg, 0.1)
    exact = ref.eigen_precondition(to_cpu64(grads), to_cpu64(qa), to_cpu64(da), to_cpu64(qg), to_cpu64(dg), 0.1)
    assert rel_err(ours[0], exact[0]) <= 1e-12


# ---------------------------------------------- pack / unpack, kl_clip ----


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_unpack_more_than_one_chunk(dtype):
    sizes = [(i * 7) % 45 + 1 for i in range(70)]  # 70 matrices: three launches of <= 32
    mats = [sym(n, seed=i, dtype=dtype) for i, n in enumerate(sizes)]
    mats[3] = mats[3].T.contiguous().T  # one column-major matrix
    packed = ops.pack_triu(mats)
    assert torch.equal(packed.cpu(), ref.pack_triu([m.cpu() for m in mats]))
    targets = [torch.full_like(m, float("nan")) for m in mats]
    targets[5] = torch.zeros(sizes[5], 2 * sizes[5], dtype=dtype, device="cuda")[:, ::2]
    ops.unpack_triu_(packed, targets, scale=0.5)
    for t, e in zip(targets, ref.unpack_triu(packed.cpu(), [m.cpu() for m in mats], 0.5)):
        assert torch.equal(t.cpu(), e)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_clip_sum(dtype):
    shapes = [(1, 1), (7, 5), (64, 577), (2048, 513)] + [(3, 4)] * 40  # > one 32-pair chunk
    precond = [randn(*s, seed=i, dtype=dtype) for i, s in enumerate(shapes)]
    grads = [randn(*s, seed=100 + i, dtype=dtype) for i, s in enumerate(shapes)]
    exact = ref.kl_clip_sum(to_cpu64(precond), to_cpu64(grads))
    ours = ops.kl_clip_sum(precond, grads)
    assert ours.dim() == 0 and ours.dtype == torch.float64 and ours.is_cuda
    # Inputs are exact in float64; the sum is accumulated in float64.
    assert rel_err(ours, exact) <= 1e-12
    again = ops.kl_clip_sum(precond, grads)
    assert torch.equal(ours, again), "no atomics: the same inputs give the same bits"


# ----------------------------------------- streams and synchronisation ----


def _async_inputs(dtype=torch.float32):
    """Inputs for every op but batched_eigh, made up front: copying them to
    the device is a host synchronisation of its own."""
    return {
        "factor": sym(33, seed=1, dtype=dtype),
        "x": randn(50, 32, seed=2, dtype=dtype),
        "g_factor": sym(12, seed=3, dtype=dtype),
        "g": randn(4, 12, 25, seed=4, dtype=dtype),
        "image": randn(2, 3, 8, 8, seed=5, dtype=dtype),
        "layers": eigen_layers([(12, 33), (12, 33)], dtype),
    }


def _run_async_ops(inp):
    """Every op except batched_eigh (which reads cuSOLVER's info on the host)."""
    factor, g_factor = inp["factor"], inp["g_factor"]
    ops.cov_update_(factor, inp["x"], 0.1, 0.9, append_ones=True)
    ops.channel_cov_update_(g_factor, inp["g"], 0.1, 0.9)
    a = ops.conv2d_act_factor(inp["image"], (3, 3), (1, 1), (1, 1), (1, 1), True)
    precond = ops.eigen_precondition(*inp["layers"], 0.01)
    total = ops.kl_clip_sum(precond, inp["layers"][0])
    packed = ops.pack_triu([factor, g_factor, a])
    ops.unpack_triu_(packed, [factor, g_factor, a], 0.5)
    return [factor, g_factor, a, *precond, total, packed]


def test_no_host_synchronisation_outside_eigh():
    _run_async_ops(_async_inputs())  # warm-up: handles, workspaces, allocator
    inputs = _async_inputs()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _run_async_ops(inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_ops_run_on_the_current_stream():
    expected = [t.cpu() for t in _run_async_ops(_async_inputs(torch.float64))]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _run_async_ops(_async_inputs(torch.float64))
        factors = [spd(n, seed=n) for n in (5, 40, 40)]
        values, _ = ops.batched_eigh(factors)
    side.synchronize()
    for e, g in zip(expected, got):
        assert torch.allclose(g.cpu(), e, rtol=1e-12, atol=1e-12)
    for f, d in zip(factors, values):
        assert rel_err(d, torch.linalg.eigvalsh(f.cpu())) <= 1e-10


# -------------------------------------------------------------- bad input ----


def test_errors_name_the_argument_and_leave_inputs_untouched():
    f = sym(5, seed=1)
    before = f.clone()
    with pytest.raises(RuntimeError, match=r"cov_update_: x must have the dtype of factor"):
        ops.cov_update_(f, randn(4, 5, seed=2, dtype=torch.float32), 1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"channel_cov_update_: x must be 3-D"):
        ops.channel_cov_update_(f, randn(4, 5, seed=2), 1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"eigen_precondition: qa\[0\] must be \(in, in\)"):
        layers = eigen_layers([(3, 4)], torch.float64)
        layers[1][0] = layers[1][0][:3, :3]
        ops.eigen_precondition(*layers, 0.1)
    with pytest.raises(RuntimeError, match=r"unpack_triu_: packed must be 1-D"):
        ops.unpack_triu_(torch.zeros(3, dtype=torch.float64, device="cuda"), [f])
    assert torch.equal(f, before)


def test_opcheck_cuda():
    x = randn(9, 5, seed=1)
    layers = eigen_layers([(3, 4), (3, 4), (2, 5)], torch.float64)
    mats = [sym(n, seed=n) for n in (1, 4, 6)]
    cases = {
        "cov_update_": (sym(6, seed=2), x, 0.5, 0.9, True),
        "channel_cov_update_": (sym(4, seed=3), randn(2, 4, 7, seed=4), 0.5, 0.9),
        "conv2d_act_factor": (randn(2, 3, 6, 5, seed=6), [3, 3], [1, 1], [1, 1], [1, 1], True),
        "batched_eigh": ([spd(n, seed=n) for n in (3, 40, 3)], True),
        "eigen_precondition": (*layers, 0.1),
        "pack_triu": (mats,),
        "unpack_triu_": (ref.pack_triu(mats), [torch.zeros_like(m) for m in mats], 0.5),
        "kl_clip_sum": (layers[0], [g * 2 for g in layers[0]]),
    }
    for name, args in cases.items():
        torch.library.opcheck(getattr(torch.ops.kfac_ext, name).default, args)
