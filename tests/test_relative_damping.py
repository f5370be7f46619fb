"""relative_damping=True: each factor divided by its mean eigenvalue (trace / n) before
the solve, against the dense Kronecker solve of the rescaled factors (float64), on 2
Gloo ranks as on one process, through a checkpoint, and its refusals."""

import io

import pytest
import torch
from _kfac_reference import dense_precondition
from dist_utils import assert_steps_match, run_workers
from test_distributed_layer_types import HPARAMS, _model, _train
from torch import nn

from kfac_ext.adaptive_damping import AdaptiveDamping
from kfac_ext.comm import LocalComm
from kfac_ext.distributed import DistributedComm
from kfac_ext.preconditioner import KFACPreconditioner

DAMPING = 0.03


def _one_linear_step(method):
    torch.manual_seed(0)
    lin = nn.Linear(5, 3, dtype=torch.float64)
    p = KFACPreconditioner(
        lin,
        kl_clip=None,
        inv_dtype=torch.float64,
        damping=DAMPING,
        factor_decay=0.0,
        compute_method=method,
        relative_damping=True,
    )
    x = torch.randn(9, 5, dtype=torch.float64) * 4.0  # A far from the identity's scale
    y = lin(x)
    ((y - 1.0) ** 2).mean().mul(1e-3).backward()  # G tiny, as for a mean loss
    gamma = torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1)
    p.step()
    layer = p.layers[0]
    got = torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1)
    return layer.A, layer.G, gamma, got


def test_eigen_solves_the_factors_at_mean_eigenvalue_one():
    a, g, gamma, got = _one_linear_step("eigen")
    a1, g1 = a / a.diagonal().mean(), g / g.diagonal().mean()
    want = dense_precondition(a1, g1, gamma, DAMPING)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-14)
    # not what the unscaled factors give: the option changes the step
    assert not torch.allclose(got, dense_precondition(a, g, gamma, DAMPING), rtol=1e-3)


def test_inverse_inverts_the_damped_factors_at_mean_eigenvalue_one():
    a, g, gamma, got = _one_linear_step("inverse")
    eye = torch.eye
    a1 = a / a.diagonal().mean() + DAMPING * eye(a.shape[0], dtype=a.dtype)
    g1 = g / g.diagonal().mean() + DAMPING * eye(g.shape[0], dtype=g.dtype)
    want = torch.linalg.solve(g1, gamma) @ torch.linalg.inv(a1)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-14)


def test_every_factor_dense_or_diagonal_is_solved_at_mean_one_and_the_running_ones_are_kept():
    model = _model()  # Embedding (diagonal A), attention, HF Conv1D, Linear
    p = KFACPreconditioner(model, inv_dtype=torch.float64, comm=LocalComm(), relative_damping=True, **HPARAMS)
    _train(model, p)
    assert any(l.a_diagonal for l in p.layers)
    for i, layer in enumerate(p.layers):
        for w, running in (("A", layer.A), ("G", layer.G)):
            f = p._factor(i, w)
            assert float((f if f.dim() == 1 else f.diagonal()).mean()) == pytest.approx(1.0, rel=1e-12)
            mean = (running if running.dim() == 1 else running.diagonal()).mean()
            assert torch.allclose(f * mean, running, rtol=1e-12)  # the running average itself is unscaled


def _ranks(rank, world_size):
    out = {}
    for fraction in (1.0, 0.5):  # COMM-OPT, MEM-OPT
        ddp = nn.parallel.DistributedDataParallel(_model())
        comm = DistributedComm(grad_worker_fraction=fraction, timeout=30)
        precond = KFACPreconditioner(ddp, inv_dtype=torch.float64, comm=comm, relative_damping=True, **HPARAMS)
        out[fraction] = _train(ddp, precond, rank, world_size)
    return out


@pytest.mark.slow
def test_two_ranks_match_one_process():
    model = _model()
    want = _train(model, KFACPreconditioner(model, inv_dtype=torch.float64, relative_damping=True, **HPARAMS))
    plain_model = _model()
    plain = _train(plain_model, KFACPreconditioner(plain_model, inv_dtype=torch.float64, **HPARAMS))
    assert any(float((a - b).norm()) > 1e-6 for a, b in zip(want[-1], plain[-1]))  # the option is on
    results = run_workers(_ranks, 2, timeout=240)
    for fraction in (1.0, 0.5):
        for rank in range(2):
            assert_steps_match(results[rank][fraction], want, (fraction, rank))


def _linear_and_data():
    torch.manual_seed(3)
    lin = nn.Linear(4, 3, dtype=torch.float64)
    data = [torch.randn(6, 4, dtype=torch.float64) for _ in range(3)]
    return lin, data


def _step(lin, p, x):
    lin.zero_grad()
    lin(x).pow(2).mean().backward()
    p.step()
    return lin.weight.grad.clone()


def test_a_checkpoint_resumes_identically_and_records_the_setting():
    kw = dict(inv_dtype=torch.float64, damping=DAMPING, relative_damping=True, inv_update_steps=2)
    lin, data = _linear_and_data()
    p = KFACPreconditioner(lin, **kw)
    _step(lin, p, data[0])
    buf = io.BytesIO()
    torch.save(p.state_dict(), buf)
    want = [_step(lin, p, x) for x in data[1:]]
    buf.seek(0)
    state = torch.load(buf)
    assert state["relative_damping"] is True
    lin2, _ = _linear_and_data()
    p2 = KFACPreconditioner(lin2, **kw)
    p2.load_state_dict(state)
    got = [_step(lin2, p2, x) for x in data[1:]]
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    plain = KFACPreconditioner(lin2, inv_dtype=torch.float64, damping=DAMPING)
    assert "relative_damping" not in plain.state_dict()  # a default state keeps kfac-pytorch's keys
    with pytest.raises(ValueError, match="saved with relative_damping=True, this one uses relative_damping=False"):
        plain.load_state_dict(state)


def test_refusals():
    with pytest.raises(ValueError, match="relative_damping must be True or False"):
        KFACPreconditioner(nn.Linear(2, 2), relative_damping="yes")
    with pytest.raises(ValueError, match="does not combine with an AdaptiveDamping"):
        KFACPreconditioner(nn.Linear(2, 2), damping=AdaptiveDamping(0.1), relative_damping=True)
