"""The kfac_ext ops (kfac_ext.ops) against the plain-PyTorch references (kfac_ext.reference).

Accuracy rule: float64 results within 1e-10 (relative to the largest entry)
of the float64 reference; float32 results within twice the error that the
float32 torch composition itself makes against the float64 reference (both
errors measured here), plus a tiny floor for results that are exact.
conv2d_act_factor has its own file (tests/test_conv_act_factor.py).
"""

from __future__ import annotations

import pytest
import torch
from _tensors import CUDA, DEVICES, eigen_layers, randn, rel_err, spd, sym

from kfac_ext import ops
from kfac_ext import reference as ref

DTYPES = [torch.float32, torch.float64]
SIZES = [1, 7, 64, 129, 513]


# ------------------------------------------------------------ helpers ----


def assert_accurate(ours, exact64, theirs32=None, what=""):
    """float64: <= 1e-10; float32: <= 2x the error of the float32 torch composition."""
    err = rel_err(ours, exact64)
    if ours.dtype == torch.float64:
        assert err <= 1e-10, f"{what}: float64 relative error {err:.3g}"
    else:
        budget = 2 * rel_err(theirs32, exact64) + 1e-6
        assert err <= budget, f"{what}: float32 relative error {err:.3g} > budget {budget:.3g}"


# -------------------------------------------------------- cov_update_ ----

COV_CASES = [(d, rows, ones) for d in SIZES[:4] for rows in (1, 37) for ones in (False, True)]
COV_CASES += [(513, 300, False), (513, 300, True), (200, 0, True)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,rows,append_ones", COV_CASES)
def test_cov_update_matches_reference(device, dtype, d, rows, append_ones):
    n = d + append_ones
    factor64 = sym(n, seed=d)
    x64 = randn(rows, d, seed=d + 1)
    exact = ref.cov_update(factor64, x64, 0.3, 0.9, append_ones)
    factor = factor64.to(device, dtype)
    x = x64.to(device, dtype)
    theirs = ref.cov_update(factor, x, 0.3, 0.9, append_ones)
    ops.cov_update_(factor, x, 0.3, 0.9, append_ones)
    assert torch.equal(factor, factor.T), "result must be exactly symmetric"
    assert_accurate(factor, exact, theirs, "cov_update_")


# The CPU kernel's paths at autoencoder-like shapes: fewer rows than columns and
# more, one GEMM (n <= 128) and the triangle recursion, power-of-two and odd widths
# (the mirror's tiles), the bias column, beta 0 and 1.
PATH_CASES = [
    (d, rows, ones, beta)
    for d, rows in [(256, 64), (300, 17), (511, 64), (512, 64), (513, 64), (257, 65), (200, 128), (130, 300)]
    for ones, beta in [(False, 0.7), (True, 0.0), (True, 1.0)]
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,rows,append_ones,beta", PATH_CASES)
def test_cov_update_full_gemm_and_triangle_paths(dtype, d, rows, append_ones, beta):
    n = d + append_ones
    factor64 = sym(n, seed=d + rows)
    x64 = randn(rows, d, seed=d + rows + 1)
    exact = ref.cov_update(factor64, x64, 0.37, beta, append_ones)
    factor, x = factor64.to(dtype), x64.to(dtype)
    theirs = ref.cov_update(factor, x, 0.37, beta, append_ones)
    ops.cov_update_(factor, x, 0.37, beta, append_ones)
    assert torch.equal(factor, factor.T), "result must be exactly symmetric"
    assert_accurate(factor, exact, theirs, f"cov_update_ d={d} rows={rows}")


@pytest.mark.parametrize("device", DEVICES)
def test_cov_update_beta_zero_ignores_old_factor(device):
    factor = torch.full((9, 9), float("nan"), dtype=torch.float64, device=device)
    x = randn(11, 8, seed=3, device=device)
    ops.cov_update_(factor, x, 1.0, 0.0, append_ones=True)
    exact = ref.cov_update(torch.zeros(9, 9, dtype=torch.float64), x.cpu(), 1.0, 0.0, True)
    assert rel_err(factor, exact) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_cov_update_accepts_strided_x(device):
    base = randn(40, 30, seed=5, device=device)
    x = base[::2, 3:20]  # non-contiguous rows and columns
    factor = sym(17, seed=6, device=device)
    exact = ref.cov_update(factor.cpu(), x.cpu(), 0.5, 1.0)
    ops.cov_update_(factor, x, 0.5, 1.0)
    assert rel_err(factor, exact) <= 1e-12


# ------------------------------------------------ channel_cov_update_ ----

# (N, C, L) chosen to hit each kernel path: small C (the vectorised channel
# Gram for float32 on AVX-512, else batched products), large C with short L
# (gathered rows) and large C with long L (one triangle per sample). (37, 19, 70)
# spans two sample groups of the vectorised kernel with partial channel blocks
# and a partial last vector of positions.
CHANNEL_CASES = [(3, 1, 5), (5, 7, 33), (4, 64, 9), (37, 19, 70), (2, 129, 5), (3, 129, 70), (2, 513, 65)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,length", CHANNEL_CASES)
def test_channel_cov_update_matches_reference(device, dtype, n, c, length):
    factor64 = sym(c, seed=c)
    x64 = randn(n, c, length, seed=c + 7)
    exact = ref.channel_cov_update(factor64, x64, 0.25, 0.75)
    factor = factor64.to(device, dtype)
    x = x64.to(device, dtype)
    theirs = ref.channel_cov_update(factor, x, 0.25, 0.75)
    ops.channel_cov_update_(factor, x, 0.25, 0.75)
    assert torch.equal(factor, factor.T)
    assert_accurate(factor, exact, theirs, "channel_cov_update_")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,length", [(7, 33), (129, 70), (129, 9)])
def test_channel_cov_update_channels_last_gradient(device, c, length):
    # A channels_last Conv2d output gradient viewed as (N, C, H*W) has strides (C*L, 1, C).
    x = randn(3, length, c, seed=c, device=device).transpose(1, 2)
    factor = sym(c, seed=2, device=device)
    exact = ref.channel_cov_update(factor.cpu(), x.cpu(), 0.5, 0.5)
    ops.channel_cov_update_(factor, x, 0.5, 0.5)
    assert rel_err(factor, exact) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_cov_update_beta_zero_ignores_old_factor(device, dtype):
    # KFACLayer's first capture of a step writes into an uninitialised sum with beta 0.
    factor = torch.full((19, 19), float("nan"), dtype=dtype, device=device)
    x64 = randn(37, 19, 70, seed=4)
    ops.channel_cov_update_(factor, x64.to(device, dtype), 0.5, 0.0)
    exact = ref.channel_cov_update(torch.zeros(19, 19, dtype=torch.float64), x64, 0.5, 0.0)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_err(factor, exact) <= tol


@pytest.mark.parametrize("device", DEVICES)
def test_channel_cov_update_empty_batch_scales_only(device):
    factor = sym(6, seed=1, device=device)
    expected = factor * 0.5
    ops.channel_cov_update_(factor, torch.empty(0, 6, 4, dtype=torch.float64, device=device), 1.0, 0.5)
    assert torch.equal(factor, expected)


# -------------------------------------------------------- batched_eigh ----

EIGH_SIZES = [7, 64, 7, 1, 129, 64, 7]


def _check_eigh(factors, values, vectors, dtype):
    for i, (f, d, q) in enumerate(zip(factors, values, vectors)):
        assert d.dtype == dtype and q.dtype == dtype
        assert d.shape == (f.shape[0],) and q.shape == f.shape
        f64 = f.double().cpu()
        exact = torch.linalg.eigvalsh(f64)
        theirs = torch.linalg.eigvalsh(f.cpu()) if dtype == torch.float32 else None
        assert_accurate(d, exact, theirs, f"eigenvalues of factors[{i}]")
        q, d = q.double().cpu(), d.double().cpu()
        recon = q @ torch.diag(d) @ q.T
        eye = torch.eye(f.shape[0], dtype=torch.float64)
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        assert rel_err(recon, f64) <= tol, f"Q diag(d) Qᵀ != factors[{i}]"
        assert (q.T @ q - eye).abs().max().item() <= tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_eigh_matches_reference(device, dtype):
    factors = [spd(n, seed=i, dtype=dtype, device=device) for i, n in enumerate(EIGH_SIZES)]
    values, vectors = ops.batched_eigh(factors)
    _check_eigh(factors, values, vectors, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_eigh_large_factor(device):
    factors = [spd(513, seed=2, dtype=torch.float32, device=device)]
    values, vectors = ops.batched_eigh(factors)
    _check_eigh(factors, values, vectors, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_eigh_clamps_round_off(device):
    # Rank 3 in 40 dimensions: 37 zero eigenvalues that come out as ±round-off.
    x = randn(3, 40, seed=9)
    singular = (x.T @ x).to(device)
    values, _ = ops.batched_eigh([singular])
    unclamped, _ = ops.batched_eigh([singular], clamp=False)
    assert (unclamped[0] < 0).any(), "test premise: round-off gives negative eigenvalues"
    assert (values[0] >= 0).all()
    assert torch.equal(values[0], unclamped[0].clamp(min=0))


def test_batched_eigh_retries_float32_failure_in_float64(monkeypatch, device="cpu"):
    """LAPACK's float32 solver rescales any finite input, so no real float32
    input fails where float64 succeeds; the kernels' fault-injection switch
    discards every float32 result instead, which must send the batch to float64.

    CPU only: bit-equality with torch.linalg.eigh holds because both call the
    same LAPACK routine. cuSOLVER's float64 path picks its own solver per size,
    so the CUDA case (tests/test_cuda_ops.py) compares within 1e-6 instead."""
    factors = [spd(n, seed=i, dtype=torch.float32, device=device) for i, n in enumerate([7, 7, 30])]
    monkeypatch.setenv("KFAC_EXT_FAULT_EIGH_FLOAT32", "1")
    values, vectors = ops.batched_eigh(factors)
    for f, d, q in zip(factors, values, vectors):
        d64, q64 = torch.linalg.eigh(f.double())
        assert d.dtype == torch.float32 and q.dtype == torch.float32
        assert torch.equal(d, d64.clamp(min=0).float()), "eigenvalues must come from float64"
        assert torch.equal(q, q64.float()), "eigenvectors must come from float64"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_eigh_names_the_factor_that_fails(device, dtype):
    factors = [spd(n, seed=i, dtype=dtype, device=device) for i, n in enumerate([5, 7, 7])]
    factors[2][3, 4] = factors[2][4, 3] = float("nan")
    with pytest.raises(RuntimeError, match=r"factors\[2\] \(7x7\)"):
        ops.batched_eigh(factors)


def test_batched_eigh_empty_list():
    assert ops.batched_eigh([]) == ([], [])


# -------------------------------------------------- eigen_precondition ----

# (out, in) per layer: repeated shapes share one batched computation.
LAYER_SHAPES = [(7, 5), (16, 28), (7, 5), (1, 1), (64, 129), (7, 5), (16, 28)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", [LAYER_SHAPES, [(513, 65)], [(64, 513)]], ids=["mixed", "513x65", "64x513"])
def test_eigen_precondition_matches_reference(device, dtype, shapes):
    layers = eigen_layers(shapes, dtype, device)
    layers64 = [[t.double().cpu() for t in lst] for lst in layers]
    exact = ref.eigen_precondition(*layers64, 0.003)
    theirs = ref.eigen_precondition(*layers, 0.003)
    ours = ops.eigen_precondition(*layers, 0.003)
    assert len(ours) == len(shapes)
    for i, (p, e, t) in enumerate(zip(ours, exact, theirs)):
        assert p.shape == layers[0][i].shape and p.dtype == dtype
        assert_accurate(p, e, t, f"eigen_precondition layer {i}")


def test_eigen_precondition_empty_list():
    assert ops.eigen_precondition([], [], [], [], [], 0.1) == []


# ------------------------------------------------ inverse_precondition ----


def _inverse_layers(shapes, dtype, device):
    """(grads, a_inv, g_inv) with SPD inverses of the right sizes, one seed per layer."""
    grads = [randn(o, i, seed=3 * k, device=device, dtype=dtype) for k, (o, i) in enumerate(shapes)]
    a_inv = [spd(i, seed=3 * k + 1, device=device).to(dtype) for k, (o, i) in enumerate(shapes)]
    g_inv = [spd(o, seed=3 * k + 2, device=device).to(dtype) for k, (o, i) in enumerate(shapes)]
    return grads, a_inv, g_inv


# Many small layers (run concurrently, one per thread) beside one that is more than an
# even share of the work (run first, alone, with multi-threaded products).
INVERSE_SHAPES = [(7, 5), (16, 28), (1, 1), (64, 129), (7, 5), (33, 17)] * 3 + [(257, 129)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", [INVERSE_SHAPES, [(513, 65)], [(3, 4), (5, 2)]], ids=["mixed", "513x65", "two"])
def test_inverse_precondition_matches_reference(device, dtype, shapes):
    layers = _inverse_layers(shapes, dtype, device)
    layers64 = [[t.double().cpu() for t in lst] for lst in layers]
    exact = ref.inverse_precondition(*layers64)
    theirs = ref.inverse_precondition(*layers)
    ours = ops.inverse_precondition(*layers)
    assert len(ours) == len(shapes)
    for i, (p, e, t) in enumerate(zip(ours, exact, theirs)):
        assert p.shape == layers[0][i].shape and p.dtype == dtype and p.device == layers[0][i].device
        assert_accurate(p, e, t, f"inverse_precondition layer {i}")


def test_inverse_precondition_checks_and_empty_list():
    assert ops.inverse_precondition([], [], []) == []
    g, a, q = _inverse_layers([(3, 4)], torch.float64, "cpu")
    with pytest.raises(RuntimeError, match=r"a_inv\[0\] must be \(in, in\)"):
        ops.inverse_precondition(g, q, q)
    with pytest.raises(RuntimeError, match="equal length"):
        torch.ops.kfac_ext.inverse_precondition(g, a, [])
    with pytest.raises(RuntimeError, match="dtype"):
        ops.inverse_precondition(g, [a[0].float()], q)


# ---------------------------------------------- pack_triu / unpack_triu_ ----


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_unpack_round_trip(device, dtype):
    mats = [sym(n, seed=n, dtype=dtype, device=device) for n in SIZES + [7]]
    packed = ops.pack_triu(mats)
    assert packed.shape == (sum(n * (n + 1) // 2 for n in SIZES + [7]),)
    assert torch.equal(packed, ref.pack_triu(mats))
    targets = [torch.full_like(m, float("nan")) for m in mats]
    ops.unpack_triu_(packed, targets, scale=0.25)
    for t, e in zip(targets, ref.unpack_triu(packed, mats, scale=0.25)):
        assert torch.equal(t, e)


@pytest.mark.parametrize("device", DEVICES)
def test_pack_unpack_strided_matrices(device):
    base = randn(2, 9, 9, seed=4, device=device)
    view = base[0].T  # column-major view
    assert torch.equal(ops.pack_triu([view]), ref.pack_triu([view]))
    target = torch.zeros(9, 18, dtype=torch.float64, device=device)[:, ::2]
    ops.unpack_triu_(ops.pack_triu([view]), [target])
    assert torch.equal(target, ref.unpack_triu(ref.pack_triu([view]), [view])[0])


# ---------------------------------------------------------- kl_clip_sum ----


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_clip_sum_matches_reference(device, dtype):
    shapes = [(1, 1), (7, 5), (64, 129), (513, 65)]
    precond = [randn(*s, seed=i, dtype=dtype, device=device) for i, s in enumerate(shapes)]
    grads = [randn(*s, seed=50 + i, dtype=dtype, device=device) for i, s in enumerate(shapes)]
    exact = ref.kl_clip_sum([p.double() for p in precond], [g.double() for g in grads])
    theirs = sum((p * g).sum() for p, g in zip(precond, grads))
    ours = ops.kl_clip_sum(precond, grads)
    assert ours.dim() == 0 and ours.dtype == torch.float64 and ours.device.type == device
    assert_accurate(ours.to(dtype), exact, theirs, "kl_clip_sum")
    if dtype == torch.float32:  # float64 accumulation: as good as float64 inputs
        assert rel_err(ours, exact) <= 1e-12


def test_kl_clip_sum_empty_and_strided():
    assert ops.kl_clip_sum([], []).item() == 0.0
    p = randn(6, 8, seed=1).T
    g = randn(8, 6, seed=2)
    assert abs(ops.kl_clip_sum([p], [g]).item() - (p * g).sum().item()) <= 1e-12


# -------------------------------------------------------------- opcheck ----


def _opcheck_cases(device):
    x = randn(9, 5, seed=1, device=device)
    layers = eigen_layers([(3, 4), (3, 4), (2, 5)], torch.float64, device)
    mats = [sym(n, seed=n, device=device) for n in (1, 4, 6)]
    return {
        "cov_update_": (sym(6, seed=2, device=device), x, 0.5, 0.9, True),
        "channel_cov_update_": (sym(4, seed=3, device=device), randn(2, 4, 7, seed=4, device=device), 0.5, 0.9),
        "batched_eigh": ([spd(n, seed=n, device=device) for n in (3, 5, 3)], True),
        "eigen_precondition": (*layers, 0.1),
        "inverse_precondition": _inverse_layers([(3, 4), (3, 4), (2, 5)], torch.float64, device),
        "pack_triu": (mats,),
        "unpack_triu_": (ref.pack_triu(mats), [torch.zeros_like(m) for m in mats], 0.5),
        "kl_clip_sum": (layers[0], [g * 2 for g in layers[0]]),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(_opcheck_cases("cpu")))
def test_opcheck(device, name):
    args = _opcheck_cases(device)[name]
    torch.library.opcheck(getattr(torch.ops.kfac_ext, name).default, args)


# -------------------------------------------------------------- bad input ----
# Each case: (callable, message regex, tensors that must be left untouched).


def _bad_calls():
    f = sym(5, seed=1)
    x = randn(4, 5, seed=2)
    layers = eigen_layers([(3, 4)], torch.float64, "cpu")
    mats = [sym(3, seed=3), sym(4, seed=4)]
    packed = ref.pack_triu(mats)
    yield "cov rank", lambda: ops.cov_update_(f, x[0], 1, 1), r"x must be 2-D", [f]
    yield (
        "cov d",
        lambda: ops.cov_update_(f, randn(4, 6, seed=0), 1, 1),
        r"x must be 2-D \(rows, d\) with d == factor.size\(0\)",
        [f],
    )
    yield "cov ones d", lambda: ops.cov_update_(f, x, 1, 1, True), r"factor.size\(0\) - 1", [f]
    yield "cov factor", lambda: ops.cov_update_(randn(5, 4, seed=0), x, 1, 1), r"factor must be a square", []
    yield "cov int", lambda: ops.cov_update_(f, x.long(), 1, 1), r"x must be float32 or float64", [f]
    yield "cov int factor", lambda: ops.cov_update_(f.int(), x, 1, 1), r"factor must be float32 or float64", []
    yield "cov mixed", lambda: ops.cov_update_(f, x.float(), 1, 1), r"x must have the dtype of factor", [f]
    yield "cov strided", lambda: ops.cov_update_(sym(10, seed=0)[::2, ::2], x, 1, 1), r"factor must be contiguous", []
    yield "cov type", lambda: ops.cov_update_(f, x.tolist(), 1, 1), r"x must be a torch.Tensor", [f]
    yield "chan rank", lambda: ops.channel_cov_update_(f, x, 1, 1), r"x must be 3-D \(N, C, L\)", [f]
    yield "chan C", lambda: ops.channel_cov_update_(f, randn(2, 4, 3, seed=0), 1, 1), r"C == factor.size\(0\) == 5", [f]
    yield "eigh square", lambda: ops.batched_eigh([f, x]), r"factors\[1\] must be a square", []
    yield "eigh int", lambda: ops.batched_eigh([f.long()]), r"factors\[0\] must be float32 or float64", []
    yield "eigh list", lambda: ops.batched_eigh(f), r"factors must be a list of tensors", []
    g, qa, da, qg, dg = layers
    yield (
        "prec qa",
        lambda: ops.eigen_precondition(g, qg, da, qg, dg, 0.1),
        r"qa\[0\] must be \(in, in\) == \(4, 4\)",
        [],
    )
    yield "prec dg", lambda: ops.eigen_precondition(g, qa, da, qg, da, 0.1), r"dg\[0\] must be \(out,\) == \(3,\)", []
    yield "prec len", lambda: ops.eigen_precondition(g, qa, da, qg, [], 0.1), r"equal length", []
    yield (
        "prec dtype",
        lambda: ops.eigen_precondition(g, [qa[0].float()], da, qg, dg, 0.1),
        r"qa\[0\] must have the dtype of grads\[0\]",
        [],
    )
    yield (
        "prec rank",
        lambda: ops.eigen_precondition([g[0][0]], qa, da, qg, dg, 0.1),
        r"grads\[0\] must be 2-D \(out, in\)",
        [],
    )
    yield "pack square", lambda: ops.pack_triu([f, x]), r"mats\[1\] must be a square", []
    yield "pack mixed", lambda: ops.pack_triu([f, f.float()]), r"mats\[1\] must have the dtype of mats\[0\]", []
    yield "pack empty", lambda: ops.pack_triu([]), r"at least one matrix", []
    yield "unpack size", lambda: ops.unpack_triu_(packed[:-1], mats), r"packed must be 1-D with .* 16 entries", mats
    yield (
        "unpack dtype",
        lambda: ops.unpack_triu_(packed.float(), mats),
        r"packed must have the dtype of mats\[0\]",
        mats,
    )
    yield "unpack late", lambda: ops.unpack_triu_(packed, mats + [x]), r"mats\[2\] must be a square", mats
    yield (
        "unpack overlap",
        lambda: ops.unpack_triu_(ref.pack_triu([mats[0]]), [torch.zeros(1, 1, dtype=torch.float64).expand(3, 3)]),
        r"mats\[0\] must not have overlapping memory",
        [],
    )
    yield "kl shape", lambda: ops.kl_clip_sum([f], [x]), r"grads\[0\] must have the shape of precond\[0\]", []
    yield "kl len", lambda: ops.kl_clip_sum([f], []), r"equal length", []
    yield "kl int", lambda: ops.kl_clip_sum([f.long()], [f.long()]), r"precond\[0\] must be float32 or float64", []


BAD = list(_bad_calls())


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_gives_clear_error_and_writes_nothing(case):
    _, call, message, untouched = case
    before = [t.clone() for t in untouched]
    with pytest.raises((RuntimeError, TypeError, ValueError), match=message):
        call()
    for t, b in zip(untouched, before):
        assert torch.equal(t, b), "a rejected call must not write into its outputs"


def test_direct_torch_ops_call_is_checked_in_the_kernel():
    f = sym(5, seed=1)
    before = f.clone()
    with pytest.raises(RuntimeError, match=r"cov_update_: x must be 2-D"):
        torch.ops.kfac_ext.cov_update_(f, randn(3, 4, seed=0), 1.0, 1.0)
    assert torch.equal(f, before)


@CUDA
def test_cpu_cuda_mix_is_rejected_with_names():
    f = sym(5, seed=1, device="cuda")
    with pytest.raises(RuntimeError, match=r"x must be on the device of factor"):
        ops.cov_update_(f, randn(3, 5, seed=0), 1, 1)
    with pytest.raises(RuntimeError, match=r"qa\[0\] must be on the device of grads\[0\]"):
        g, qa, da, qg, dg = eigen_layers([(3, 4)], torch.float64, "cuda")
        ops.eigen_precondition(g, [qa[0].cpu()], da, qg, dg, 0.1)
