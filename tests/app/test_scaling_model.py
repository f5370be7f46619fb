"""The scaling model against the published K-FAC timings (docs/distributed.md, validation)."""

import math
from dataclasses import replace

import pytest

from kfac_ext.scaling import NETWORKS, workload_of
from kfac_ext.scaling.calibrate import (
    CIFAR_INPUT_S,
    CIFAR_STRAGGLER_S,
    FUSION_COPY_FIGURES_S,
    HOROVOD_CYCLE_2020_S,
    HOROVOD_FUSION_COPY_2020_S,
    HOROVOD_HOOK_PY_S,
    HOROVOD_POLL_2020_S,
    HOST_2020,
    MEASURED,
    SYMEIG_2020_LATENCY_S,
    V100_CALIBRATION,
    calibrate,
    gpu_profile,
)
from kfac_ext.scaling.models import resnet32_cifar, resnet50
from kfac_ext.scaling.published import CALIBRATION_ROW, ROWS
from kfac_ext.scaling.step import HostCost
from kfac_ext.scaling.validation import SGD_TOLERANCE, check_rows, sc20_saving, sc20_table

NET = NETWORKS["ib100"]


@pytest.fixture(scope="module")
def works():
    return {
        "resnet50": workload_of(resnet50, (3, 224, 224)),
        "resnet32_cifar": workload_of(resnet32_cifar, (3, 32, 32)),
    }


@pytest.fixture(scope="module")
def checks(works):
    return {c.key: c for c in check_rows(works, NET)}


def test_published_rows_convert_to_the_issues_ms_per_iteration():
    rows = {r.key: r for r in ROWS}
    assert rows["resnet50-32"].iterations == 1252  # ceil(1281167 / 1024)
    assert rows["resnet50-32"].overhead_s[0] * 1e3 == pytest.approx(293.9, abs=0.1)
    assert [round(o * 1e3) for o in rows["resnet50-64"].overhead_s] == [666, 302, 302]
    # the 16-GPU SGD rerun of results.md's last edit (14:30, not 15:00): the issue's 372 / 396
    assert rows["resnet50-16"].sgd_s * 1e3 == pytest.approx(347.6, abs=0.1)  # 870 s / 2503 iterations
    assert [round(o * 1e3) for o in rows["resnet50-16"].overhead_s] == [372, 396]
    assert [round(o * 1e3) for o in rows["cifar-1"].overhead_s] == [139]
    assert [round(o * 1e3) for o in rows["cifar-4"].overhead_s] == [77]


def test_the_v100_constants_are_the_fit_to_the_calibration_row(works):
    row = next(r for r in ROWS if r.key == CALIBRATION_ROW)
    cal = calibrate(row, works[row.model], NET)
    assert cal.k == pytest.approx(V100_CALIBRATION["k"], rel=1e-3)
    assert cal.host_s == pytest.approx(V100_CALIBRATION["host_s"], rel=1e-3)
    # dense work lands between the H200's measured 45 % and the peak
    assert 0.45 < gpu_profile("v100", cal.k).flops_per_s / 15.7e12 < 1.0


@pytest.mark.parametrize("key", ["resnet50-16", "resnet50-64"])
def test_resnet50_rows_hold_within_the_issues_ratios(checks, key):
    c = checks[key]
    assert 1 / SGD_TOLERANCE <= c.sgd_ratio <= SGD_TOLERANCE
    # the 64-GPU row has three runs: 666 ms once, 302 ms twice; the model matches the
    # 302, which agrees with the 16- and 32-GPU rows
    best = min(c.overhead_ratios, key=lambda r: abs(r - 1))
    assert 1 / c.tolerance <= best <= c.tolerance


def test_calibration_row_is_reproduced(checks):
    c = checks[CALIBRATION_ROW]
    assert c.calibration and c.overhead_ratios[0] == pytest.approx(1.0, rel=1e-3)
    assert c.sgd_ratio == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("key", ["cifar-1", "cifar-4"])
def test_cifar_rows_within_2x(checks, key):
    # with the 2020 stack's measured symeig latency (SYMEIG_2020_LATENCY_S, #10172)
    c = checks[key]
    assert 1 / c.tolerance <= c.overhead_ratios[0] <= c.tolerance


def test_cifar_rows_rest_on_the_2020_symeig_latency(works):
    """The CIFAR rows hold only with the published per-call latency of 2020's symeig;
    with today's cuSOLVER latency (or #22573's 1.8 ms per batched matrix) they miss,
    while the ResNet-50 rows hardly move (docs/distributed.md, validation)."""
    assert SYMEIG_2020_LATENCY_S == 19.1e-3  # pytorch/pytorch#10172, not a fit
    for latency in (MEASURED["eigh_latency_s"] / V100_CALIBRATION["k"], 1.8e-3):
        other = {c.key: c for c in check_rows(works, NET, latency)}
        assert other["cifar-1"].overhead_ratios[0] < 0.5 and other["cifar-4"].overhead_ratios[0] < 0.5
        assert other["resnet50-32"].overhead_ratios[0] == pytest.approx(1.0, abs=0.02)


def test_sc20_saving_arithmetic_and_interval_trend(works):
    assert sc20_saving(1.0) == pytest.approx(1 - 55 / 90)
    assert sc20_saving(90 / 55) == pytest.approx(0.0)
    table = sc20_table(works["resnet50"], NET)
    savings = [r["saving"] for r in table]
    assert savings == sorted(savings)  # sparser updates, cheaper steps
    assert savings[0] < 0 < savings[-1]  # every-step factors lose, sparse ones win


def _horovod_blocking(enqueue, cycle, run, poll):
    """Horovod 0.19.0's loop, directly: cycles start at multiples of ``cycle`` (RunLoopOnce
    sleeps until the previous start + the cycle time), an op enqueued at ``enqueue`` runs
    in the next cycle and is done ``run`` after its start; the caller polls at once and then
    every ``poll`` (WaitAndClear) and returns at the first poll that finds it done."""
    done = math.floor(enqueue / cycle + 1) * cycle + run
    return enqueue + math.ceil((done - enqueue) / poll - 1e-9) * poll


@pytest.mark.parametrize("poll", [1.0e-3, 1.07e-3])  # sleep_for(1 ms) may oversleep
def test_horovod_waits_by_simulation_and_by_hand(poll):
    """A blocking collective at an unknown phase of the 5 ms cycle returns cycle/2 + poll/2
    (+ its run time) later on average; one enqueued as soon as the previous returned, a whole
    cycle later. Simulated over 2,000 phases, against HOST_2020's closed forms."""
    cycle, run, gap = HOROVOD_CYCLE_2020_S, 0.05e-3, 0.02e-3
    first, chained = [], []
    for i in range(2000):
        e1 = 1.0 + cycle * i / 2000
        r1 = _horovod_blocking(e1, cycle, run, poll)
        r2 = _horovod_blocking(r1 + gap, cycle, run, poll)
        first.append(r1 - e1)
        chained.append(r2 - (r1 + gap))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    assert mean(first) == pytest.approx(cycle / 2 + poll / 2 + run, abs=0.03e-3)
    assert mean(chained) == pytest.approx(cycle - gap, abs=0.1e-3)
    assert HOROVOD_POLL_2020_S == 1e-3  # horovod v0.19.0 torch/mpi_ops_v2.cc WaitAndClear
    assert HOST_2020.sync_s == pytest.approx(3.0e-3) and HOST_2020.chained_sync_s == pytest.approx(5.0e-3)


def test_cifar_sgd_step_is_host_work_and_input(works):
    """The CIFAR SGD step is host-bound: ResNet-32's 95 parameter tensors (31 convs, 31
    batch norms' weight and bias, the head's two) x 6 optimizer kernels and its counted
    forward and backward ops at 20 us (a V100 launch) outweigh its 4 ms of FLOPs; Horovod
    0.19.0's blocking collectives (the accuracy metric 3 ms, the loss metric right after it
    5 ms, the gradients 3 ms on 4 GPUs and one div_ per gradient, 1.9 ms); and the published
    script built every batch in the training process (num_workers=0), measured here at
    CIFAR_INPUT_S. All sourced or measured, not fitted: 1 GPU within 1.5x of the published
    step, 4 GPUs still short of 1/1.5 (docs/distributed.md, validation). This fails when a
    change moves either."""
    assert (HOST_2020.per_op_s, HOST_2020.syncs, HOST_2020.chained_syncs) == (20e-6, 1, 1)
    w = works["resnet32_cifar"]
    assert w.param_tensors == 95
    assert HOST_2020.ops(w) == w.forward_ops + w.backward_ops + 6 * 95
    # by hand: 3 + 5 ms on 1 GPU; 3 + 3 + 5 ms and 95 x 20 us on 4
    assert HOST_2020.sync_time(1) == pytest.approx(8.0e-3)
    assert HOST_2020.sync_time(4) + HOST_2020.grad_release_time(w, 4) == pytest.approx(11.0e-3 + 1.9e-3)
    # Horovod's hook Python, measured on this CPU (benchmarks/table_scaling_hook_check.py):
    # 95 x 11.7 us = 1.11 ms on 4 GPUs, none on 1
    assert HOST_2020.grad_hook_s == HOROVOD_HOOK_PY_S == 11.7e-6
    assert HOST_2020.hook_time(w, 1) == 0.0 and HOST_2020.hook_time(w, 4) == pytest.approx(1.1115e-3)
    checks = {c.key: c for c in check_rows(works, NET)}
    no_input = {c.key: c for c in check_rows(works, NET, cifar_input_s=0.0)}
    bare = {c.key: c for c in check_rows(works, NET, host_cost=HostCost(), host_s=0.3152, cifar_input_s=0.0)}
    for key in ("cifar-1", "cifar-4"):
        assert bare[key].sgd_ratio < 0.07
        assert 0.2 < no_input[key].sgd_ratio < 0.4
        # the input pipeline adds to the step one for one: nothing overlaps it
        added = (checks[key].sgd_predicted - no_input[key].sgd_predicted) - CIFAR_INPUT_S
        assert added == pytest.approx(0.0, abs=1e-12)
        assert checks[key].overhead_predicted == pytest.approx(no_input[key].overhead_predicted)
    assert 1 / SGD_TOLERANCE <= checks["cifar-1"].sgd_ratio < 0.72
    # 55.1 ms of 86.7 (23.6 input + 17.3 ops + 1.1 hooks + 11 waits + 1.9 div_ + 0.3
    # all-reduce): the open miss, 2.7 ms short of 57.8
    assert checks["cifar-4"].sgd_predicted == pytest.approx(55.1e-3, abs=0.05e-3)
    assert 0.6 < checks["cifar-4"].sgd_ratio < 1 / SGD_TOLERANCE
    for key in ("resnet50-16", "resnet50-64"):  # the fitted host time takes it all (to its rounding)
        assert checks[key].sgd_ratio == pytest.approx(bare[key].sgd_ratio, rel=1e-4)


def test_the_cifar_straggler_term_adds_one_for_one_and_is_not_measured(works):
    """A step on N > 1 GPUs waits for the slowest rank's input (check_rows adds
    cifar_straggler_s[N] to the CIFAR rows' host time); it could not be measured on this VM
    (calibrate.CIFAR_STRAGGLER_S's comment), so the model carries 0."""
    assert CIFAR_STRAGGLER_S == {4: 0.0}
    base = {c.key: c for c in check_rows(works, NET)}
    more = {c.key: c for c in check_rows(works, NET, cifar_straggler_s={4: 1e-3})}
    assert more["cifar-4"].sgd_predicted - base["cifar-4"].sgd_predicted == pytest.approx(1e-3, abs=1e-12)
    for key in ("cifar-1", "resnet50-16", "resnet50-32", "resnet50-64"):
        assert more[key].sgd_predicted == base[key].sgd_predicted
    assert more["cifar-4"].overhead_predicted == pytest.approx(base["cifar-4"].overhead_predicted)
    with pytest.raises(ValueError, match="straggler"):
        check_rows(works, NET, cifar_straggler_s={})


def test_fusion_buffer_copies_by_hand_and_no_sourced_cost_closes_the_row(works):
    """Horovod 0.19.0 copies each gradient into the fusion buffer and back, one cudaMemcpyAsync
    each way: the copies in precede the all-reduce A, the copies out overlap it, so the exchange
    takes t + max(A, t), t = 95 x c, instead of A. No per-call cost of the 2020 stack was found
    (calibrate's comment): the model carries 0, and the largest figure found does not close
    the 4-GPU CIFAR row."""
    w = works["resnet32_cifar"]
    assert HOST_2020.fusion_copy_s == HOROVOD_FUSION_COPY_2020_S == 0.0
    hc = HostCost(fusion_copy_s=10e-6)
    # t = 0.95 ms; A = 0.2 ms < t: 0.95 + 0.95 - 0.2 = 1.7 ms; A = 2 ms > t: t alone, 0.95 ms
    assert hc.fusion_copy_time(w, 4, 0.2e-3) == pytest.approx(1.7e-3)
    assert hc.fusion_copy_time(w, 4, 2e-3) == pytest.approx(0.95e-3)
    assert hc.fusion_copy_time(w, 1, 0.2e-3) == 0.0  # one rank: no all-reduce, no copies
    assert HOST_2020.fusion_copy_time(w, 4, 0.2e-3) == 0.0
    with pytest.raises(ValueError, match="fusion_copy_s"):
        HostCost(fusion_copy_s=-1e-6)
    base = {c.key: c for c in check_rows(works, NET)}
    worst = max(FUSION_COPY_FIGURES_S.values())
    assert worst == 12.7e-6
    more = {c.key: c for c in check_rows(works, NET, host_cost=replace(HOST_2020, fusion_copy_s=worst))}
    assert more["cifar-1"].sgd_predicted == base["cifar-1"].sgd_predicted
    assert more["cifar-4"].sgd_predicted - base["cifar-4"].sgd_predicted == pytest.approx(2.16e-3, abs=0.01e-3)
    assert more["cifar-4"].sgd_ratio < 1 / SGD_TOLERANCE  # still short (by 0.5 ms)
