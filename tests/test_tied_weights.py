"""Tied weights across layer types: each use preconditioned with its own factors and the
results summed, exactly what a model with the weight untied into copies gets."""

import pytest
import torch
from torch import nn

import kfac_ext
from kfac_ext.comm import LocalComm


class _LM(nn.Module):
    """Embedding -> Linear -> tanh -> output Linear, the output weight tied to the embedding."""

    def __init__(self, tie, head_bias=False):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(9, 5, padding_idx=0)
        self.mid = nn.Linear(5, 5)
        self.head = nn.Linear(5, 9, bias=head_bias)
        if tie:
            self.head.weight = self.emb.weight
        else:
            self.head.weight = nn.Parameter(self.emb.weight.detach().clone())

    def forward(self, idx):
        return self.head(torch.tanh(self.mid(self.emb(idx))))


def _steps(model, n=3, **kw):
    p = kfac_ext.KFACPreconditioner(model, kl_clip=None, inv_dtype=torch.float64, damping=0.05, factor_decay=0.7, **kw)
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        model.zero_grad()
        idx = torch.randint(0, 9, (4, 6), generator=gen)
        nn.functional.cross_entropy(model(idx).reshape(-1, 9), idx.roll(1, 1).reshape(-1)).backward()
        p.step()
    return p


@pytest.mark.parametrize("hybrid", [False, True], ids=["one-process", "hybrid-mem-opt-path"])
@pytest.mark.parametrize("head_bias", [False, True])
@pytest.mark.parametrize("method", ["eigen", "inverse"])
def test_tied_embedding_and_linear_equal_the_untied_per_use_sum(head_bias, method, hybrid):
    """In one process, and on the HYBRID/MEM-OPT path (each use's P sent like a layer's)."""
    tied, untied = _LM(True, head_bias).double(), _LM(False, head_bias).double()
    p = _steps(tied, compute_method=method, comm=_SendsPreconditioned() if hybrid else None)
    _steps(untied, compute_method=method)
    assert [l.name for l in p.layers if l.tied] == ["emb", "head"]
    want = untied.emb.weight.grad + untied.head.weight.grad
    assert float((tied.emb.weight.grad - want).norm() / want.norm()) < 1e-8
    for name in ("mid.weight", "mid.bias") + (("head.bias",) if head_bias else ()):
        got, ref = tied.get_parameter(name).grad, untied.get_parameter(name).grad
        assert float((got - ref).norm() / ref.norm()) < 1e-8, name


def test_tied_linears_equal_the_untied_per_use_sum():
    def model(tie):
        torch.manual_seed(2)
        m = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6)).double()
        m[2].weight = m[0].weight if tie else nn.Parameter(m[0].weight.detach().clone())
        return m

    tied, untied = model(True), model(False)
    for m in (tied, untied):
        p = kfac_ext.KFACPreconditioner(m, kl_clip=None, inv_dtype=torch.float64, damping=0.1)
        for seed in range(2):
            m.zero_grad()
            m(torch.randn(5, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).pow(
                2
            ).mean().backward()
            p.step()
    want = untied[0].weight.grad + untied[2].weight.grad
    assert float((tied[0].weight.grad - want).norm() / want.norm()) < 1e-8


def test_tied_weights_with_kl_clip_stay_finite_and_are_not_the_plain_gradient():
    model = _LM(True)
    p = kfac_ext.KFACPreconditioner(model, damping=0.05)
    idx = torch.randint(0, 9, (4, 6))
    for _ in range(2):
        model.zero_grad()
        model(idx).logsumexp(-1).mean().backward()
        plain = model.emb.weight.grad.clone()
        p.step()
    assert torch.isfinite(model.emb.weight.grad).all()
    assert not torch.allclose(model.emb.weight.grad, plain)


def test_a_tie_with_a_grouped_conv_is_not_registered_with_a_warning():
    model = nn.Sequential(nn.Conv2d(2, 2, 1, groups=2), nn.Conv2d(2, 2, 1, groups=2))
    model[1].weight = model[0].weight
    with pytest.warns(UserWarning, match=r"\['0', '1'\] share one weight"):
        p = kfac_ext.KFACPreconditioner(model)
    assert p.layers == []


class _SendsPreconditioned(LocalComm):
    """One process on the path HYBRID-OPT and MEM-OPT take (the grad workers' P is
    'sent', then written back on every rank), not the fused in-place one."""

    @property
    def replicates_preconditioning(self) -> bool:
        return False


@pytest.mark.parametrize("comm", [None, _SendsPreconditioned()], ids=["in-place", "sends-P"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tied_weights_kl_clip_reads_the_whole_update_against_the_whole_gradient(comm, dtype):
    """ν = min(1, sqrt(κ / (lr² |Σ⟨P, Γ⟩|))) where a tied weight's P is Σ_u P_u and its Γ
    the whole .grad, computed by hand from the untied model's per-use results (with the
    weight's dtype equal to inv_dtype the sum once read Σ_u P_u against itself)."""
    kl, lr = 1e-4, 0.5
    tied, untied = _LM(True, True).to(dtype), _LM(False, True).to(dtype)
    kw = dict(kl_clip=kl, lr=lr, inv_dtype=dtype, damping=0.05, factor_decay=0.7)
    p = kfac_ext.KFACPreconditioner(tied, comm=comm, **kw)
    q = kfac_ext.KFACPreconditioner(untied, **{**kw, "kl_clip": None})
    idx = torch.randint(0, 9, (4, 6), generator=torch.Generator().manual_seed(3))
    for m, pre in ((tied, p), (untied, q)):
        m.zero_grad()
        nn.functional.cross_entropy(m(idx).reshape(-1, 9), idx.roll(1, 1).reshape(-1)).backward()
        if m is untied:
            raw = {n: x.grad.double().clone() for n, x in m.named_parameters()}
        pre.step()
    new = {n: x.grad.double() for n, x in untied.named_parameters()}
    update = new["emb.weight"] + new["head.weight"]
    vg = (update * (raw["emb.weight"] + raw["head.weight"])).sum()
    vg += sum((new[n] * raw[n]).sum() for n in ("mid.weight", "mid.bias", "head.bias"))
    nu = min(1.0, (kl / abs(float(vg) * lr**2)) ** 0.5)
    assert nu < 0.9  # the clip is active
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    got = tied.emb.weight.grad.double()
    assert float((got - nu * update).norm() / update.norm()) < tol
    got = tied.mid.weight.grad.double()
    assert float((got - nu * new["mid.weight"]).norm() / new["mid.weight"].norm()) < tol


class _ConvTie(nn.Module):
    """Two convs of one 3x3 weight (odd kernel reads: strided and dilated, then 'same'
    with reflect padding) around a Linear head; untied, the weight is copied."""

    def __init__(self, tie):
        super().__init__()
        torch.manual_seed(4)
        self.c1 = nn.Conv2d(3, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
        self.c2 = nn.Conv2d(3, 3, (3, 2), padding="same", padding_mode="reflect", bias=False)
        self.c2.weight = self.c1.weight if tie else nn.Parameter(self.c1.weight.detach().clone())
        self.head = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.head(torch.tanh(self.c2(torch.tanh(self.c1(x)))).flatten(1))


@pytest.mark.parametrize("comm", [None, _SendsPreconditioned()], ids=["in-place", "sends-P"])
@pytest.mark.parametrize("method", ["eigen", "inverse"])
def test_tied_conv_weights_equal_the_untied_per_use_sum(method, comm):
    tied, untied = _ConvTie(True).double(), _ConvTie(False).double()
    gen = torch.Generator().manual_seed(5)
    data = [(torch.randn(4, 3, 7, 6, generator=gen, dtype=torch.float64), torch.randint(0, 5, (4,), generator=gen))]
    data.append(data[0])
    for m, c in ((tied, comm), (untied, None)):
        p = kfac_ext.KFACPreconditioner(
            m, kl_clip=None, inv_dtype=torch.float64, damping=0.05, factor_decay=0.7, compute_method=method, comm=c
        )
        for x, y in data:
            m.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            p.step()
        if m is tied:
            assert [l.name for l in p.layers if l.tied] == ["c1", "c2"]
    want = untied.c1.weight.grad + untied.c2.weight.grad
    assert float((tied.c1.weight.grad - want).norm() / want.norm()) < 1e-8
    for name in ("c1.bias", "head.weight", "head.bias"):
        got, ref = tied.get_parameter(name).grad, untied.get_parameter(name).grad
        assert float((got - ref).norm() / ref.norm()) < 1e-8, name
