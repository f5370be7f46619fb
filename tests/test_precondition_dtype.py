"""KFACPreconditioner(precondition_dtype=...): the preconditioning GEMMs in float32
(default, the fused op), TF32 (the same op, TF32 allowed: a GPU matter) or bfloat16
(kfac_ext.precision), against the float64 reference of ops.precondition_grads_."""

import pytest
import torch
from torch import nn

import kfac_ext
from kfac_ext import precision
from kfac_ext import reference as ref


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, bias=False),
        nn.Flatten(),
        nn.Linear(5 * 3 * 3, 7),
        nn.Tanh(),
        nn.Linear(7, 3),
    )


def _grads_after(dtype, steps=4):
    model = _model()
    pre = kfac_ext.KFACPreconditioner(model, precondition_dtype=dtype, damping=0.01)
    for s in range(steps):
        g = torch.Generator().manual_seed(s)
        model.zero_grad()
        nn.functional.cross_entropy(
            model(torch.randn(9, 4, 5, 5, generator=g)), torch.randint(0, 3, (9,), generator=g)
        ).backward()
        pre.step()
    return [p.grad.clone() for p in model.parameters()]


def test_tf32_on_cpu_is_float32():
    for a, b in zip(_grads_after("tf32"), _grads_after(torch.float32)):
        assert torch.equal(a, b)


def test_bf16_is_close_to_float32_but_not_it():
    bf16, fp32 = _grads_after(torch.bfloat16), _grads_after(torch.float32)
    assert precision.relative_error(bf16, fp32) < 5e-2
    assert any(not torch.equal(a, b) for a, b in zip(bf16, fp32))


@pytest.mark.parametrize("kl_clip", [None, 1e-3])
def test_bf16_precondition_grads_matches_the_float64_reference(kl_clip):
    g = torch.Generator().manual_seed(7)
    shapes = [(5, 3, 3, 3, True), (6, 11, 1, 1, False), (4, 17, 1, 1, True)]
    weights, biases, qa, da, qg, dg = [], [], [], [], [], []
    for out, c, kh, kw, bias in shapes:
        weights.append(
            torch.randn(out, c, kh, kw, generator=g).squeeze(-1).squeeze(-1)
            if kh == 1
            else torch.randn(out, c, kh, kw, generator=g)
        )
        n_in = c * kh * kw + bias
        if bias:
            biases.append(torch.randn(out, generator=g))
        for n, qs, ds in ((n_in, qa, da), (out, qg, dg)):
            x = torch.randn(n + 3, n, generator=g)
            d, q = torch.linalg.eigh(x.T @ x / n)
            qs.append(q)
            ds.append(d.clamp(min=0))
    want_w, want_b, _ = ref.precondition_grads(
        [w.double() for w in weights],
        [b.double() for b in biases],
        *[[t.double() for t in ts] for ts in (qa, da, qg, dg)],
        0.01,
        kl_clip,
        0.5,
    )
    ws, bs = [w.clone() for w in weights], [b.clone() for b in biases]
    precision.precondition_grads_(torch.bfloat16, ws, bs, qa, da, qg, dg, 0.01, kl_clip, 0.5)
    assert precision.relative_error(ws + bs, want_w + want_b) < 3e-2
    assert all(w.dtype == torch.float32 for w in ws + bs)


@pytest.mark.parametrize("bad", [torch.float16, "fp8", torch.float64, None])
def test_bad_precondition_dtype_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="precondition_dtype must be one of"):
        kfac_ext.KFACPreconditioner(_model(), precondition_dtype=bad)


def test_precondition_dtype_needs_the_eigen_method():
    with pytest.raises(ValueError, match="precondition_dtype applies to compute_method='eigen'"):
        kfac_ext.KFACPreconditioner(_model(), compute_method="inverse", precondition_dtype=torch.bfloat16)
