"""KFACPreconditioner under DDP on Gloo ranks equals one process on the combined batch.

Each spawned run executes every scenario of its world size in one go (process
start dominates); the single-process references are computed here, in the
test process, from the same seeds. Light damping and little factor decay
make a wrong factor scale (e.g. a missing 1/N^2 on G) show.
"""

import copy

import pytest
import torch
import torch.distributed as dist
from dist_utils import run_workers
from torch import nn

from kfac_ext.comm import LocalComm
from kfac_ext.distributed import DistributedComm
from kfac_ext.preconditioner import KFACPreconditioner

STEPS = 4
GLOBAL_BATCH = 12  # divisible by 1, 2, 4
HPARAMS = dict(factor_update_steps=1, inv_update_steps=2, damping=1e-3, factor_decay=0.3, kl_clip=None, lr=0.05)


class TinyNet(nn.Module):
    """Conv2d (bias) -> Conv2d (no bias, dilated) -> Linear -> Linear: every factor path."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 2, stride=2, dilation=1, bias=False)
        self.l1 = nn.Linear(4 * 3 * 3, 7)
        self.l2 = nn.Linear(7, 5)

    def forward(self, x):
        x = torch.tanh(self.c1(x))
        x = torch.tanh(self.c2(x))
        return self.l2(torch.tanh(self.l1(x.flatten(1))))


def make_model(dtype):
    torch.manual_seed(0)
    return TinyNet().to(dtype)


def batches(dtype):
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(GLOBAL_BATCH, 2, 7, 7, generator=gen, dtype=dtype),
            torch.randint(0, 5, (GLOBAL_BATCH,), generator=gen),
        )
        for _ in range(STEPS)
    ]


def train(model, precond, data, rank=0, world_size=1, save_after=None):
    """SGD steps on this rank's slice of each global batch; returns the preconditioned grads."""
    opt = torch.optim.SGD(model.parameters(), lr=HPARAMS["lr"])
    grads, saved = [], None
    for step, (x, y) in enumerate(data):
        chunk = GLOBAL_BATCH // world_size
        xs, ys = x[rank * chunk : (rank + 1) * chunk], y[rank * chunk : (rank + 1) * chunk]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xs), ys).backward()
        precond.step()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()
        if save_after == step:
            saved = (
                copy.deepcopy(precond.state_dict()),
                copy.deepcopy(getattr(model, "module", model).state_dict()),
                copy.deepcopy(opt.state_dict()),
            )
    return grads, saved


def ddp_run(rank, world_size, dtype, fraction, colocate, save_after=None, method="eigen", lag=0):
    model = make_model(dtype)
    ddp = nn.parallel.DistributedDataParallel(model)
    comm = DistributedComm(grad_worker_fraction=fraction, colocate_factors=colocate, timeout=30)
    precond = KFACPreconditioner(ddp, inv_dtype=dtype, comm=comm, compute_method=method, inv_lag_steps=lag, **HPARAMS)
    grads, saved = train(ddp, precond, batches(dtype), rank, world_size, save_after)
    return dict(
        grads=grads,
        saved=saved,
        strategy=comm.strategy,
        factor_elements=comm.factor_elements,
        expected_factor_elements=STEPS * sum(n * (n + 1) // 2 for l in precond.layers for n in (l.a_dim, l.g_dim)),
    )


def no_ddp_run(rank, world_size):
    """Without DDP: the user averages gradients before preconditioner.step() (documented)."""
    model = make_model(torch.float64)
    precond = KFACPreconditioner(model, inv_dtype=torch.float64, comm=DistributedComm(), **HPARAMS)
    opt = torch.optim.SGD(model.parameters(), lr=HPARAMS["lr"])
    chunk = GLOBAL_BATCH // world_size
    grads = []
    for x, y in batches(torch.float64):
        opt.zero_grad()
        nn.functional.cross_entropy(
            model(x[rank * chunk : (rank + 1) * chunk]), y[rank * chunk : (rank + 1) * chunk]
        ).backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world_size
        precond.step()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()
    return grads


def overlap_run(rank, world_size):
    """A tiny bucket cap: each layer's factors fill a bucket, so its all-reduce
    starts from the layer's backward hook, before step() runs."""
    model = make_model(torch.float64)
    ddp = nn.parallel.DistributedDataParallel(model)
    comm = DistributedComm(allreduce_bucket_cap_mb=1e-5, timeout=30)
    precond = KFACPreconditioner(ddp, inv_dtype=torch.float64, comm=comm, **HPARAMS)
    opt = torch.optim.SGD(ddp.parameters(), lr=HPARAMS["lr"])
    chunk = GLOBAL_BATCH // world_size
    grads, sent = [], []
    for x, y in batches(torch.float64):
        opt.zero_grad()
        sent_before_backward = comm.reducer.buckets_sent
        nn.functional.cross_entropy(
            ddp(x[rank * chunk : (rank + 1) * chunk]), y[rank * chunk : (rank + 1) * chunk]
        ).backward()
        sent.append((sent_before_backward, comm.reducer.buckets_sent, len(precond.layers)))
        precond.step()
        grads.append([p.grad.detach().clone() for p in ddp.parameters()])
        opt.step()
    return dict(grads=grads, sent=sent)


def scenarios_4(rank, world_size):
    out = {}
    for fraction in (1.0, 0.5, 0.25):
        out[(fraction, True)] = ddp_run(rank, world_size, torch.float64, fraction, True)
    out[(1.0, False)] = ddp_run(rank, world_size, torch.float64, 1.0, False)
    out[(0.5, False)] = ddp_run(rank, world_size, torch.float64, 0.5, False)
    out["inverse"] = ddp_run(rank, world_size, torch.float64, 0.5, False, method="inverse")
    # the update of step 2 is decomposed by its owners in the background and
    # broadcast when it lands, in step 3
    out["lagged"] = ddp_run(rank, world_size, torch.float64, 0.5, False, lag=1)
    # MEM-OPT checkpoint after step 1; step 2 is an inverse-update step, so ranks that
    # did not own a layer's eigendecomposition recompute it exactly as the 4-rank run does
    out["checkpoint"] = ddp_run(rank, world_size, torch.float64, 0.25, True, save_after=1)
    dist.barrier()
    return out


def resume_run(rank, world_size, saved, fraction):
    """Continue a checkpoint (precond, model, optimizer state) from step 2 on this world."""
    precond_state, model_state, opt_state = saved
    model = make_model(torch.float64)
    model.load_state_dict(model_state)
    ddp = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    comm = DistributedComm(grad_worker_fraction=fraction, timeout=30) if world_size > 1 else LocalComm()
    precond = KFACPreconditioner(ddp, inv_dtype=torch.float64, comm=comm, **HPARAMS)
    precond.load_state_dict(precond_state)
    opt = torch.optim.SGD(ddp.parameters(), lr=HPARAMS["lr"])
    opt.load_state_dict(opt_state)
    chunk = GLOBAL_BATCH // world_size
    grads = []
    for x, y in batches(torch.float64)[2:]:
        opt.zero_grad()
        xs, ys = x[rank * chunk : (rank + 1) * chunk], y[rank * chunk : (rank + 1) * chunk]
        nn.functional.cross_entropy(ddp(xs), ys).backward()
        precond.step()
        grads.append([p.grad.detach().clone() for p in ddp.parameters()])
        opt.step()
    return grads


def scenarios_2(rank, world_size, four_rank_checkpoint):
    out = {"resumed_from_4": resume_run(rank, world_size, four_rank_checkpoint, 0.5)}
    for fraction in (1.0, 0.5):
        out[("f32", fraction)] = ddp_run(rank, world_size, torch.float32, fraction, True)
    out["checkpoint"] = ddp_run(rank, world_size, torch.float64, 1.0, True, save_after=1)
    out["no_ddp"] = no_ddp_run(rank, world_size)
    out["overlap"] = overlap_run(rank, world_size)
    auto = KFACPreconditioner(
        nn.parallel.DistributedDataParallel(make_model(torch.float64)),
        grad_worker_fraction=0.5,
        colocate_factors=False,
        allreduce_bucket_cap_mb=1e-3,
    )
    out["auto_comm"] = (
        type(auto.comm).__name__,
        auto.comm.strategy,
        auto.comm.colocate_factors,
        auto.comm.reducer.cap_bytes,
    )
    dist.barrier()
    return out


def reference(dtype, method="eigen", lag=0):
    model = make_model(dtype)
    precond = KFACPreconditioner(
        model, inv_dtype=dtype, comm=LocalComm(), compute_method=method, inv_lag_steps=lag, **HPARAMS
    )
    return train(model, precond, batches(dtype))[0]


def assert_grads_close(got, want, rtol):
    for step, (g_step, w_step) in enumerate(zip(got, want)):
        for k, (g, w) in enumerate(zip(g_step, w_step)):
            err = (g - w).norm() / w.norm()
            assert err <= rtol, f"step {step} param {k}: relative error {err:.2e}"


@pytest.fixture(scope="module")
def four_ranks():
    return run_workers(scenarios_4, 4, timeout=240)


@pytest.fixture(scope="module")
def two_ranks(four_ranks):
    return run_workers(scenarios_2, 2, args=(four_ranks[0]["checkpoint"]["saved"],), timeout=180)


@pytest.fixture(scope="module")
def ref64():
    return reference(torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fraction, colocate, strategy",
    [
        (1.0, True, "COMM-OPT"),
        (0.5, True, "HYBRID-OPT"),
        (0.25, True, "MEM-OPT"),
        (1.0, False, "COMM-OPT"),
        (0.5, False, "HYBRID-OPT"),
    ],
)
def test_four_ranks_match_one_process_float64(four_ranks, ref64, fraction, colocate, strategy):
    for rank, out in enumerate(four_ranks):
        res = out[(fraction, colocate)]
        assert res["strategy"] == strategy
        assert_grads_close(res["grads"], ref64, 1e-5)
        # only upper triangles travel: n(n+1)/2 elements per n x n factor per update
        assert res["factor_elements"] == res["expected_factor_elements"]


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_two_ranks_match_one_process_float32(two_ranks, fraction):
    want = reference(torch.float32)
    for out in two_ranks:
        assert_grads_close(out[("f32", fraction)]["grads"], want, 1e-4)


@pytest.mark.slow
def test_checkpoint_from_two_ranks_resumes_on_one_identically(two_ranks, ref64):
    run = two_ranks[0]["checkpoint"]
    assert_grads_close(run["grads"], ref64, 1e-5)
    resumed = resume_run(0, 1, run["saved"], 1.0)
    assert_grads_close(resumed, run["grads"][2:], 1e-9)


@pytest.mark.slow
def test_checkpoint_from_four_mem_opt_ranks_resumes_on_two_identically(four_ranks, two_ranks):
    want = four_ranks[0]["checkpoint"]["grads"][2:]
    for out in two_ranks:
        assert_grads_close(out["resumed_from_4"], want, 1e-9)


@pytest.mark.slow
def test_preconditioner_picks_the_distributed_comm_with_its_options(two_ranks):
    for out in two_ranks:
        assert out["auto_comm"] == ("DistributedComm", "MEM-OPT", False, int(1e-3 * 1024 * 1024))


@pytest.mark.slow
def test_without_ddp_averaging_grads_by_hand_matches_one_process(two_ranks, ref64):
    for out in two_ranks:
        assert_grads_close(out["no_ddp"], ref64, 1e-5)


@pytest.mark.slow
def test_inverse_method_hybrid_matches_one_process(four_ranks):
    want = reference(torch.float64, method="inverse")
    for out in four_ranks:
        assert_grads_close(out["inverse"]["grads"], want, 1e-5)


@pytest.mark.slow
def test_lagged_eigendecompositions_hybrid_match_one_process(four_ranks, ref64):
    want = reference(torch.float64, lag=1)
    assert not all(torch.equal(a, b) for a, b in zip(want[3], ref64[3]))  # the lag shows
    for out in four_ranks:
        assert_grads_close(out["lagged"]["grads"], want, 1e-5)


@pytest.mark.slow
def test_factor_allreduce_overlaps_backward_and_matches_one_process(two_ranks, ref64):
    for out in two_ranks:
        run = out["overlap"]
        for before, after_backward, layers in run["sent"]:
            # every layer's A and G were sent during backward (a bucket each)
            assert after_backward - before == 2 * layers
        assert_grads_close(run["grads"], ref64, 1e-5)
