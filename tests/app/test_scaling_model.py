"""The scaling model against the published K-FAC timings (docs/distributed.md, validation)."""

import pytest

from kfac_ext.scaling import NETWORKS, workload_of
from kfac_ext.scaling.calibrate import (
    CIFAR_INPUT_S,
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


def test_cifar_sgd_step_is_host_work_and_input_and_still_short(works):
    """The CIFAR SGD step is host-bound: ResNet-32's 95 parameter tensors (31 convs, 31
    batch norms' weight and bias, the head's two) x 6 optimizer kernels and its counted
    forward and backward ops at 20 us (a V100 launch) outweigh its 4 ms of FLOPs, Horovod's
    blocking collectives wait 2.5 ms each, and the published script built every batch in
    the training process (num_workers=0), measured here at CIFAR_INPUT_S. All sourced or
    measured, not fitted: the prediction rises from 0.05-0.06x of the published step to
    ~0.3x with the host work and ~0.56-0.65x with the input, still short of 1/1.5
    (docs/distributed.md, validation). This fails when a change closes the gap."""
    assert (HOST_2020.per_op_s, HOST_2020.sync_s, HOST_2020.syncs) == (20e-6, 2.5e-3, 2)
    w = works["resnet32_cifar"]
    assert w.param_tensors == 95
    assert HOST_2020.ops(w) == w.forward_ops + w.backward_ops + 6 * 95
    checks = {c.key: c for c in check_rows(works, NET)}
    no_input = {c.key: c for c in check_rows(works, NET, cifar_input_s=0.0)}
    bare = {c.key: c for c in check_rows(works, NET, host_cost=HostCost(), host_s=0.3152, cifar_input_s=0.0)}
    for key in ("cifar-1", "cifar-4"):
        assert bare[key].sgd_ratio < 0.07
        assert 0.2 < no_input[key].sgd_ratio < 0.35
        # the input pipeline adds to the step one for one: nothing overlaps it
        added = (checks[key].sgd_predicted - no_input[key].sgd_predicted) - CIFAR_INPUT_S
        assert added == pytest.approx(0.0, abs=1e-12)
        assert 0.5 < checks[key].sgd_ratio < 1 / SGD_TOLERANCE
        assert checks[key].overhead_predicted == pytest.approx(no_input[key].overhead_predicted)
    for key in ("resnet50-16", "resnet50-64"):
        assert checks[key].sgd_ratio == pytest.approx(bare[key].sgd_ratio, rel=1e-6)
