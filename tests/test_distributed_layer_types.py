"""The transformer layer types (Embedding with its diagonal A, MultiheadAttention,
HF-style Conv1D) under DDP on 2 Gloo ranks equal one process on the combined batch."""

import pytest
import torch
from dist_utils import assert_steps_match, run_workers
from test_layer_types import Conv1D
from torch import nn

from kfac_ext.comm import LocalComm
from kfac_ext.distributed import DistributedComm
from kfac_ext.preconditioner import KFACPreconditioner

STEPS, BATCH, VOCAB = 3, 8, 13
HPARAMS = dict(factor_update_steps=1, inv_update_steps=2, damping=1e-3, factor_decay=0.3, kl_clip=None, lr=0.05)


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 6, padding_idx=0)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.mlp = Conv1D(6, 6)
        self.head = nn.Linear(6, VOCAB)

    def forward(self, idx):
        x = self.emb(idx)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(torch.tanh(self.mlp(x)))


def _model():
    torch.manual_seed(0)
    return TinyLM().double()


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (BATCH, 5), generator=gen) for _ in range(STEPS)]


def _train(model, precond, rank=0, world_size=1):
    opt = torch.optim.SGD(model.parameters(), lr=HPARAMS["lr"])
    chunk, grads = BATCH // world_size, []
    for idx in _batches():
        idx = idx[rank * chunk : (rank + 1) * chunk]
        opt.zero_grad()
        out = model(idx[:, :-1])
        nn.functional.cross_entropy(out.reshape(-1, VOCAB), idx[:, 1:].reshape(-1)).backward()
        precond.step()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()
    return grads


def _ranks(rank, world_size):
    out = {}
    for fraction in (1.0, 0.5):
        ddp = nn.parallel.DistributedDataParallel(_model())
        comm = DistributedComm(grad_worker_fraction=fraction, timeout=30)
        precond = KFACPreconditioner(ddp, inv_dtype=torch.float64, comm=comm, **HPARAMS)
        out[fraction] = _train(ddp, precond, rank, world_size)
    return out


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_transformer_layer_types():
    model = _model()
    ref_pre = KFACPreconditioner(model, inv_dtype=torch.float64, comm=LocalComm(), **HPARAMS)
    assert {l.name for l in ref_pre.layers} >= {"emb", "attn[q]", "attn[out]", "mlp", "head"}
    ref = _train(model, ref_pre)
    results = run_workers(_ranks, 2, timeout=240)
    for fraction in (1.0, 0.5):
        for rank in range(2):
            assert_steps_match(results[rank][fraction], ref, (fraction, rank))


# (grad_worker_fraction, kl_clip) per world size: COMM-OPT and MEM-OPT on 2 ranks,
# HYBRID-OPT (2 blocks of 2) and MEM-OPT on 4; one spawn runs all of a world size's.
TIED_SCENARIOS = {2: [(1.0, None), (0.5, None), (0.5, 1e-3)], 4: [(0.5, None), (0.5, 1e-3), (0.25, None)]}


def _tied_ranks(rank, world_size):
    from test_tied_weights import _LM

    out = {}
    for fraction, kl_clip in TIED_SCENARIOS[world_size]:
        ddp = nn.parallel.DistributedDataParallel(_LM(True).double())
        comm = DistributedComm(grad_worker_fraction=fraction, timeout=30)
        precond = KFACPreconditioner(ddp, inv_dtype=torch.float64, comm=comm, **{**HPARAMS, "kl_clip": kl_clip})
        assert [l.name for l in precond.layers if l.tied] == ["emb", "head"]
        out[(comm.strategy, fraction, kl_clip)] = _train_lm(ddp, precond, rank, world_size)
    if world_size == 2:  # a Conv2d tie (its Γ_u from the conv's own weight gradient), MEM-OPT
        ddp = nn.parallel.DistributedDataParallel(_conv_tie())
        precond = KFACPreconditioner(
            ddp, inv_dtype=torch.float64, comm=DistributedComm(grad_worker_fraction=0.5, timeout=30), **HPARAMS
        )
        out["conv"] = _train_cnn(ddp, precond, rank, world_size)
    return out


def _conv_tie():
    from test_tied_weights import _ConvTie

    return _ConvTie(True).double()


def _train_cnn(model, precond, rank=0, world_size=1):
    opt = torch.optim.SGD(model.parameters(), lr=HPARAMS["lr"])
    chunk, grads = BATCH // world_size, []
    gen = torch.Generator().manual_seed(6)
    for _ in range(STEPS):
        x = torch.randn(BATCH, 3, 7, 6, generator=gen, dtype=torch.float64)[rank * chunk : (rank + 1) * chunk]
        y = torch.randint(0, 5, (BATCH,), generator=gen)[rank * chunk : (rank + 1) * chunk]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        precond.step()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()
    return grads


def _train_lm(model, precond, rank=0, world_size=1):
    opt = torch.optim.SGD(model.parameters(), lr=HPARAMS["lr"])
    chunk, grads = BATCH // world_size, []
    gen = torch.Generator().manual_seed(4)
    for _ in range(STEPS):
        idx = torch.randint(0, 9, (BATCH, 6), generator=gen)[rank * chunk : (rank + 1) * chunk]
        opt.zero_grad()
        nn.functional.cross_entropy(model(idx).reshape(-1, 9), idx.roll(1, 1).reshape(-1)).backward()
        precond.step()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()
    return grads


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_n_ranks_match_one_process_with_a_tied_weight_under_every_strategy(world_size):
    """COMM-OPT, HYBRID-OPT and MEM-OPT: each rank's per-use gradients are averaged like
    .grad before the per-use sum, which every rank forms from the same P_u (under
    HYBRID/MEM-OPT sent by the use's grad workers); the one-process reference is the
    untied per-use sum (test_tied_weights.py)."""
    from test_tied_weights import _LM

    refs = {}
    for _, kl_clip in TIED_SCENARIOS[world_size]:
        if kl_clip not in refs:
            model = _LM(True).double()
            pre = KFACPreconditioner(
                model, inv_dtype=torch.float64, comm=LocalComm(), **{**HPARAMS, "kl_clip": kl_clip}
            )
            refs[kl_clip] = _train_lm(model, pre)
    results = run_workers(_tied_ranks, world_size, timeout=300)
    if world_size == 2:
        model = _conv_tie()
        want = _train_cnn(model, KFACPreconditioner(model, inv_dtype=torch.float64, comm=LocalComm(), **HPARAMS))
        for rank in range(2):
            assert_steps_match(results[rank].pop("conv"), want, ("conv", rank))
    strategies = {key[0] for key in results[0]}
    assert strategies == ({"COMM-OPT", "MEM-OPT"} if world_size == 2 else {"HYBRID-OPT", "MEM-OPT"})
    for rank in range(world_size):
        for (strategy, fraction, kl_clip), runs in results[rank].items():
            assert_steps_match(runs, refs[kl_clip], (strategy, fraction, kl_clip, rank))
