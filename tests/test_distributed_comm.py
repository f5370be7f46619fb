"""The torch.distributed communicator on 4 Gloo processes, without the preconditioner.

One spawn runs every scenario (process start is the expensive part) and
returns what each rank saw; the tests below check it against references
computed here from the same seeds.
"""

import pytest
import torch
import torch.distributed as dist
from dist_utils import run_workers

from kfac_ext.distributed import DistributedComm, FactorAllReduce, GradWorkerLayout, WorkPlan

WORLD = 4
SIZES = [5, 17, 1, 33, 8, 64, 3]  # odd sizes, one 1x1


def rank_factors(rank):
    gen = torch.Generator().manual_seed(1000 + rank)
    out = []
    for n in SIZES:
        x = torch.randn(n + 3, n, generator=gen, dtype=torch.float64)
        out.append(x.T @ x)
    return out


def owner_payload(layer, which, n):
    """What the owner of (layer, which) sends: values that identify the layer and factor."""
    base = 100.0 * layer + (1.0 if which == "A" else 2.0)
    return [torch.full((n,), base, dtype=torch.float64), base + torch.arange(n * n, dtype=torch.float64).reshape(n, n)]


LAYER_SHAPES = [(7, 4), (5, 9), (12, 3), (2, 2), (6, 11)]  # (dim_A, dim_G)


def _comm_scenarios(rank, world_size):
    out = {}
    # 1. packed bucketed all-reduce; a tiny cap forces several buckets
    factors = rank_factors(rank)
    reducer = FactorAllReduce(bucket_cap_mb=2e-3)  # ~2 KB
    for f in factors:
        reducer.add(f)
    reducer.wait()
    out["averaged"] = factors
    out["elements_sent"] = reducer.elements_sent
    out["buckets_sent"] = reducer.buckets_sent

    # 2. every strategy: eigen broadcast to the block, preconditioned grads to the column
    names = [f"layer{i}" for i in range(len(LAYER_SHAPES))]
    for fraction in (1.0, 0.5, 0.25):
        for colocate in (True, False):
            comm = DistributedComm(grad_worker_fraction=fraction, colocate_factors=colocate, timeout=20)
            comm.setup(names, LAYER_SHAPES)
            items, received = [], {}
            for i, (na, ng) in enumerate(LAYER_SHAPES):
                for which, n in (("A", na), ("G", ng)):
                    owner = comm.eigen_owner(i, which)
                    if rank == owner:
                        items.append((i, which, owner_payload(i, which, n)))
                    elif comm.is_grad_worker(i):
                        tensors = [torch.zeros(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)]
                        items.append((i, which, tensors))
                        received[(i, which)] = tensors
            comm.wait(comm.broadcast_eigens(items))
            precond = []
            for i, (na, ng) in enumerate(LAYER_SHAPES):
                p = (
                    torch.full((ng, na), float(i + 1), dtype=torch.float64)
                    if comm.is_grad_worker(i)
                    else torch.full((ng, na), -7.0, dtype=torch.float64)
                )
                precond.append(p)
            comm.wait(comm.broadcast_preconditioned(list(enumerate(precond))))
            out[("strategy", fraction, colocate)] = dict(
                name=comm.strategy,
                owners=[(comm.eigen_owner(i, "A"), comm.eigen_owner(i, "G")) for i in range(len(LAYER_SHAPES))],
                grad_worker=[comm.is_grad_worker(i) for i in range(len(LAYER_SHAPES))],
                received=received,
                precond=precond,
                eigen_elements=comm.eigen_elements,
                precond_elements=comm.precond_elements,
            )

    # 3. a rank that registered different layers -> an error naming the mismatch, on every rank
    bad = list(names)
    if rank == 2:
        bad[3] = "other_layer"
    try:
        DistributedComm(timeout=20).setup(bad, LAYER_SHAPES)
        out["mismatch_error"] = None
    except RuntimeError as exc:
        out["mismatch_error"] = str(exc)
    short = names[:-1] if rank == 1 else names
    try:
        DistributedComm(timeout=20).setup(short, LAYER_SHAPES[: len(short)])
        out["missing_error"] = None
    except RuntimeError as exc:
        out["missing_error"] = str(exc)
    dist.barrier()
    return out


@pytest.fixture(scope="module")
def outcomes():
    return run_workers(_comm_scenarios, WORLD, timeout=150)


def test_allreduce_gives_the_mean_on_every_rank(outcomes):
    expected = [sum(fs) / WORLD for fs in zip(*(rank_factors(r) for r in range(WORLD)))]
    for out in outcomes:
        for got, want in zip(out["averaged"], expected):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_only_upper_triangles_travel_in_several_buckets(outcomes):
    for out in outcomes:
        assert out["elements_sent"] == sum(n * (n + 1) // 2 for n in SIZES)
        assert out["buckets_sent"] > 1


@pytest.mark.parametrize("fraction, groups", [(1.0, 1), (0.5, 2), (0.25, 4)])
@pytest.mark.parametrize("colocate", [True, False])
def test_strategies_deliver_eigens_and_preconditioned_grads(outcomes, fraction, groups, colocate):
    grad_workers = WORLD // groups
    results = [out[("strategy", fraction, colocate)] for out in outcomes]
    assert {r["name"] for r in results} == {{1.0: "COMM-OPT", 0.5: "HYBRID-OPT", 0.25: "MEM-OPT"}[fraction]}
    owners = results[0]["owners"]
    assert all(r["owners"] == owners for r in results)  # every rank computed the same plan
    for i, (a_owner, g_owner) in enumerate(owners):
        workers = [r for r in range(WORLD) if results[r]["grad_worker"][i]]
        assert len(workers) == grad_workers
        assert a_owner in workers and g_owner in workers
        if colocate or grad_workers == 1:
            assert a_owner == g_owner
    for rank, res in enumerate(results):
        for (i, which), (vals, vecs) in res["received"].items():
            n = LAYER_SHAPES[i][0 if which == "A" else 1]
            want_vals, want_vecs = owner_payload(i, which, n)
            torch.testing.assert_close(vals, want_vals)
            torch.testing.assert_close(vecs, want_vecs)
        for i, p in enumerate(res["precond"]):
            assert torch.all(p == i + 1), f"rank {rank} layer {i}"
    sent_eigen = sum(r["eigen_elements"] for r in results)
    sent_precond = sum(r["precond_elements"] for r in results)
    if grad_workers == 1:
        assert sent_eigen == 0  # MEM-OPT: nothing to share
    else:
        assert sent_eigen == sum(n * n + n for shape in LAYER_SHAPES for n in shape)
    if groups == 1:
        assert sent_precond == 0  # COMM-OPT: everyone preconditions everything
    else:
        # one sender per column per layer
        assert sent_precond == grad_workers * sum(a * g for a, g in LAYER_SHAPES)


def test_mismatched_layers_fail_on_every_rank_naming_the_first_difference(outcomes):
    for out in outcomes:
        msg = out["mismatch_error"]
        assert msg is not None and "layer #3" in msg and "'other_layer'" in msg and "rank 2" in msg
        msg = out["missing_error"]
        assert msg is not None and "'layer4'" in msg and "rank 1" in msg


def test_layout_and_plan_without_processes():
    layout = GradWorkerLayout(8, 5, 0.5, create_groups=False)
    assert layout.blocks == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout.columns == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.block_of(5) == 1 and layout.column_of(5) == 1
    plan = WorkPlan([(577, 64), (64, 64)] * 6, layout, colocate_factors=False)
    assert all(layout.block_of(w.a_owner) == w.block == layout.block_of(w.g_owner) for w in plan.layers)
    with pytest.raises(ValueError, match="grad_worker_fraction"):
        GradWorkerLayout(4, 0, 0.1, create_groups=False)
    with pytest.raises(ValueError, match="divide"):
        GradWorkerLayout(6, 0, 0.67, create_groups=False)
