"""The scaling model against the published K-FAC timings, and the SC20 headline.

Rows: gpauloski/kfac_pytorch branch kfac-lw, docs/results.md (kfac_ext/scaling/published.py
converts them to ms per iteration). Model: the V100 profile calibrated on the
resnet50-32 row (kfac_ext/scaling/calibrate.py), kfac-pytorch-2020's exchange, and the
2020 stack's latency per eigendecomposition (calibrate.SYMEIG_2020_LATENCY_S, from
pytorch/pytorch#10172). A second table shows the K-FAC overhead ratios under other
per-call latencies: the H200's cuSOLVER one over k, and #22573's 1.8 ms per matrix.

    python benchmarks/table_scaling_validation.py
"""

import sys

import torch  # noqa: F401  (kfac_ext/__init__ loads the op library, which needs libtorch)
from _common import machine_line

from kfac_ext.scaling import NETWORKS, workload_of
from kfac_ext.scaling.calibrate import MEASURED, SYMEIG_2020_LATENCY_S, V100_CALIBRATION
from kfac_ext.scaling.models import resnet32_cifar, resnet50
from kfac_ext.scaling.validation import check_rows, sc20_table, v100_2020


def _ms(values) -> str:
    return " / ".join(f"{v * 1e3:.0f}" for v in values)


def main() -> int:
    net = NETWORKS["ib100"]
    works = {
        "resnet50": workload_of(resnet50, (3, 224, 224)),
        "resnet32_cifar": workload_of(resnet32_cifar, (3, 32, 32)),
    }
    v100 = v100_2020()
    print(f"{machine_line()}; `python {' '.join(sys.argv)}`")
    print(
        f"V100 calibrated: k = {V100_CALIBRATION['k']}, dense {v100.flops_per_s / 1e12:.2f} "
        f"TFLOP/s, eigh {v100.eigh_latency_s * 1e3:.3g} ms (2020 symeig) + 9n^3 at "
        f"{v100.eigh_flops_per_s / 1e12:.2f} TFLOP/s, host {V100_CALIBRATION['host_s'] * 1e3:.0f}"
        f" ms/step (ImageNet rows only); {net.name}\n"
    )
    print(
        "| row | SGD ms: published | predicted | ratio | K-FAC − SGD ms: published | predicted "
        "| ratio | overhead target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for c in check_rows(works, net):
        ratios = " / ".join(f"{r:.2f}" for r in c.overhead_ratios)
        held = any(1 / c.tolerance <= r <= c.tolerance for r in c.overhead_ratios)
        tag = "calibration" if c.calibration else f"within {c.tolerance:g}x: {'yes' if held else 'NO'}"
        print(
            f"| {c.key} | {c.sgd_published * 1e3:.0f} | {c.sgd_predicted * 1e3:.0f} "
            f"| {c.sgd_ratio:.2f} | {_ms(c.overhead_published)} "
            f"| {c.overhead_predicted * 1e3:.0f} | {ratios} | {tag} |"
        )
    latencies = {
        f"{MEASURED['eigh_latency_s'] / V100_CALIBRATION['k'] * 1e3:.2f} ms (H200 cuSOLVER / k)": MEASURED[
            "eigh_latency_s"
        ]
        / V100_CALIBRATION["k"],
        "1.8 ms (#22573, per matrix in a batch)": 1.8e-3,
        f"{SYMEIG_2020_LATENCY_S * 1e3:.3g} ms (#10172, one call)": SYMEIG_2020_LATENCY_S,
    }
    print("\nK-FAC − SGD ratio (predicted / published) per eigendecomposition latency (k and host as above)\n")
    print("| row | " + " | ".join(latencies) + " |")
    print("|---|" + "---:|" * len(latencies))
    by_latency = [check_rows(works, net, lat) for lat in latencies.values()]
    for i, c in enumerate(by_latency[0]):
        cells = [" / ".join(f"{r:.2f}" for r in checks[i].overhead_ratios) for checks in by_latency]
        print(f"| {c.key} | " + " | ".join(cells) + " |")
    print("\nSC20 headline, 64 V100s, batch 32: time to 75.9 % = epochs x step (K-FAC 55, SGD 90 epochs)\n")
    print("| factors every | eigh every | SGD ms | K-FAC ms | K-FAC / SGD step | time saved |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in sc20_table(works["resnet50"], net):
        print(
            f"| {r['factor']} | {r['inv']} | {r['sgd_s'] * 1e3:.0f} | {r['kfac_s'] * 1e3:.0f} "
            f"| {r['step_ratio']:.3f} | {r['saving']:.1%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
