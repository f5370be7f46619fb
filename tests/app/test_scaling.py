"""The scaling model's arithmetic on small hand-computed cases, and `kfac-ext bench scaling`."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from kfac_ext.app.scaling import resnet50_factor_shapes
from kfac_ext.cli import main
from kfac_ext.scaling import FactorLayer, Intervals, Network, Workload, plan, predict, strategies, workload_of
from kfac_ext.scaling.calibrate import gpu_profile
from kfac_ext.scaling.measure import (
    expected_max_excess,
    fit_eigh,
    fit_eigh_rate,
    local_relative,
    measure_op_overhead,
    measure_profile,
    min_of_medians,
    monotone,
    op_overhead_estimate,
    quietest_window,
    sample_until_stable,
    stable_estimate,
    window_estimates,
)
from kfac_ext.scaling.network import broadcast_time, ring_allreduce_time
from kfac_ext.scaling.profiles import DeviceProfile, from_json, to_json
from kfac_ext.scaling.step import HostCost, update_fraction
from kfac_ext.scaling.workload import OpCounter

NET = Network("test", alpha=1e-5, bandwidth=1e9)
# dense 1 TFLOP/s; eigh(n) = 1 ms + n^3 / 1e9 s (9 n^3 flops at 9 GFLOP/s)
PROFILE = DeviceProfile("test", flops_per_s=1e12, eigh_flops_per_s=9e9, eigh_latency_s=1e-3)
WORK = Workload(
    "two",
    forward_flops=1e9,
    backward_flops=2e9,
    params=1_000_000,
    activation_bytes=1e3,
    layers=(FactorLayer("a", 10, 20, 1), FactorLayer("b", 30, 40, 1)),
)


def test_alpha_beta_formulas():
    assert ring_allreduce_time(1e6, 1, NET) == 0.0
    assert ring_allreduce_time(1e6, 4, NET) == pytest.approx(6 * 1e-5 + 1.5 * 1e-3)
    assert broadcast_time(1e6, 8, NET) == pytest.approx(3e-5 + 1e-3)


def test_update_fraction_of_intervals_and_schedules():
    assert update_fraction(10, 100) == 0.1
    assert update_fraction(10, 95) == 10 / 95  # steps 0, 10, ..., 90
    # every step for 10 steps, then every step that 5 divides: 0..9, 10, 15
    assert update_fraction(lambda s: 1 if s < 10 else 5, 20) == 12 / 20
    with pytest.raises(ValueError, match="interval"):
        update_fraction(0, 10)


def test_update_fraction_follows_the_preconditioners_interval_rule():
    """The model counts update steps as the preconditioner decides them, schedules too."""
    from kfac_ext.schedules import Hyperparameter, IntervalTracker, growing_interval

    for interval in (growing_interval(1, 2, 5), growing_interval(3, 1.5, 7), lambda s: 1 + s % 4):
        tracker = IntervalTracker(Hyperparameter("interval", interval, lambda v: None))
        due = 0
        for s in range(60):
            if tracker.is_due(s):
                tracker.mark(s)
                due += 1
        assert update_fraction(interval, 60) == due / 60


def test_comm_opt_step_by_hand():
    s = predict(WORK, 4, PROFILE, NET, batch=8, intervals=Intervals(1, 1))
    assert (s.strategy, s.grad_workers) == ("COMM-OPT", 4)
    assert s.forward_backward == pytest.approx(8 * 3e9 / 1e12)
    assert s.grad_allreduce == pytest.approx(6e-5 + 1.5 * 4e6 / 1e9)
    assert s.factor_compute == pytest.approx(2 * 8 * (100 + 400 + 900 + 1600) / 1e12)
    packed = (55 + 210 + 465 + 820) * 4  # n(n+1)/2 of 10, 20, 30, 40
    assert s.factor_comm == pytest.approx(6e-5 + 1.5 * packed / 1e9)
    # each layer's (A, G) pair on its own rank: the larger pair is the makespan
    assert s.eigen_compute == pytest.approx(2e-3 + (30**3 + 40**3) / 1e9)
    eig_bytes = (110 + 420 + 930 + 1640) * 4  # Q and d of every factor
    assert s.eigen_comm == pytest.approx(2e-5 + eig_bytes / 1e9 + 4 * 1e-5)
    # two GEMMs per factor each way, and the division by the eigenvalues' outer product
    assert s.precondition == pytest.approx((4 * 20 * 10 * 30 + 4 * 40 * 30 * 70 + 2 * (20 * 10 + 40 * 30)) / 1e12)
    assert s.grad_comm == 0.0
    assert s.memory == {
        "activations": 8e3,
        "params_grads_momentum": 1.2e7,
        "factors": 12000.0,
        "eigenbases": float(eig_bytes),
    }
    assert s.kfac == pytest.approx(s.sgd + s.kfac_overhead)


def test_mem_opt_step_by_hand():
    s = predict(WORK, 4, PROFILE, NET, batch=8, grad_workers=1, intervals=Intervals(1, 1))
    assert s.strategy == "MEM-OPT"
    assert s.eigen_comm == 0.0
    # the slowest rank owns no layer: it receives both preconditioned gradients
    assert s.grad_comm == pytest.approx(2e-5 + (200 + 1200) * 4 / 1e9 + 2 * 1e-5)
    assert s.precondition == 0.0
    assert s.memory["eigenbases"] == (930 + 1640) * 4  # the rank that owns layer b


def test_kfac_lw_exchange_intervals_and_buckets():
    lw = predict(WORK, 4, PROFILE, NET, batch=8, intervals=Intervals(1, 1), packed_factors=False, eigen_allreduce=True)
    assert lw.factor_comm == pytest.approx(6e-5 + 1.5 * 3000 * 4 / 1e9)
    assert lw.eigen_comm == pytest.approx(6e-5 + 1.5 * 3100 * 4 / 1e9)
    every = predict(WORK, 4, PROFILE, NET, batch=8, intervals=Intervals(1, 1))
    sparse = predict(WORK, 4, PROFILE, NET, batch=8, intervals=Intervals(10, 100, steps=1000))
    assert sparse.factor_compute == pytest.approx(every.factor_compute / 10)
    assert sparse.eigen_compute == pytest.approx(every.eigen_compute / 100)
    assert sparse.precondition == every.precondition  # every step
    cap = 0.001 * 1024 * 1024
    nbytes = 1550 * 4
    tiny = predict(WORK, 4, PROFILE, NET, batch=8, intervals=Intervals(1, 1), bucket_cap_mb=0.001)
    assert tiny.factor_comm == pytest.approx(
        5 * ring_allreduce_time(cap, 4, NET) + ring_allreduce_time(nbytes - 5 * cap, 4, NET)
    )


def test_one_rank_has_no_communication():
    s = predict(WORK, 1, PROFILE, NET, batch=8, intervals=Intervals(1, 1))
    assert s.grad_allreduce == s.factor_comm == s.eigen_comm == s.grad_comm == 0.0
    assert s.eigen_compute == pytest.approx(4e-3 + (10**3 + 20**3 + 30**3 + 40**3) / 1e9)


def test_eigendecompositions_go_through_the_makespan_solver():
    from kfac_ext.scaling.assign import assign

    # LPT gives 3+2+2 = 7 on one worker; the optimum splits {3, 3} / {2, 2, 2} = 6
    owner = assign([3.0, 3.0, 2.0, 2.0, 2.0], 2)
    loads = [sum(c for c, w in zip([3, 3, 2, 2, 2], owner) if w == k) for k in range(2)]
    assert max(loads) == 6


def test_strategies_and_bad_arguments():
    assert strategies(1) == {"COMM-OPT": 1}
    assert strategies(16) == {"COMM-OPT": 16, "HYBRID-OPT": 4, "MEM-OPT": 1}
    assert strategies(64)["HYBRID-OPT"] == 8
    with pytest.raises(ValueError, match="grad_workers"):
        predict(WORK, 4, PROFILE, NET, batch=8, grad_workers=3)
    with pytest.raises(ValueError, match="batch"):
        predict(WORK, 4, PROFILE, NET, batch=0)
    with pytest.raises(ValueError, match="host_s"):
        predict(WORK, 4, PROFILE, NET, batch=1, host_s=-1.0)
    with pytest.raises(ValueError, match="flops_per_s"):
        DeviceProfile("x", flops_per_s=0.0, eigh_flops_per_s=1.0)


def test_host_cost_by_hand():
    """10 + 20 counted ops and 3 parameter tensors x 6 optimizer kernels = 48 ops; at 100 us
    each 4.8 ms, above the 3 ms of FLOPs (3 GFLOP at 1 TFLOP/s), so the step is host-bound;
    two metric syncs of 1 ms, a third for the gradients on more than one rank."""
    work = dataclasses.replace(WORK, forward_ops=10, backward_ops=20, param_tensors=3)
    host = HostCost(per_op_s=1e-4, optimizer_ops_per_tensor=6, sync_s=1e-3, syncs=2)
    assert host.ops(work) == 48
    assert host.launch_time(work) == pytest.approx(4.8e-3)
    assert host.sync_time(1) == pytest.approx(2e-3) and host.sync_time(4) == pytest.approx(3e-3)
    one = predict(work, 1, PROFILE, NET, batch=1, host_s=0.5e-3, host_cost=host)
    assert one.forward_backward == pytest.approx(3e-3) and one.launch == pytest.approx(4.8e-3)
    assert one.sgd == pytest.approx(0.5e-3 + 4.8e-3 + 2e-3)  # max(3, 4.8) + syncs + host
    four = predict(work, 4, PROFILE, NET, batch=1, host_cost=host)
    allreduce = ring_allreduce_time(4e6, 4, NET)  # 1 M parameters x 4 bytes
    assert four.sgd == pytest.approx(4.8e-3 + 3e-3 + allreduce)
    # a batch of 2 makes the FLOPs (6 ms) the bound; the host term leaves K-FAC's overhead alone
    two = predict(work, 4, PROFILE, NET, batch=2, host_cost=host)
    assert two.sgd == pytest.approx(6e-3 + 3e-3 + allreduce)
    assert two.kfac_overhead == predict(work, 4, PROFILE, NET, batch=2).kfac_overhead
    assert predict(work, 4, PROFILE, NET, batch=1).sgd == pytest.approx(3e-3 + allreduce)  # default: none
    with pytest.raises(ValueError, match="per_op_s"):
        HostCost(per_op_s=-1.0)
    with pytest.raises(ValueError, match="counts"):
        HostCost(syncs=-1)


def test_chained_syncs_and_gradient_release_by_hand():
    """One sync after other work (1 ms), one chained right after it (2 ms); on 4 ranks a
    second 1 ms one for the gradients and 1 op per parameter tensor (3 x 100 us) to release
    them: 3 ms on 1 rank, 4.3 ms on 4."""
    work = dataclasses.replace(WORK, forward_ops=10, backward_ops=20, param_tensors=3)
    host = HostCost(per_op_s=1e-4, sync_s=1e-3, syncs=1, chained_sync_s=2e-3, chained_syncs=1, grad_ops_per_tensor=1)
    assert host.sync_time(1) == pytest.approx(3e-3) and host.sync_time(4) == pytest.approx(4e-3)
    assert host.grad_release_time(work, 1) == 0.0 and host.grad_release_time(work, 4) == pytest.approx(3e-4)
    one = predict(work, 1, PROFILE, NET, batch=1, host_cost=host)
    assert one.sync == pytest.approx(3e-3) and one.sgd == pytest.approx(4.8e-3 + 3e-3)
    four = predict(work, 4, PROFILE, NET, batch=1, host_cost=host)
    assert four.sgd == pytest.approx(4.8e-3 + 4.3e-3 + ring_allreduce_time(4e6, 4, NET))
    with pytest.raises(ValueError, match="chained_sync_s"):
        HostCost(chained_sync_s=math.inf)
    with pytest.raises(ValueError, match="grad_hook_s"):
        HostCost(grad_hook_s=-1e-6)
    with pytest.raises(ValueError, match="counts"):
        HostCost(grad_ops_per_tensor=-1)


def test_gradient_hooks_by_hand():
    """3 parameter tensors, a hook of 0.5 ms each on more than one rank: 1.5 ms added to
    the issue time (4.8 ms of ops at 100 us), which already bounds forward + backward."""
    work = dataclasses.replace(WORK, forward_ops=10, backward_ops=20, param_tensors=3)
    host = HostCost(per_op_s=1e-4, grad_hook_s=5e-4)
    assert host.hook_time(work, 1) == 0.0 and host.hook_time(work, 4) == pytest.approx(1.5e-3)
    one = predict(work, 1, PROFILE, NET, batch=1, host_cost=host)
    assert one.launch == pytest.approx(4.8e-3) and one.sgd == pytest.approx(4.8e-3)
    four = predict(work, 4, PROFILE, NET, batch=1, host_cost=host)
    assert four.launch == pytest.approx(6.3e-3)
    assert four.sgd == pytest.approx(6.3e-3 + ring_allreduce_time(4e6, 4, NET))
    # hooks below the FLOP time are hidden: at batch 3 the FLOPs take 9 ms > 6.3 ms
    three = predict(work, 4, PROFILE, NET, batch=3, host_cost=host)
    assert three.sgd == pytest.approx(9e-3 + ring_allreduce_time(4e6, 4, NET))


def test_op_counts_of_a_linear_layer_by_hand():
    """Linear(4, 3) without bias, one sample: forward mm + the loss's sum; backward the
    seed gradient (ones_like) and the weight's mm (the input needs no gradient); the
    transposes, expand and detach are views and launch nothing."""
    work = workload_of(lambda: nn.Linear(4, 3, bias=False), (4,))
    assert (work.forward_ops, work.backward_ops, work.param_tensors) == (2, 2, 1)
    # with a bias: addmm replaces mm, and the bias gradient is one more sum
    mlp = workload_of(lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (4,))
    assert (mlp.forward_ops, mlp.param_tensors) == (4, 4)  # addmm, relu, addmm, sum


def test_six_kernels_per_tensor_for_a_non_foreach_sgd_with_momentum_and_weight_decay():
    """HostCost's default: zero_grad's zero_, the accumulation into the zeroed .grad, and
    the step's weight-decay add, momentum mul_ and add_, and update add_ (counted on the meta
    device with torch's own SGD, from its second step, when the momentum buffers exist)."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False)
    x = torch.zeros(2, 4, device="meta")
    model(x).sum().backward()
    opt.step()
    with OpCounter() as zero:
        opt.zero_grad(set_to_none=False)
    with OpCounter() as first:
        loss = model(x).sum()
    with OpCounter() as accumulate:
        loss.backward()
    with OpCounter() as step:
        opt.step()
    fresh = workload_of(lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (4,))
    tensors = fresh.param_tensors
    assert first.ops == fresh.forward_ops
    per_tensor = (zero.ops + accumulate.ops - fresh.backward_ops + step.ops) / tensors
    assert per_tensor == HostCost().optimizer_ops_per_tensor == 6


def test_planner_prefers_fresh_curvature_within_budget_and_memory():
    common = dict(batch=8, factor_choices=(1, 10), inv_choices=(10, 100))
    loose = plan(WORK, 4, PROFILE, NET, memory_limit=1e12, max_overhead=100.0, **common)
    assert loose.within_budget and loose.choice.intervals == "1/10"
    # no budget at all: the fastest feasible candidate, flagged
    tight = plan(WORK, 4, PROFILE, NET, memory_limit=1e12, max_overhead=0.0, **common)
    assert not tight.within_budget and tight.choice.intervals == "10/100"
    fastest = min(
        (predict(WORK, 4, PROFILE, NET, batch=8, grad_workers=g, intervals=Intervals(10, 100)) for g in (4, 2, 1)),
        key=lambda s: s.kfac,
    )
    assert tight.choice.kfac == pytest.approx(fastest.kfac)
    # a limit COMM-OPT's eigenbases do not fit (HYBRID g=2 holds layer b alone, as MEM-OPT)
    mem_opt = predict(WORK, 4, PROFILE, NET, batch=8, grad_workers=1).memory_total
    comm_opt = predict(WORK, 4, PROFILE, NET, batch=8).memory_total
    assert mem_opt < comm_opt
    only = plan(WORK, 4, PROFILE, NET, memory_limit=mem_opt, max_overhead=100.0, **common)
    assert only.choice.strategy != "COMM-OPT" and only.choice.memory_total <= mem_opt
    none = plan(WORK, 4, PROFILE, NET, memory_limit=mem_opt - 1, **common)
    assert none.choice is None and "nothing fits" in none.reason
    assert none.grad_worker_fraction is None and loose.grad_worker_fraction == 1.0


def test_planner_tries_every_power_of_two_grad_worker_count():
    from kfac_ext.scaling.planner import grad_worker_counts

    assert grad_worker_counts(64) == [1, 2, 4, 8, 16, 32, 64]
    assert grad_worker_counts(12) == [1, 2, 4, 12]
    assert grad_worker_counts(1) == [1]
    # 16 layers, one per block at g = 16 / 4: a limit between MEM-OPT's eigenbases and
    # HYBRID's (g = 4, 4 blocks) lets only the fractions at or below some g through
    layers = tuple(FactorLayer(f"l{i}", 64, 64, 1) for i in range(16))
    work = dataclasses.replace(WORK, layers=layers)
    mem = {g: predict(work, 16, PROFILE, NET, batch=8, grad_workers=g).memory_total for g in (1, 2, 4, 8, 16)}
    assert mem[1] < mem[2] < mem[4] < mem[8] < mem[16]
    chosen = plan(
        work, 16, PROFILE, NET, batch=8, memory_limit=mem[2], max_overhead=100.0, factor_choices=(1,), inv_choices=(1,)
    )
    assert chosen.choice.grad_workers in (1, 2) and chosen.choice.memory_total <= mem[2]


def test_workload_of_a_small_mlp_and_conv_by_hand():
    w = workload_of(lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (4,))
    assert w.forward_flops == 2 * 4 * 3 + 2 * 3 * 2
    # the input needs no gradient: weight grads of both layers, input grad of the second only
    assert w.backward_flops == 2 * 4 * 3 + 2 * (2 * 3 * 2)
    assert w.params == 12 + 3 + 6 + 2
    assert [(la.dim_a, la.dim_g, la.rows) for la in w.layers] == [(5, 3, 1), (4, 2, 1)]
    conv = workload_of(lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten()), (2, 5, 5))
    (layer,) = conv.layers
    assert (layer.dim_a, layer.dim_g, layer.rows) == (2 * 9 + 1, 3, 25)
    assert layer.factor_flops(4) == 2 * 4 * 25 * (19**2 + 3**2)
    assert conv.forward_flops == 2 * 25 * 3 * 18  # output positions x out x (C_in k^2)
    assert conv.activation_bytes >= 2 * 5 * 5 * 4  # at least the conv's input is saved
    with pytest.raises(ValueError, match="input_shape"):
        workload_of(lambda: nn.Linear(4, 3), ())


def token_model() -> nn.Module:
    return nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 4))


def test_token_inputs_and_sequence_rows(capsys):
    w = workload_of(token_model, (8,), input_dtype=torch.long)
    emb, layer = w.layers  # the Embedding is a K-FAC layer with a diagonal A
    assert (emb.dim_a, emb.dim_g, emb.rows, emb.a_diagonal, emb.a_onehot) == (100, 16, 8, True, True)
    assert (layer.dim_a, layer.dim_g, layer.rows, layer.a_diagonal) == (17, 4, 8, False)  # 8 positions per sample
    assert w.forward_flops == 2 * 8 * 16 * 4
    code, out, _ = _run(
        capsys,
        "--model",
        "test_scaling:token_model",
        "--input-shape",
        "8",
        "--input-dtype",
        "int64",
        "--ranks",
        "2",
        "--profile",
        "a100",
        "--json",
    )
    assert code == 0 and json.loads(out)["model"]["kfac_layers"] == 2
    code, _, err = _run(
        capsys, "--model", "test_scaling:token_model", "--input-shape", "8", "--ranks", "2"
    )  # float ids: a one-line error
    assert code == 2 and "--model" in err and len(err.strip().splitlines()) == 1


class TinyTransformer(nn.Module):
    """Embedding (V=50, E=16) -> self-attention (2 heads) -> Linear head back to V."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 50)

    def forward(self, x):
        h = self.emb(x)
        return self.head(self.att(h, h, h)[0])


def test_tiny_transformer_layers_come_from_the_preconditioners_registry():
    w = workload_of(TinyTransformer, (7,), input_dtype=torch.long)
    got = [(la.name, la.dim_a, la.dim_g, la.rows, la.a_diagonal, la.g_diagonal) for la in w.layers]
    assert got == [
        ("emb", 50, 16, 7, True, False),  # A: token counts (diagonal), G: 16x16
        ("att[q]", 17, 16, 7, False, False),  # each projection of the packed in_proj, bias row
        ("att[k]", 17, 16, 7, False, False),
        ("att[v]", 17, 16, 7, False, False),
        ("att[out]", 17, 16, 7, False, False),
        ("head", 17, 50, 7, False, False),
    ]
    emb, q, *_ = w.layers
    # the one-hot A is a count per token; G a 16x16 GEMM over the 7 tokens of each sample
    assert emb.factor_flops(4) == 4 * 7 + 2 * 4 * 7 * 16**2
    assert q.factor_flops(4) == 2 * 4 * 7 * (17**2 + 16**2)
    # a diagonal A needs no basis change: Q_G on the left only, and the eigenvalue division
    assert emb.precondition_flops() == 4 * 16 * 50 * 16 + 2 * 16 * 50
    assert q.precondition_flops() == 4 * 16 * 17 * (16 + 17) + 2 * 16 * 17
    assert emb.dense_dims() == (16,) and emb.factor_elements() == 50 + 16**2
    assert emb.factor_elements(packed=True) == 50 + 16 * 17 // 2 and emb.eigen_elements() == 50 + 16**2 + 16

    s = predict(w, 1, PROFILE, NET, batch=4, intervals=Intervals(1, 1))
    eigh = lambda n: 1e-3 + 9 * n**3 / 9e9  # noqa: E731  PROFILE's eigendecomposition
    # 11 eigendecompositions: G of the embedding, A and G of the 4 projections and the head
    assert s.eigen_compute == pytest.approx(eigh(16) + 4 * (eigh(17) + eigh(16)) + eigh(17) + eigh(50))
    assert s.memory["factors"] == 4 * ((50 + 16**2) + 4 * (17**2 + 16**2) + (17**2 + 50**2))
    assert s.memory["eigenbases"] == 4 * ((50 + 272) + 4 * (306 + 272) + (306 + 2550))
    assert s.factor_compute == pytest.approx(sum(la.factor_flops(4) for la in w.layers) / 1e12)
    assert s.precondition == pytest.approx(sum(la.precondition_flops() for la in w.layers) / 1e12)


def test_factors_over_max_factor_bytes_go_diagonal_and_cost_o_n():
    mlp = lambda: nn.Sequential(nn.Linear(4000, 300), nn.Linear(300, 3))  # noqa: E731
    w = workload_of(mlp, (5, 4000), max_factor_bytes=2**20)  # A of the first: 4001^2 x 4 B > 1 MiB
    big, small = w.layers
    assert (big.dim_a, big.a_diagonal, big.g_diagonal, big.rows) == (4001, True, False, 5)
    assert big.factor_flops(2) == 2 * 2 * 5 * (4001 + 300**2) and big.dense_dims() == (300,)
    assert not small.a_diagonal and not small.g_diagonal
    dense = workload_of(mlp, (5, 4000), max_factor_bytes=None).layers[0]
    assert dense.dense_dims() == (4001, 300)
    s = predict(w, 2, PROFILE, NET, batch=2, grad_workers=1)
    assert s.memory["factors"] == 4 * (4001 + 300**2 + 301**2 + 3**2)


def test_reduce_counts_one_row_per_sequence_as_the_preconditioner_does():
    w = workload_of(TinyTransformer, (7,), input_dtype=torch.long, kfac_approx="reduce")
    # an Embedding stays 'expand'; every projection and the head fold the 7 positions
    assert [(la.name, la.rows) for la in w.layers] == [
        ("emb", 7),
        ("att[q]", 1),
        ("att[k]", 1),
        ("att[v]", 1),
        ("att[out]", 1),
        ("head", 1),
    ]


def test_skip_layers_reach_the_workload():
    w = workload_of(TinyTransformer, (7,), input_dtype=torch.long, skip_layers=["^emb$", "^head$"])
    assert [la.name for la in w.layers] == ["att[q]", "att[k]", "att[v]", "att[out]"]


def transformer_model() -> nn.Module:
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)


def test_cli_plans_a_transformer_encoder(capsys):
    code, out, _ = _run(
        capsys,
        "--model",
        "test_scaling:transformer_model",
        "--input-shape",
        "10,32",
        "--ranks",
        "2,4",
        "--profile",
        "a100",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["model"]["kfac_layers"] == 12  # per block: q, k, v, out, linear1, linear2
    for row in data["rows"]:
        assert row["kfac"] > row["sgd"] > 0 and row["memory"]["factors"] > 0
    assert data["plans"]


def test_a_model_without_parameters_has_nothing_to_precondition():
    w = workload_of(lambda: nn.Sequential(nn.ReLU()), (4,))
    assert w.layers == () and w.params == 0 and w.backward_flops == 0
    s = predict(w, 4, PROFILE, NET, batch=2, grad_workers=1)
    assert s.kfac_overhead == 0.0 and s.memory["eigenbases"] == 0.0


def test_resnet50_workload_matches_the_listed_shapes():
    from kfac_ext.scaling.models import resnet50

    w = workload_of(resnet50, (3, 224, 224))
    assert [(la.dim_a, la.dim_g) for la in w.layers] == [(a, g) for _, a, g in resnet50_factor_shapes()]
    assert w.params == 25_557_032  # torchvision's ResNet-50
    assert w.forward_flops == pytest.approx(8.18e9, rel=0.01)  # 4.09 GMACs


def test_monotone_rejection_and_the_eigh_fit():
    kept, rejected = monotone([(256, 2.0), (64, 1.0), (128, 0.5)])
    assert kept == [(64, 1.0), (256, 2.0)] and rejected == [128]
    exact = [(n, 1e-3 + 9 * n**3 / 1e9) for n in (10, 20, 40, 80)]
    latency, rate = fit_eigh(exact)
    assert latency == pytest.approx(1e-3, rel=1e-6) and rate == pytest.approx(1e9, rel=1e-6)
    # a fit that wants a negative latency becomes a pure cubic through the largest size
    latency, rate = fit_eigh([(10, 9e-6), (20, 9 * 8e3 / 1e9 * 1.5)])
    assert latency == 0.0 and rate == pytest.approx(9 * 20**3 / (9 * 8e3 / 1e9 * 1.5))


def test_measured_profile_is_positive(tmp_path):
    torch.set_num_threads(1)
    m = measure_profile(sizes=(48, 96), repeats=3, gemm_size=64, min_s=0.0, max_windows=4)
    p = m.profile
    assert p.flops_per_s > 0 and p.eigh_flops_per_s > 0 and p.eigh_latency_s > 0
    assert "thread CPU time" in p.source and "latency at n=4" in p.source and m.gemm_spread >= 1.0
    assert 3 <= m.windows <= 4 and m.as_dict()["confirmed"] == (not m.unconfirmed)
    with pytest.raises(ValueError, match="latency_size"):
        measure_profile(sizes=(8, 16), latency_size=8)
    path = tmp_path / "p.json"
    to_json(p, str(path), samples=list(m.samples))
    assert from_json(str(path)) == p
    to_json(PROFILE, str(path))  # unbounded memory travels as null
    assert json.loads(path.read_text())["memory_bytes"] is None and from_json(str(path)) == PROFILE


def _run(capsys, *argv):
    code = main(["bench", "scaling", *argv])
    out, err = capsys.readouterr()
    return code, out, err


SMALL = [
    "--model",
    "kfac_ext.scaling.models:resnet32_cifar",
    "--input-shape",
    "3,32,32",
    "--batch-size",
    "16",
    "--ranks",
    "1,4",
    "--profile",
    "h100",
]


def test_cli_json_is_one_object_with_rows_and_plans(capsys, tmp_path):
    png = tmp_path / "s.png"
    code, out, err = _run(capsys, *SMALL, "--json", "--plot", str(png))
    assert code == 0, err
    data = json.loads(out)  # exactly one JSON object, nothing else
    assert data["model"]["kfac_layers"] == 32
    assert [(r["ranks"], r["strategy"]) for r in data["rows"]] == [
        (1, "COMM-OPT"),
        (4, "COMM-OPT"),
        (4, "HYBRID-OPT"),
        (4, "MEM-OPT"),
    ]
    assert [p["ranks"] for p in data["plans"]] == [1, 4]
    assert data["plans"][1]["choice"]["memory_total"] <= data["memory_limit_bytes"]
    assert png.stat().st_size > 1000


def test_cli_eigh_latency_override_reaches_the_step(capsys):
    _, out, _ = _run(capsys, *SMALL, "--json")
    base = json.loads(out)["rows"][0]
    _, out, _ = _run(capsys, *SMALL, "--json", "--eigh-latency-ms", "10")
    slow = json.loads(out)
    assert slow["profile"]["eigh_latency_s"] == 0.01
    # 1 rank, 32 layers, 64 calls every 100 steps: each call 10 ms slower than before
    added = slow["rows"][0]["eigen_compute"] - base["eigen_compute"]
    assert added == pytest.approx(64 * (0.01 - gpu_profile("h100").eigh_latency_s) / 100)


def test_cli_growing_intervals_average_over_the_horizon(capsys):
    from kfac_ext.schedules import growing_interval

    _, out, _ = _run(capsys, *SMALL, "--json", "--factor-update-steps", "1", "--inv-update-steps", "1", "--steps", "20")
    fixed = json.loads(out)["rows"][0]
    _, out, _ = _run(
        capsys,
        *SMALL,
        "--json",
        "--factor-update-steps",
        "1",
        "--inv-update-steps",
        "1",
        "--steps",
        "20",
        "--interval-growth",
        "2",
        "--growth-every",
        "5",
    )
    grown = json.loads(out)
    row = grown["rows"][0]
    # intervals 1, 2, 4, 8 over 5 steps each, an update where s % interval(s) == 0:
    # 0-4, 6, 8, 12, 16 = 9 of 20
    assert update_fraction(growing_interval(1, 2, 5), 20) == 9 / 20
    assert row["eigen_compute"] == pytest.approx(fixed["eigen_compute"] * 9 / 20)
    assert row["factor_compute"] == pytest.approx(fixed["factor_compute"] * 9 / 20)
    assert row["intervals"] == "1/1 x2 per 5"
    assert grown["plans"][0]["choice"]["intervals"].endswith("x2 per 5")


def test_cli_table_names_the_recommendation(capsys):
    code, out, _ = _run(capsys, *SMALL, "--memory-limit-gb", "1e-6")
    assert code == 0
    assert "| 4 | MEM-OPT | 1 |" in out and "nothing fits" in out
    code, out, _ = _run(capsys, *SMALL)
    assert "grad_worker_fraction=" in out


def test_cli_op_cost_reaches_the_sgd_step(capsys):
    """--op-us 1000 costs ResNet-32's counted ops a millisecond each: the one-rank SGD step is
    at least that many ms (the host is slower than the GPU's FLOPs), K-FAC's overhead is not moved."""
    code, out, err = _run(capsys, *SMALL, "--json", "--op-us", "1000")
    assert code == 0, err
    data = json.loads(out)
    m = data["model"]
    ops = m["forward_ops"] + m["backward_ops"] + 6 * m["param_tensors"]
    assert m["param_tensors"] == 95 and m["forward_ops"] > 100 and data["op_us"] == 1000
    one = data["rows"][0]
    assert one["launch"] == pytest.approx(ops * 1e-3)
    assert one["sgd"] == pytest.approx(ops * 1e-3)
    base = json.loads(_run(capsys, *SMALL, "--json")[1])["rows"][0]
    assert base["kfac_overhead"] == pytest.approx(one["kfac_overhead"])


def test_measured_op_overhead_is_positive():
    quiet, median = measure_op_overhead(ops=20, repeats=12, group=4, extend=0.0)
    assert 0 < quiet <= median
    e = op_overhead_estimate(ops=10, repeats=6, group=3, min_windows=2, max_windows=3, min_s=0.0)
    assert 0 < e.value <= e.median and 2 <= e.windows <= 3
    calls = []
    op_overhead_estimate(ops=2, repeats=2, group=1, max_windows=2, min_s=0.0, op=lambda: calls.append(1))
    assert len(calls) == 200 + 2 * 2 * 2  # warm-up, then 2 windows of 2 bursts of 2 ops
    with pytest.raises(ValueError, match="group"):
        measure_op_overhead(group=0)
    with pytest.raises(ValueError, match="extend"):
        measure_op_overhead(extend=-1.0)


def test_window_estimates_and_stable_estimate_by_hand():
    # windows of 4, group 2: (5, 1, 5, 5) -> medians 3, 5 -> 3; (2, 2, 9, 9) -> 2; the
    # trailing part window (1,) is left out
    assert window_estimates([5.0, 1.0, 5.0, 5.0, 2.0, 2.0, 9.0, 9.0, 1.0], 4, 2) == [3.0, 2.0]
    # two quiet windows (1.00 and 1.04) among loaded ones (2.0): confirmed at 1.00
    quiet = [2.0] * 3 + [1.0] * 3 + [2.0] * 3 + [1.04] * 3
    e = stable_estimate(quiet, 3, 1, tol=0.05)
    assert (e.value, e.confirmed, e.windows, e.median) == (1.0, True, 4, 1.52)
    assert e.agreement == pytest.approx(1.04)
    assert not stable_estimate(quiet, 3, 1, tol=0.03).confirmed  # 4 % apart, 3 % asked
    # one quick window alone (a lucky spell) is not confirmed: the next best is 1.9
    lone = [2.0] * 3 + [1.0] * 3 + [1.9] * 3 + [2.0] * 3
    e = stable_estimate(lone, 3, 1)
    assert e.value == 1.0 and not e.confirmed and e.agreement == pytest.approx(1.9)
    # a single quick sample inside a window does not set it (group 3: the median)
    assert stable_estimate([2.0, 0.1, 2.0, 2.0, 2.0, 2.0], 3, 3).value == 2.0
    # one window: nothing to agree with
    one = stable_estimate([1.0, 1.0, 1.0], 3, 1)
    assert not one.confirmed and one.agreement == math.inf
    # the known limit: a run inside one loaded spell has loaded windows agreeing
    assert stable_estimate([2.0] * 9, 3, 1).confirmed
    # with a known quiet/loaded contrast (0.65), two loaded windows agreeing are not enough:
    # best 8.9 against a median of 12 is 0.74 (no quiet spell seen) and the windows differ
    loaded = [12.0] * 6 + [8.9] * 3 + [9.0] * 3 + [12.0] * 6
    assert stable_estimate(loaded, 3, 1).confirmed
    assert not stable_estimate(loaded, 3, 1, contrast=0.65).confirmed
    # a quiet spell seen (5.0 and 5.1 against a median of 12) is confirmed
    seen = [12.0] * 6 + [5.0] * 3 + [5.1] * 3 + [12.0] * 6
    assert stable_estimate(seen, 3, 1, contrast=0.65).confirmed
    # an unloaded run (every window within tol of the best) has no contrast to see
    assert stable_estimate([5.0, 5.1, 5.05] * 4, 3, 1, contrast=0.65).confirmed
    with pytest.raises(ValueError, match="complete window"):
        stable_estimate([1.0, 1.0], 3)
    with pytest.raises(ValueError, match="tol"):
        stable_estimate([1.0] * 6, 3, tol=-0.1)


def _scripted(values, fake_clock=None, tick=0.0):
    """A time_round for sample_until_stable that returns the next of ``values`` per round
    (key "x", one sample) and advances a fake clock by ``tick`` seconds a round."""
    it = iter(values)

    def time_round():
        if fake_clock is not None:
            fake_clock[0] += tick
        return {"x": [next(it)]}

    return time_round


def test_sample_until_stable_stops_when_two_windows_agree():
    # windows of 2 rounds, group 1: (2, 2) (1, 2) (2, 2) (1.02, 3) ... -> 2, 1, 2, 1.02
    seq = [2.0, 2.0, 1.0, 2.0, 2.0, 2.0, 1.02, 3.0] + [9.0] * 100
    est, rounds = sample_until_stable(_scripted(seq), {"x": 1}, 2, min_windows=2, max_windows=50, tol=0.05)
    assert rounds == 8 and est["x"].confirmed and est["x"].value == 1.0 and est["x"].windows == 4
    # the same sequence with a 3 % tolerance never confirms: it runs to the window cap
    est, rounds = sample_until_stable(_scripted(seq), {"x": 1}, 2, min_windows=2, max_windows=10, tol=0.01)
    assert rounds == 20 and not est["x"].confirmed and est["x"].value == 1.0


def test_sample_until_stable_floors_and_caps_on_time():
    clock = [0.0]
    seq = [1.0] * 1000  # agrees at once
    # confirmed after 2 windows, but held to min_s = 5 s at 1 s a round: 6 rounds (windows end at 2, 4, 6 s)
    est, rounds = sample_until_stable(
        _scripted(seq, clock, 1.0), {"x": 1}, 2, 2, 100, 0.05, math.inf, lambda: clock[0], min_s=5.0
    )
    assert rounds == 6 and est["x"].confirmed
    # never agreeing (each window quicker than the last): stopped by max_s = 7 s at 1 s a round
    clock[0] = 0.0
    falling = [10.0 / (k + 1) for k in range(1000)]
    est, rounds = sample_until_stable(_scripted(falling, clock, 1.0), {"x": 1}, 2, 2, 100, 0.05, 7.0, lambda: clock[0])
    assert rounds == 8 and not est["x"].confirmed
    with pytest.raises(ValueError, match="min_windows"):
        sample_until_stable(_scripted(seq), {"x": 1}, 2, min_windows=3, max_windows=2)


def test_sample_until_stable_waits_for_every_key():
    # "a" agrees at once, "b" only in its 4th window: 4 windows of 1 round
    seq_b = iter([3.0, 1.0, 2.0, 1.01])
    est, rounds = sample_until_stable(lambda: {"a": [1.0, 1.0], "b": [next(seq_b)]}, {"a": 2, "b": 1}, 1, 2, 10)
    assert rounds == 4 and est["a"].confirmed and est["b"].confirmed and est["b"].value == 1.0


def test_expected_max_excess_and_quietest_window_by_hand():
    # rank 0 in {1, 3}, the other rank always 2: max is 2 or 3, E = 2.5, E[rank 0] = 2
    assert expected_max_excess([1.0, 3.0], [2.0], 2) == pytest.approx(0.5)
    assert expected_max_excess([1.0, 3.0], [2.0], 3) == pytest.approx(0.5)
    # rank 0 always 1, two others each 0 or 2: max is 1 with probability 1/4, else 2
    assert expected_max_excess([1.0], [0.0, 2.0], 3) == pytest.approx(0.25 * 1 + 0.75 * 2 - 1)
    # i.i.d. uniform on {0, 1}: E[max of 4] = 1 - 1/16, E[one] = 1/2
    assert expected_max_excess([0.0, 1.0], [0.0, 1.0], 4) == pytest.approx(1 - 1 / 16 - 0.5)
    assert expected_max_excess([5.0, 7.0], [], 1) == 0.0
    with pytest.raises(ValueError, match="ranks"):
        expected_max_excess([1.0], [1.0], 0)
    # medians of 2: (5, 1) 3, (1, 1) 1, (1, 5) 3, (5, 1) 3 -> the second window
    assert quietest_window([5.0, 1.0, 1.0, 5.0, 1.0], 2) == 1
    with pytest.raises(ValueError, match="length"):
        quietest_window([1.0], 2)
    # a speed change (x2 from the 5th sample on) is divided out and the jitter (1.1) stays,
    # but for the sample next to the change (1 / median(1.1, 1, 2)) and the clipped end (2 / 2.1)
    rel = local_relative([1.0, 1.0, 1.1, 1.0, 2.0, 2.0, 2.2, 2.0], 1)
    assert rel == pytest.approx([1.0, 1.0, 1.1, 1 / 1.1, 1.0, 1.0, 1.1, 2 / 2.1])
    with pytest.raises(ValueError, match="half_width"):
        local_relative([1.0], 0)


def test_fit_eigh_rate_with_a_given_latency():
    exact = [(n, 2e-5 + 9 * n**3 / 5e9) for n in (64, 128, 512)]
    assert fit_eigh_rate(exact, 2e-5) == pytest.approx(5e9, rel=1e-12)
    # by hand, one size: (t - latency) = 9 * 10^3 / rate -> rate = 9000 / (1e-3 - 1e-4)
    assert fit_eigh_rate([(10, 1e-3)], 1e-4) == pytest.approx(9000 / 9e-4)
    # two sizes, least squares on time: x = sum c (t - L) / sum c^2 with c = 9 n^3
    c1, c2 = 9 * 10**3, 9 * 20**3
    x = (c1 * 1e-3 + c2 * 5e-3) / (c1**2 + c2**2)
    assert fit_eigh_rate([(10, 1e-3), (20, 5e-3)], 0.0) == pytest.approx(1 / x)
    with pytest.raises(ValueError, match="positive rate"):
        fit_eigh_rate([(10, 1e-4)], 1e-3)


def test_min_of_medians_by_hand():
    # groups (3, 1, 2) -> 2, (9, 8, 7) -> 8, trailing (1,) -> 1
    assert min_of_medians([3.0, 1.0, 2.0, 9.0, 8.0, 7.0, 1.0], 3) == 1.0
    # one quick sample inside a slow group does not set it: (10, 1, 10) -> 10, (4, 5, 6) -> 5
    assert min_of_medians([10.0, 1.0, 10.0, 4.0, 5.0, 6.0], 3) == 5.0
    assert min_of_medians([2.0, 4.0], 1) == 2.0  # group 1: the minimum
    assert min_of_medians([2.0, 4.0], 2) == 3.0  # an even group: the mean of the middle two
    with pytest.raises(ValueError, match="samples"):
        min_of_medians([], 3)


def test_cli_profiles_from_this_machine_and_from_a_file(capsys, tmp_path):
    code, out, _ = _run(
        capsys,
        *SMALL[:-2],
        "--profile",
        "cpu",
        "--eigh-sizes",
        "48,96",
        "--repeats",
        "3",
        "--profile-seconds",
        "0",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert data["measured"]["samples"] and data["profile"]["name"] == "cpu"
    assert isinstance(data["measured"]["confirmed"], bool) and data["measured"]["windows"] >= 4
    code, _, err = _run(capsys, *SMALL[:-2], "--profile", "cpu", "--profile-seconds", "-1")
    assert code != 0 and "--profile-seconds must be seconds in 0..600; got -1" in err
    path = tmp_path / "gpu.json"
    to_json(DeviceProfile("fake-gpu", 1e13, 1e12, 1e-3, memory_bytes=8e9), str(path))
    code, out, _ = _run(capsys, *SMALL[:-2], "--profile", str(path), "--json")
    assert code == 0 and json.loads(out)["profile"]["name"] == "fake-gpu"


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--model", "nosuchmodule_xyz:f", "--input-shape", "3"], "--model"),
        (["--model", "kfac_ext.scaling.models:nothing", "--input-shape", "3"], "--model"),
        (["--model", "resnet18"], "--model"),
        (["--model", "kfac_ext.scaling.models:resnet32_cifar"], "--input-shape"),
        (["--model", "kfac_ext.scaling.models:resnet32_cifar", "--input-shape", "3,2,2,2,2"], "--model"),
        (["--profile", "nosuch"], "--profile"),
        (["--batch-size", "0"], "--batch-size"),
        (["--memory-limit-gb", "0"], "--memory-limit-gb"),
        (["--max-overhead", "-1"], "--max-overhead"),
        (["--host-ms", "nan"], "--host-ms"),
        (["--op-us", "-1"], "--op-us"),
        (["--threads", "0"], "--threads"),
        (["--eigh-latency-ms", "-1"], "--eigh-latency-ms"),
        (["--interval-growth", "0.5"], "--interval-growth"),
        (["--steps", "0"], "--steps"),
        (["--growth-every", "0"], "--growth-every"),
        (["--repeats", "0"], "--repeats"),
        (["--ranks", "0"], "--ranks"),
    ],
)
def test_cli_refuses_bad_values_in_one_line(capsys, argv, flag):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and flag in err, err


def test_transformer_lm_head_over_the_default_factor_limit_goes_diagonal():
    from kfac_ext.scaling.models import transformer_lm

    w = workload_of(transformer_lm, (64,), input_dtype=torch.long)
    names = [la.name for la in w.layers]
    assert len(names) == 1 + 6 * 6 + 1 and names[0] == "embed" and names[-1] == "head"
    embed, head = w.layers[0], w.layers[-1]
    assert embed.a_diagonal and embed.a_onehot and embed.rows == 64
    # G of the head is 32000^2 x 4 B = 4.1 GB > the preconditioner's default 1 GiB
    assert (head.dim_g, head.g_diagonal, head.a_diagonal) == (32000, True, False)
    assert all(la.dense_dims() for la in w.layers)


class _RowMatmul(nn.Module):
    """y = x Wᵀ with the weight under another name: a layer type the user registers."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 5))

    def forward(self, x):
        return x @ self.w.T


def test_a_user_registered_layer_type_is_modelled():
    from kfac_ext.layers import KFACLayer, register_layer_type, unregister_layer_type

    register_layer_type(_RowMatmul, lambda name, m, dt: [KFACLayer(name, m, dt, weight=m.w, in_dim=5, out_dim=3)])
    try:
        w = workload_of(lambda: nn.Sequential(_RowMatmul()), (4, 5))
    finally:
        unregister_layer_type(_RowMatmul)
    (layer,) = w.layers
    assert (layer.name, layer.dim_a, layer.dim_g, layer.rows) == ("0", 5, 3, 4)


def test_conv_rows_follow_kfac_approx_and_a_conv_tie_counts_each_use():
    def cnn():
        m = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.Flatten(), nn.Linear(75, 2))
        m[1].weight = m[0].weight  # tied: each use is a layer of its own
        return m

    expand = workload_of(cnn, (3, 5, 5))
    reduce = workload_of(cnn, (3, 5, 5), kfac_approx="reduce")
    assert [(la.name, la.rows) for la in expand.layers] == [("0", 25), ("1", 25), ("3", 1)]
    assert [(la.name, la.rows) for la in reduce.layers] == [("0", 1), ("1", 1), ("3", 1)]


def test_a_conv1d_counts_a_row_per_output_position():
    def net():
        return nn.Sequential(nn.Conv1d(3, 4, 3, stride=2), nn.Flatten(), nn.Linear(20, 2))

    expand = workload_of(net, (3, 11))  # L' = (11 - 3) // 2 + 1 = 5 positions
    reduce = workload_of(net, (3, 11), kfac_approx="reduce")
    assert [(la.name, la.dim_a, la.dim_g, la.rows) for la in expand.layers] == [("0", 10, 4, 5), ("2", 21, 2, 1)]
    assert [la.rows for la in reduce.layers] == [1, 1]
