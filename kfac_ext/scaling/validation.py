"""The model against the published timings, and the SC20 headline from its step times.

``check_rows`` predicts every row of ``published.ROWS`` with the V100 profile
calibrated on ``published.CALIBRATION_ROW``, kfac-pytorch-2020's exchange
(``calibrate.KFAC_LW``) and its software stack's latency per eigendecomposition
(``calibrate.SYMEIG_2020_LATENCY_S``, a published measurement, not a fit), and the
host work every row's model sets (``calibrate.HOST_2020``: its op count at a sourced
cost per op, and the training loop's blocking collectives). The fitted host time
belongs to the ImageNet runs; the CIFAR rows' host time is their input pipeline, which
the published script ran in the training process (``calibrate.CIFAR_INPUT_S``, measured
on this CPU, not fitted), and on N > 1 GPUs the wait for the slowest rank's input each
step (``calibrate.CIFAR_STRAGGLER_S``, from the measured per-iteration distribution).

``sc20_saving(r)``: with K-FAC at 55 epochs and SGD at 90 (SC20's epochs to 75.9 %),
a K-FAC step r times SGD's saves 1 - (55/90) r of SGD's time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from kfac_ext.scaling.calibrate import (
    CIFAR_INPUT_S,
    CIFAR_STRAGGLER_S,
    HOST_2020,
    KFAC_LW,
    SYMEIG_2020_LATENCY_S,
    V100_CALIBRATION,
    gpu_profile,
)
from kfac_ext.scaling.network import Network
from kfac_ext.scaling.published import CALIBRATION_ROW, ROWS, SC20_EPOCHS
from kfac_ext.scaling.step import HostCost, Intervals, predict
from kfac_ext.scaling.workload import Workload

__all__ = ["RowCheck", "check_rows", "sc20_saving", "sc20_table", "v100_2020"]

# The targets: K-FAC overhead within these factors of the published figure.
TOLERANCE = {"resnet50": 1.5, "resnet32_cifar": 2.0}
SGD_TOLERANCE = 1.5


@dataclasses.dataclass(frozen=True)
class RowCheck:
    """One published row against the model: SGD step and K-FAC overhead, published and predicted."""

    key: str
    calibration: bool
    sgd_published: float
    sgd_predicted: float
    overhead_published: tuple[float, ...]
    overhead_predicted: float
    tolerance: float

    @property
    def sgd_ratio(self) -> float:
        return self.sgd_predicted / self.sgd_published

    @property
    def overhead_ratios(self) -> tuple[float, ...]:
        return tuple(self.overhead_predicted / o for o in self.overhead_published)


def v100_2020(eigh_latency_s: float = SYMEIG_2020_LATENCY_S):
    """The calibrated V100 with the eigendecomposition latency of the published runs' stack."""
    return gpu_profile("v100", V100_CALIBRATION["k"], eigh_latency_s)


def check_rows(
    works: Mapping[str, Workload],
    net: Network,
    eigh_latency_s: float = SYMEIG_2020_LATENCY_S,
    host_cost: HostCost = HOST_2020,
    host_s: float | None = None,
    cifar_input_s: float = CIFAR_INPUT_S,
    cifar_straggler_s: Mapping[int, float] = CIFAR_STRAGGLER_S,
) -> list[RowCheck]:
    """``works`` maps ``Row.model`` ("resnet50", "resnet32_cifar") to its workload;
    ``eigh_latency_s`` the latency per eigendecomposition (default: 2020's symeig);
    ``host_cost`` the host work the model counts, ``host_s`` the ImageNet rows' fitted
    host time that goes with it (default: ``V100_CALIBRATION``'s, fitted with HOST_2020);
    ``cifar_input_s`` the CIFAR rows' input pipeline per step (default: measured);
    ``cifar_straggler_s`` maps N > 1 to the wait for the slowest of N ranks' input each
    step (the metrics' all-reduces are a barrier; default: measured), added to it."""
    profile = v100_2020(eigh_latency_s)
    fitted = V100_CALIBRATION["host_s"] if host_s is None else host_s
    out = []
    for row in ROWS:
        if row.model == "resnet50":
            host = fitted
        elif row.gpus == 1:
            host = cifar_input_s
        elif row.gpus in cifar_straggler_s:
            host = cifar_input_s + cifar_straggler_s[row.gpus]
        else:
            raise ValueError(f"row {row.key}: no straggler term for {row.gpus} ranks in {dict(cifar_straggler_s)}")
        step = predict(
            works[row.model], row.gpus, profile, net, batch=row.batch, host_s=host, host_cost=host_cost, **KFAC_LW
        )
        out.append(
            RowCheck(
                row.key,
                row.key == CALIBRATION_ROW,
                row.sgd_s,
                step.sgd,
                row.overhead_s,
                step.kfac_overhead,
                TOLERANCE[row.model],
            )
        )
    return out


def sc20_saving(step_ratio: float) -> float:
    """SC20's time saved by K-FAC against SGD, from the paper's epochs and K-FAC's step over SGD's."""
    return 1.0 - SC20_EPOCHS["kfac"] / SC20_EPOCHS["sgd"] * step_ratio


def sc20_table(
    work: Workload,
    net: Network,
    gpus: int = 64,
    batch: int = 32,
    intervals=((1, 10), (10, 100), (50, 500), (100, 1000)),
) -> list[dict]:
    """Step ratio and time saving of K-FAC (kfac-lw exchange, calibrated V100 and host time)
    for several update intervals."""
    profile = v100_2020()
    rows = []
    for fi, ii in intervals:
        kw = dict(KFAC_LW, intervals=Intervals(fi, ii))
        step = predict(
            work, gpus, profile, net, batch=batch, host_s=V100_CALIBRATION["host_s"], host_cost=HOST_2020, **kw
        )
        r = step.kfac / step.sgd
        rows.append(
            {"factor": fi, "inv": ii, "sgd_s": step.sgd, "kfac_s": step.kfac, "step_ratio": r, "saving": sc20_saving(r)}
        )
    return rows
