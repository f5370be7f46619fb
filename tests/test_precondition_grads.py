"""ops.precondition_grads_ / precondition_grads_inverse_ (the fused eigen- and
inverse-method steps on the parameters' gradients) against their references in
kfac_ext.reference, and the preconditioner's two paths (fused, and the
per-layer Python path kept for distributed strategies that send preconditioned
gradients) against each other.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _tensors import CUDA, DEVICES, randn, spd
from torch import nn

from kfac_ext import KFACPreconditioner, ops
from kfac_ext import reference as ref
from kfac_ext.comm import LocalComm

DTYPES = [torch.float32, torch.float64]

# (weight shape, has bias): a 4-D conv weight, Linear weights, a single output
# row, and a layer without bias between layers with one.
LAYERS = [((16, 3, 3, 3), True), ((7, 5), False), ((1, 9), True), ((33, 4, 1, 2), False), ((10, 65), True)]


def _eigh_of_spd(n, seed, dtype, device):
    d, q = torch.linalg.eigh(spd(n, seed=seed))
    return d.to(device, dtype), q.to(device, dtype)


def _case(dtype, device, layers=LAYERS, seed=0):
    weights, biases, qa, da, qg, dg = [], [], [], [], [], []
    for i, (shape, bias) in enumerate(layers):
        weights.append(randn(*shape, seed=seed + 10 * i, dtype=dtype, device=device))
        if bias:
            biases.append(randn(shape[0], seed=seed + 10 * i + 1, dtype=dtype, device=device))
        n_in = weights[-1][0].numel() + int(bias)
        d, q = _eigh_of_spd(n_in, seed + 10 * i + 2, dtype, device)
        da.append(d)
        qa.append(q)
        d, q = _eigh_of_spd(shape[0], seed + 10 * i + 3, dtype, device)
        dg.append(d)
        qg.append(q)
    return weights, biases, qa, da, qg, dg


def _to64(tensors):
    return [t.double().cpu() for t in tensors]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kl_clip,kl_factor", [(None, 1.0), (1e-3, 0.25), (1e9, 0.25)], ids=["no-clip", "clip-active", "clip-inactive"]
)
def test_matches_reference(device, dtype, kl_clip, kl_factor):
    weights, biases, qa, da, qg, dg = _case(dtype, device)
    exact_w, exact_b, exact_nu = ref.precondition_grads(
        _to64(weights), _to64(biases), _to64(qa), _to64(da), _to64(qg), _to64(dg), 0.01, kl_clip, kl_factor
    )
    theirs_w, theirs_b, _ = ref.precondition_grads(weights, biases, qa, da, qg, dg, 0.01, kl_clip, kl_factor)
    nu = ops.precondition_grads_(weights, biases, qa, da, qg, dg, 0.01, kl_clip, kl_factor)
    _check_against_reference(
        weights + biases, nu, (exact_w + exact_b, exact_nu), theirs_w + theirs_b, kl_clip, dtype, device
    )


def _check_against_reference(ours, nu, exact, theirs, kl_clip, dtype, device):
    """ours (the op's in-place results) and ν against the float64 reference, each
    within twice the error of the same reference run in `dtype` (theirs)."""
    exact, exact_nu = exact
    if kl_clip == 1e-3:
        assert exact_nu < 0.5, "test premise: the clip scales the step down"
    elif kl_clip is not None:
        assert exact_nu == 1.0, "test premise: the clip is inactive"
    assert nu.dim() == 0 and nu.dtype == torch.float64 and nu.device.type == device
    assert float(nu) == pytest.approx(exact_nu, rel=1e-5 if dtype == torch.float32 else 1e-12)
    eps = torch.finfo(dtype).eps
    for o, e, t in zip(ours, exact, theirs):
        assert o.dtype == dtype and o.device.type == device
        scale = e.abs().max()
        err = (o.double().cpu() - e).abs().max() / scale
        their_err = (t.double().cpu() - e).abs().max() / scale
        assert err <= 2 * their_err + 16 * eps, f"{err:.3g} vs torch {their_err:.3g}"


@pytest.mark.parametrize("device", DEVICES)
def test_writes_through_views_and_leaves_other_rows_alone(device):
    """A grouped conv passes one group's rows of weight.grad / bias.grad."""
    weight = randn(12, 3, 3, 3, seed=1, dtype=torch.float64, device=device)
    bias = randn(12, seed=2, dtype=torch.float64, device=device)
    before_w, before_b = weight.clone(), bias.clone()
    _, _, qa, da, qg, dg = _case(torch.float64, device, [((4, 3, 3, 3), True)])
    w_view, b_view = weight[4:8], bias[4:8]
    exact_w, exact_b, _ = ref.precondition_grads([w_view.clone()], [b_view.clone()], qa, da, qg, dg, 0.1)
    ops.precondition_grads_([w_view], [b_view], qa, da, qg, dg, 0.1)
    assert torch.allclose(weight[4:8], exact_w[0], rtol=0, atol=1e-12)
    assert torch.allclose(bias[4:8], exact_b[0], rtol=0, atol=1e-12)
    rows = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11], device=device)
    assert torch.equal(weight[rows], before_w[rows]) and torch.equal(bias[rows], before_b[rows])


def test_bfloat16_gradients_are_preconditioned_in_the_factor_dtype():
    weights, biases, qa, da, qg, dg = _case(torch.float32, "cpu", [((6, 5), True)])
    w16, b16 = weights[0].bfloat16(), biases[0].bfloat16()
    exact_w, exact_b, _ = ref.precondition_grads([w16.float()], [b16.float()], qa, da, qg, dg, 0.1)
    ops.precondition_grads_([w16], [b16], qa, da, qg, dg, 0.1)
    assert w16.dtype == torch.bfloat16
    assert torch.allclose(w16.float(), exact_w[0], rtol=1e-2, atol=1e-2 * exact_w[0].abs().max())
    assert torch.allclose(b16.float(), exact_b[0], rtol=1e-2, atol=1e-2 * exact_b[0].abs().max())


def test_empty_lists():
    assert float(ops.precondition_grads_([], [], [], [], [], [], 0.1)) == 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_zero_and_non_finite_kl_sums_leave_the_step_unscaled(device):
    weights, biases, qa, da, qg, dg = _case(torch.float64, device, [((3, 4), True)])
    zero_w, zero_b = [torch.zeros_like(weights[0])], [torch.zeros_like(biases[0])]
    assert float(ops.precondition_grads_(zero_w, zero_b, qa, da, qg, dg, 0.1, 1e-3)) == 1.0
    inf_w = [weights[0].clone()]
    inf_w[0][0, 0] = float("inf")
    assert float(ops.precondition_grads_(inf_w, [biases[0].clone()], qa, da, qg, dg, 0.1, 1e-3)) == 1.0


@CUDA
def test_no_host_synchronisation_on_cuda():
    args = _case(torch.float32, "cuda")
    ops.precondition_grads_(*args, 0.1, 1e-3, 0.5)  # warm-up: handles, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ops.precondition_grads_(*args, 0.1, 1e-3, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("extra bias", r"bias_grads holds 4 tensors but only 3 layers have a bias row"),
        ("missing bias", r"qa\[4\] has a bias row but bias_grads holds only 2 tensors"),
        ("bias size", r"bias_grads\[1\] must have 1 elements"),
        ("rows", r"weight_grads\[1\] must have qg\[1\].size\(0\) rows"),
        ("qa size", r"qa\[3\] must be \(in, in\) or \(in \+ 1, in \+ 1\)"),
        ("list length", r"one entry per layer"),
    ],
)
def test_bad_input_names_the_argument_and_writes_nothing(breakage, message):
    weights, biases, qa, da, qg, dg = _case(torch.float64, "cpu")
    if breakage == "extra bias":
        biases.append(torch.zeros(3, dtype=torch.float64))
    elif breakage == "missing bias":
        biases.pop()
    elif breakage == "bias size":
        biases[1] = torch.zeros(2, dtype=torch.float64)
    elif breakage == "rows":
        weights[1] = torch.zeros(8, 5, dtype=torch.float64)
    elif breakage == "qa size":
        qa[3] = torch.eye(5, dtype=torch.float64)
    else:
        dg.pop()
    before = [t.clone() for t in weights + biases]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.kfac_ext.precondition_grads_(weights, biases, qa, da, qg, dg, 0.1, 0.0, 1.0)
    for t, b in zip(weights + biases, before):
        assert torch.equal(t, b)


def test_kl_clip_must_be_positive_or_none():
    weights, biases, qa, da, qg, dg = _case(torch.float64, "cpu")
    with pytest.raises(ValueError, match="kl_clip must be > 0 or None"):
        ops.precondition_grads_(weights, biases, qa, da, qg, dg, 0.1, kl_clip=0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    weights, biases, qa, da, qg, dg = _case(torch.float64, device, LAYERS[:3])
    torch.library.opcheck(
        torch.ops.kfac_ext.precondition_grads_.default, (weights, biases, qa, da, qg, dg, 0.1, 1e-3, 0.5)
    )


# ------------------------------------------- the preconditioner's two paths ----


class _PythonPathComm(LocalComm):
    """One process, but as if preconditioned gradients had to be sent: the
    per-layer path (grad_matrix, eigen_precondition, KL clip, set_grad)."""

    @property
    def replicates_preconditioning(self) -> bool:
        return False


def _net():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, groups=2, bias=False),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    ).double()


@pytest.mark.parametrize("method", ["eigen", "inverse"])
@pytest.mark.parametrize("kl_clip", [None, 1e-4])
def test_fused_path_equals_the_per_layer_path(kl_clip, method):
    torch.manual_seed(0)
    model = _net()
    twin = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.randint(0, 5, (4,))
    fused = KFACPreconditioner(model, damping=0.01, kl_clip=kl_clip, lr=0.1, compute_method=method)
    per_layer = KFACPreconditioner(
        twin, damping=0.01, kl_clip=kl_clip, lr=0.1, comm=_PythonPathComm(), compute_method=method
    )
    for _ in range(3):
        for m, pre in ((model, fused), (twin, per_layer)):
            m.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(x), y).backward()
            pre.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-14)


@CUDA
@pytest.mark.parametrize("method", ["eigen", "inverse"])
@pytest.mark.parametrize("comm", [None, _PythonPathComm()], ids=["fused", "per-layer"])
def test_plain_step_does_not_wait_for_the_gpu(comm, method):
    """Between factor and eigendecomposition updates a step makes no host sync,
    with the KL clip active, on both paths."""
    torch.manual_seed(0)
    model = _net().float().cuda()
    x, y = torch.randn(4, 3, 6, 6, device="cuda"), torch.randint(0, 5, (4,), device="cuda")
    pre = KFACPreconditioner(
        model, factor_update_steps=1000, inv_update_steps=1000, kl_clip=1e-6, lr=0.1, comm=comm, compute_method=method
    )
    for _ in range(2):  # step 0 captures and decomposes (syncs); step 1 is a plain step
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        torch.cuda.synchronize()
        if pre.steps == 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            pre.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------ the inverse method's op ----


def _inverse_case(dtype, device, layers=LAYERS, seed=0, damping=0.05):
    """Gradients and the damped factor inverses (A + λI)⁻¹, (G + λI)⁻¹ of random SPD factors."""
    weights, biases, qa, da, qg, dg = _case(dtype, device, layers, seed)

    def damped_inverse(d, q):
        d, q = d.double().cpu(), q.double().cpu()
        return (q @ torch.diag(1.0 / (d + damping)) @ q.T).to(device, dtype)

    return (
        weights,
        biases,
        [damped_inverse(d, q) for d, q in zip(da, qa)],
        [damped_inverse(d, q) for d, q in zip(dg, qg)],
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kl_clip,kl_factor", [(None, 1.0), (1e-3, 0.25), (1e9, 0.25)], ids=["no-clip", "clip-active", "clip-inactive"]
)
def test_inverse_matches_reference(device, dtype, kl_clip, kl_factor):
    weights, biases, a_inv, g_inv = _inverse_case(dtype, device)
    exact_w, exact_b, exact_nu = ref.precondition_grads_inverse(
        _to64(weights), _to64(biases), _to64(a_inv), _to64(g_inv), kl_clip, kl_factor
    )
    theirs_w, theirs_b, _ = ref.precondition_grads_inverse(weights, biases, a_inv, g_inv, kl_clip, kl_factor)
    nu = ops.precondition_grads_inverse_(weights, biases, a_inv, g_inv, kl_clip, kl_factor)
    _check_against_reference(
        weights + biases, nu, (exact_w + exact_b, exact_nu), theirs_w + theirs_b, kl_clip, dtype, device
    )


@pytest.mark.parametrize("device", DEVICES)
def test_inverse_writes_through_views_and_leaves_other_rows_alone(device):
    weight = randn(12, 3, 3, 3, seed=1, dtype=torch.float64, device=device)
    bias = randn(12, seed=2, dtype=torch.float64, device=device)
    before_w, before_b = weight.clone(), bias.clone()
    _, _, a_inv, g_inv = _inverse_case(torch.float64, device, [((4, 3, 3, 3), True)])
    w_view, b_view = weight[4:8], bias[4:8]
    exact_w, exact_b, _ = ref.precondition_grads_inverse([w_view.clone()], [b_view.clone()], a_inv, g_inv)
    ops.precondition_grads_inverse_([w_view], [b_view], a_inv, g_inv)
    assert torch.allclose(weight[4:8], exact_w[0], rtol=0, atol=1e-12)
    assert torch.allclose(bias[4:8], exact_b[0], rtol=0, atol=1e-12)
    rows = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11], device=device)
    assert torch.equal(weight[rows], before_w[rows]) and torch.equal(bias[rows], before_b[rows])


def test_inverse_empty_lists():
    assert float(ops.precondition_grads_inverse_([], [], [], [])) == 1.0


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("list length", r"weight_grads, a_inv, g_inv must be lists of equal length"),
        ("a_inv size", r"a_inv\[3\] must be \(in, in\) or \(in \+ 1, in \+ 1\)"),
        ("g_inv rows", r"weight_grads\[1\] must have g_inv\[1\].size\(0\) rows"),
        ("g_inv not square", r"g_inv\[2\] must be a square 2-D matrix"),
        ("dtypes", r"g_inv\[0\] must have the dtype of a_inv\[0\]"),
        ("missing bias", r"a_inv\[4\] has a bias row but bias_grads holds only 2 tensors"),
    ],
)
def test_inverse_bad_input_names_the_argument_and_writes_nothing(breakage, message):
    weights, biases, a_inv, g_inv = _inverse_case(torch.float64, "cpu")
    if breakage == "list length":
        g_inv.pop()
    elif breakage == "a_inv size":
        a_inv[3] = torch.eye(5, dtype=torch.float64)
    elif breakage == "g_inv rows":
        g_inv[1] = torch.eye(8, dtype=torch.float64)
    elif breakage == "g_inv not square":
        g_inv[2] = torch.ones(1, 2, dtype=torch.float64)
    elif breakage == "dtypes":
        g_inv[0] = g_inv[0].float()
    else:
        biases.pop()
    before = [t.clone() for t in weights + biases]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.kfac_ext.precondition_grads_inverse_(weights, biases, a_inv, g_inv, 0.0, 1.0)
    for t, b in zip(weights + biases, before):
        assert torch.equal(t, b)


@pytest.mark.parametrize("device", DEVICES)
def test_inverse_opcheck(device):
    weights, biases, a_inv, g_inv = _inverse_case(torch.float64, device, LAYERS[:3])
    torch.library.opcheck(
        torch.ops.kfac_ext.precondition_grads_inverse_.default, (weights, biases, a_inv, g_inv, 1e-3, 0.5)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "rows of a larger gradient"])
@pytest.mark.parametrize("method", ["eigen", "inverse"])
def test_clipped_write_back_is_nu_times_the_unclipped_one(dtype, layout, method):
    """With the KL clip active the gradients get exactly ν·P, P in the factor dtype (float32
    here) and then cast to the gradient's, for a contiguous gradient, a slice (a grouped
    conv's rows) and another dtype alike (pins the arithmetic of the write-back)."""
    layers = [((4, 3, 3, 3), True), ((10, 65), True), ((7, 5), False)]
    weights, biases, a_inv, g_inv = _inverse_case(torch.float32, "cpu", layers)
    _, _, qa, da, qg, dg = _case(torch.float32, "cpu", layers)

    def grads():
        if layout == "contiguous":
            return [w.to(dtype, copy=True) for w in weights], [b.to(dtype, copy=True) for b in biases]
        big_w = [torch.cat([w, w]).to(dtype) for w in weights]
        big_b = [torch.cat([b, b]).to(dtype) for b in biases]
        return [w[1 : 1 + len(v)] for w, v in zip(big_w, weights)], [b[1 : 1 + len(v)] for b, v in zip(big_b, biases)]

    def run(w, b, kl_clip):
        if method == "inverse":
            return ops.precondition_grads_inverse_(w, b, a_inv, g_inv, kl_clip, 0.25)
        return ops.precondition_grads_(w, b, qa, da, qg, dg, 0.05, kl_clip, 0.25)

    w0, b0 = [w.float().clone() for w in grads()[0]], [b.float().clone() for b in grads()[1]]
    run(w0, b0, None)  # P in float32, written unscaled (an exact copy)
    w1, b1 = grads()
    nu = run(w1, b1, 1e-3)
    assert float(nu) < 0.5, "test premise: the clip scales the step down"
    for ours, unscaled in zip(w1 + b1, w0 + b0):
        assert torch.equal(ours, (unscaled * nu.float()).to(dtype))
