"""The transformer layer types (HF Conv1D, nn.MultiheadAttention, nn.Embedding) against
float64 references built without kfac_ext: each projection recomputed explicitly, its
input rows and output-gradient rows read off that graph, the factors from their
definitions and the preconditioned gradient from the dense Kronecker solve."""

import math

import pytest
import torch
import torch.nn.functional as F
from _kfac_reference import dense_precondition
from torch import nn

import kfac_ext
import kfac_ext.layers
import kfac_ext.layers.registry

DAMPING = 0.03


def _rel(got, want):
    return float((got - want).norm() / want.norm())


def _factors(a_rows, g_rows, bias):
    a = a_rows.reshape(-1, a_rows.shape[-1])
    if bias:
        a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
    g = g_rows.reshape(-1, g_rows.shape[-1])
    return a.T @ a / a.shape[0], g.T @ g / g.shape[0]


def _loss(out):
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    return 0.5 * ((out - target) ** 2).mean() + (out**3).mean() / 3


def _precond(model, **kw):
    return kfac_ext.KFACPreconditioner(
        model, kl_clip=None, inv_dtype=torch.float64, damping=DAMPING, factor_decay=0.0, **kw
    )


# ------------------------------------------------------------------ Conv1D ----
class Conv1D(nn.Module):
    """The HF layout (transformers.pytorch_utils.Conv1D), written out: y = x W + b, W (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf, dtype=torch.float64) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf, dtype=torch.float64) * 0.1)

    def forward(self, x):
        out = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
        return out.view(*x.shape[:-1], self.nf)


@pytest.mark.parametrize("method", ["eigen", "inverse"])
def test_conv1d_matches_the_dense_solve(method):
    torch.manual_seed(0)
    layer = Conv1D(5, 7)
    x = torch.randn(3, 4, 7, dtype=torch.float64)
    p = _precond(layer, compute_method=method)
    assert [l.name for l in p.layers] == [""] and (p.layers[0].a_dim, p.layers[0].g_dim) == (8, 5)
    y = x @ layer.weight.detach() + layer.bias.detach()  # the reference graph, not the module's
    y.requires_grad_(True)
    _loss(y).backward()
    a, g = _factors(x, y.grad, bias=True)
    _loss(layer(x)).backward()
    gamma = torch.cat([layer.weight.grad.T, layer.bias.grad[:, None]], 1)
    p.step()
    assert _rel(p.layers[0].A, a) < 1e-12 and _rel(p.layers[0].G, g) < 1e-12
    if method == "eigen":
        want = dense_precondition(a, g, gamma, DAMPING)
    else:
        eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
        want = torch.linalg.solve(g + DAMPING * eye(5), gamma) @ torch.linalg.inv(a + DAMPING * eye(8))
    got = torch.cat([layer.weight.grad.T, layer.bias.grad[:, None]], 1)
    assert _rel(got, want) < 1e-8


def test_a_class_named_conv1d_without_nf_is_not_taken_for_hf_conv1d():
    class Conv1D(nn.Module):  # noqa: N801  (some other library's layer)
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 4))

    with pytest.warns(UserWarning, match="no layer registered"):
        assert kfac_ext.KFACPreconditioner(Conv1D()).layers == []


# --------------------------------------------------------------- Embedding ----
def _embedding_case(padding_idx, method):
    torch.manual_seed(1)
    emb = nn.Embedding(11, 4, padding_idx=padding_idx).double()
    idx = torch.tensor([[1, 2, 2, 7, 0], [3, 2, 9, 9, 9], [10, 1, 4, 2, 5]])
    p = _precond(emb, compute_method=method)
    onehot = F.one_hot(idx, 11).double()
    if padding_idx is not None:
        onehot[..., padding_idx] = 0  # the padding row gets no gradient: a zero input
    y = (onehot @ emb.weight.detach()).requires_grad_(True)
    _loss(y).backward()
    a, g = _factors(onehot, y.grad, bias=False)
    _loss(emb(idx)).backward()
    gamma = emb.weight.grad.T.clone()
    p.step()
    return p, emb, a, g, gamma


@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("method", ["eigen", "inverse"])
def test_embedding_matches_the_dense_solve_with_a_diagonal_a(padding_idx, method):
    p, emb, a, g, gamma = _embedding_case(padding_idx, method)
    layer = p.layers[0]
    assert layer.a_diagonal and layer.A.shape == (11,)
    assert torch.equal(a, torch.diag(a.diagonal()))  # the definition's A is diagonal
    assert _rel(layer.A, a.diagonal()) < 1e-12 and _rel(layer.G, g) < 1e-12
    if method == "eigen":
        want = dense_precondition(a, g, gamma, DAMPING)
    else:
        eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
        want = torch.linalg.solve(g + DAMPING * eye(4), gamma) @ torch.linalg.inv(a + DAMPING * eye(11))
    assert _rel(emb.weight.grad.T, want) < 1e-8
    if padding_idx is not None:
        assert float(layer.A[padding_idx]) == 0 and not emb.weight.grad[padding_idx].any()


def test_sparse_embedding_is_a_clear_error_and_leaves_no_hooks():
    model = nn.Sequential(nn.Linear(3, 3), nn.Embedding(5, 3, sparse=True))
    with pytest.raises(ValueError, match=r"embedding '1' has sparse=True"):
        kfac_ext.KFACPreconditioner(model)
    assert not model[0]._forward_hooks and not model[1]._forward_hooks
    assert [l.name for l in kfac_ext.KFACPreconditioner(model, skip_layers="embedding").layers] == ["0"]


def test_embedding_with_max_norm_is_preconditioned():
    torch.manual_seed(2)
    emb = nn.Embedding(6, 3, max_norm=0.5)
    p = kfac_ext.KFACPreconditioner(emb, damping=0.1)
    for _ in range(2):
        emb.zero_grad()
        emb(torch.tensor([[0, 1, 1, 4]])).pow(2).sum().backward()
        before = emb.weight.grad.clone()
        p.step()
    assert torch.isfinite(emb.weight.grad).all() and not torch.equal(emb.weight.grad, before)


# ------------------------------------------------------ MultiheadAttention ----
def _explicit_mha(mha, query, key, value, attn_mask, key_padding_mask):
    """nn.MultiheadAttention's forward written out (no dropout), every projection an
    explicit tensor with its gradient retained. Inputs are batch-first."""
    e, h = mha.embed_dim, mha.num_heads
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
    else:
        wq, wk, wv = (getattr(mha, f"{p}_proj_weight").detach() for p in "qkv")
    bq, bk, bv = mha.in_proj_bias.detach().chunk(3) if mha.in_proj_bias is not None else (0, 0, 0)
    proj = {"q": query @ wq.T + bq, "k": key @ wk.T + bk, "v": value @ wv.T + bv}
    for t in proj.values():
        t.requires_grad_(True)  # leaves: .grad is the gradient of that projection's output
    b, t_len, s_len = query.shape[0], query.shape[1], key.shape[1]
    q, k, v = (proj[n].reshape(b, -1, h, e // h).transpose(1, 2) for n in "qkv")
    scores = q @ k.transpose(-1, -2) / math.sqrt(e // h)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, float("-inf"))
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t_len, e)
    attn.retain_grad()
    bo = mha.out_proj.bias.detach() if mha.out_proj.bias is not None else 0
    out = attn @ mha.out_proj.weight.detach().T + bo
    out.retain_grad()
    inputs = {"q": query, "k": key, "v": value, "out": attn}
    assert s_len == key.shape[1]
    return out, proj, inputs


MHA_CASES = {
    "self,batch_first": dict(cross=False, batch_first=True, kdim=None, masks=False, bias=True),
    "self,seq_first,masks": dict(cross=False, batch_first=False, kdim=None, masks=True, bias=True),
    "cross,packed,masks": dict(cross=True, batch_first=True, kdim=None, masks=True, bias=True),
    "cross,separate_qkv,no_bias": dict(cross=True, batch_first=False, kdim=5, masks=False, bias=False),
}


def _mha_run(case, with_preconditioner, method="eigen"):
    torch.manual_seed(3)
    e, b, t, s = 6, 3, 5, 4
    mha = nn.MultiheadAttention(
        e, 2, bias=case["bias"], batch_first=case["batch_first"], kdim=case["kdim"], vdim=case["kdim"]
    ).double()
    query = torch.randn(b, t, e, dtype=torch.float64)
    kv_dim = case["kdim"] or e
    key = torch.randn(b, s, kv_dim, dtype=torch.float64) if case["cross"] else query
    attn_mask = kpm = None
    if case["masks"]:
        attn_mask = torch.zeros(t, key.shape[1], dtype=torch.bool)
        attn_mask[0, -1] = attn_mask[2, 0] = True
        kpm = torch.zeros(b, key.shape[1], dtype=torch.bool)
        kpm[1, -1] = True
    p = _precond(mha, compute_method=method) if with_preconditioner else None
    args = (query, key, key) if case["batch_first"] else tuple(x.transpose(0, 1) for x in (query, key, key))
    out, _ = mha(*args, attn_mask=attn_mask, key_padding_mask=kpm, need_weights=False)
    _loss(out if case["batch_first"] else out.transpose(0, 1)).backward()
    return mha, p, out, (query, key, attn_mask, kpm)


@pytest.mark.parametrize("case", MHA_CASES.values(), ids=MHA_CASES.keys())
@pytest.mark.parametrize("method", ["eigen", "inverse"])
def test_multihead_attention_matches_the_dense_solve(case, method):
    mha, p, out, (query, key, attn_mask, kpm) = _mha_run(case, True, method)
    names = [l.name for l in p.layers]
    assert names == ["[q]", "[k]", "[v]", "[out]"]
    ref_out, proj, inputs = _explicit_mha(mha, query, key, key, attn_mask, kpm)
    torch.testing.assert_close(ref_out, out if case["batch_first"] else out.transpose(0, 1))
    _loss(ref_out).backward()
    proj["out"] = ref_out
    gammas = {}
    for layer in p.layers:
        gammas[layer.name] = layer.grad_matrix(torch.float64).clone()
    p.step()
    eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
    for layer in p.layers:
        which = layer.name[1:-1]
        a, g = _factors(inputs[which].detach(), proj[which].grad, case["bias"])
        assert _rel(layer.A, a) < 1e-12 and _rel(layer.G, g) < 1e-12, layer.name
        gamma = gammas[layer.name]
        if method == "eigen":
            want = dense_precondition(a, g, gamma, DAMPING)
        else:
            want = torch.linalg.solve(g + DAMPING * eye(g.shape[0]), gamma) @ torch.linalg.inv(
                a + DAMPING * eye(a.shape[0])
            )
        assert _rel(layer.grad_matrix(torch.float64), want) < 1e-8, layer.name


@pytest.mark.parametrize("case", MHA_CASES.values(), ids=MHA_CASES.keys())
def test_multihead_attention_outputs_and_grads_are_bit_equal_with_the_preconditioner(case):
    plain, _, out0, _ = _mha_run(case, False)
    hooked, p, out1, _ = _mha_run(case, True)
    assert torch.equal(out0, out1)
    for (n0, p0), (n1, p1) in zip(plain.named_parameters(), hooked.named_parameters()):
        assert n0 == n1 and torch.equal(p0.grad, p1.grad), n0
    assert list(plain.state_dict()) == list(hooked.state_dict())
    assert all(l.has_batch() for l in p.layers)  # every projection was captured
    assert F.linear is torch._C._nn.linear or F.linear.__name__ == "linear"


def test_multihead_attention_restores_f_linear_after_an_exception():
    original = F.linear
    mha = nn.MultiheadAttention(4, 2)
    kfac_ext.KFACPreconditioner(mha)
    with pytest.raises(Exception):
        mha(torch.randn(3, 2, 4), torch.randn(3, 2, 5), torch.randn(3, 2, 4))
    assert F.linear is original


def test_transformer_encoder_has_every_weight_preconditioned():
    torch.manual_seed(4)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2)
    p = kfac_ext.KFACPreconditioner(enc, damping=0.1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "hooks never fired"
        for _ in range(2):
            enc.zero_grad()
            enc(torch.randn(3, 5, 8)).pow(2).mean().backward()
            before = {n: q.grad.clone() for n, q in enc.named_parameters()}
            p.step()
    changed = {n for n, q in enc.named_parameters() if not torch.equal(q.grad, before[n])}
    assert changed == {n for n, _ in enc.named_parameters() if "norm" not in n}


# ------------------------------------------------------ a user's layer type ----
class _Scaled(nn.Module):
    """A user's layer: y = x (s·W)ᵀ with W stored (out, in) and a fixed scale s."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))

    def forward(self, x):
        return x @ (2.0 * self.w).T


class _ScaledLayer(kfac_ext.layers.KFACLayer):
    # The Linear math with this module's parameter, no bias: A, G and Γ read as for
    # nn.Linear; Γ here is ∂L/∂w = 2·(the Linear weight's gradient), a constant
    # factor K-FAC carries through.
    def __init__(self, name, module, factor_dtype):
        super().__init__(name, module, factor_dtype, weight=module.w, bias=None, in_dim=4, out_dim=3)


def test_a_users_layer_type_is_registered_and_preconditioned():
    kfac_ext.register_layer_type(_Scaled, lambda name, m, dtype: [_ScaledLayer(name, m, dtype)])
    try:
        torch.manual_seed(6)
        model = _Scaled()
        p = _precond(model)
        x = torch.randn(7, 4, dtype=torch.float64)
        y = (x @ (2.0 * model.w.detach()).T).requires_grad_(True)
        _loss(y).backward()
        a, g = _factors(x, y.grad, bias=False)
        _loss(model(x)).backward()
        gamma = model.w.grad.clone()
        p.step()
        assert [l.name for l in p.layers] == [""]
        assert _rel(p.layers[0].A, a) < 1e-12 and _rel(p.layers[0].G, g) < 1e-12
        assert _rel(model.w.grad, dense_precondition(a, g, gamma, DAMPING)) < 1e-8
    finally:
        kfac_ext.layers.registry.unregister_layer_type(_Scaled)
    with pytest.warns(UserWarning, match="no layer registered"):
        kfac_ext.KFACPreconditioner(_Scaled())


def test_register_layer_type_checks_its_arguments():
    with pytest.raises(TypeError, match="match must be"):
        kfac_ext.register_layer_type(3, lambda *a: [])
    with pytest.raises(TypeError, match="factory must be callable"):
        kfac_ext.register_layer_type(nn.Linear, None)


def test_adaptive_damping_reads_transposed_and_diagonal_layers():
    """AdaptiveDamping's quadratic model takes each layer's parameters in its Γ layout and
    a diagonal A as a vector: with an Embedding and a Conv1D it runs and moves λ."""
    from kfac_ext.adaptive_damping import AdaptiveDamping

    torch.manual_seed(7)
    model = nn.Sequential(nn.Embedding(9, 4), Conv1D(3, 4)).double()
    damping = AdaptiveDamping(initial=1.0, interval=1)
    p = kfac_ext.KFACPreconditioner(model, damping=damping, kl_clip=None, inv_dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    idx = torch.randint(0, 9, (5, 3))

    def closure():
        return model(idx).pow(2).mean()

    for _ in range(3):
        opt.zero_grad()
        closure().backward()
        p.step(closure=closure)
        opt.step()
    assert math.isfinite(damping.value) and damping.value != 1.0
