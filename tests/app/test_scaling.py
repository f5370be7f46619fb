"""The alpha-beta scaling model and `kfac-ext bench scaling`."""
import math

import pytest

from kfac_ext.app import scaling
from kfac_ext.cli import main

NET = scaling.Network("test", alpha=1e-5, bandwidth=1e9)
KERNELS = scaling.KernelModel(eigh_c3=1e-9, eigh_c0=0.0, gemm_flops_per_s=1e10)


def test_resnet50_shapes_match_its_parameter_count():
    shapes = scaling.resnet50_factor_shapes()
    assert len(shapes) == 54 and len({n for _, a, g in shapes for n in (a, g)}) == 13
    # torchvision ResNet-50 has 25,557,032 parameters; 2 per BatchNorm channel are not K-FAC's
    bn_channels = 64 + sum(blocks * (w + w + 4 * w) + 4 * w
                           for w, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)))
    assert sum(a * g for _, a, g in shapes) == 25_557_032 - 2 * bn_channels


def test_alpha_beta_formulas():
    assert scaling.ring_allreduce_time(1e6, 1, NET) == 0.0
    assert scaling.ring_allreduce_time(1e6, 4, NET) == pytest.approx(6 * 1e-5 + 1.5 * 1e-3)
    assert scaling.broadcast_time(1e6, 8, NET) == pytest.approx(3e-5 + 1e-3)


def test_strategies_trade_communication_for_compute():
    shapes = [("a", 65, 32), ("b", 129, 64), ("c", 257, 16), ("d", 33, 128)] * 4
    n = 16
    preds = {name: scaling.predict_step(shapes, n, f, KERNELS, NET, factor_update_steps=1,
                                        inv_update_steps=1)
             for name, f in scaling.strategy_fractions(n).items()}
    comm, hybrid, mem = preds["COMM-OPT"], preds["HYBRID-OPT"], preds["MEM-OPT"]
    assert (comm.grad_workers, hybrid.grad_workers, mem.grad_workers) == (16, 4, 1)
    assert comm.grad_comm == 0.0 and mem.eigen_comm == 0.0
    assert mem.grad_comm > hybrid.grad_comm > 0.0
    # COMM-OPT preconditions every layer on every worker
    assert comm.precond_compute == pytest.approx(
        sum(KERNELS.precondition_time(a, g) for _, a, g in shapes))
    assert mem.precond_compute < comm.precond_compute
    # identical factor traffic: packed triangles, one all-reduce
    packed = sum(m * (m + 1) // 2 for _, a, g in shapes for m in (a, g)) * 4
    assert comm.factor_comm == pytest.approx(scaling.ring_allreduce_time(packed, n, NET))
    # the eigendecomposition makespan is at least the largest factor's
    assert comm.eigen_compute >= KERNELS.eigh_time(257) - 1e-12
    assert math.isclose(comm.total, comm.compute + comm.comm)


def test_measured_kernel_fit_is_positive_and_cubic():
    kernels, samples = scaling.measure_kernels(sizes=(32, 64, 128), repeats=1)
    assert kernels.eigh_c3 > 0 and kernels.eigh_c0 >= 0 and kernels.gemm_flops_per_s > 0
    assert [n for n, _ in samples] == [32, 64, 128]


def test_cli_prints_a_table_and_writes_a_plot(tmp_path, capsys):
    png = tmp_path / "scaling.png"
    assert main(["bench", "scaling", "--workers", "8,1024", "--eigh-sizes", "32,64",
                 "--network", "nvlink", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| 1024 | MEM-OPT | 1 |" in out and "| 8 | COMM-OPT | 8 |" in out
    assert png.stat().st_size > 1000
