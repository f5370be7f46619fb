"""Per-device load chart of a placement (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from .graph import Graph
from .objective import Solution, device_breakdown


def plot_loads(graph: Graph, solution: Solution, path) -> None:
    """Stacked bars (compute, transfer) per device, the bottleneck marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, compute, transfer = [], [], []
    for kind, devices in (("accel", solution.placement.accelerators), ("cpu", solution.placement.cpus)):
        for d, nodes in enumerate(devices):
            b = device_breakdown(graph, nodes, on_cpu=(kind == "cpu"))
            names.append(f"{kind}{d}")
            compute.append(b["compute"])
            transfer.append(b["transfer"])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.5))
    xs = range(len(names))
    ax.bar(xs, compute, label="compute")
    ax.bar(xs, transfer, bottom=compute, label="transfer")
    top = max((c + t for c, t in zip(compute, transfer)), default=0.0)
    ax.axhline(top, color="black", linewidth=0.8, linestyle="--", label=f"max load {top:.4g}")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("load (time per sample)")
    what = "max load" if solution.objective == "throughput" else "latency"
    title = f"{solution.method}: {what} {solution.value:.4g}"
    if graph.source:
        title = f"{graph.source.rsplit('/', 1)[-1]} — {title}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
