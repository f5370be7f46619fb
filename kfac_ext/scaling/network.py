"""Alpha-beta costs of the collectives K-FAC uses.

A message of S bytes costs alpha + S/B. A ring all-reduce on N ranks sends
2(N-1) messages of S/N bytes one after another: 2(N-1) alpha + 2(N-1)/N S/B.
A pipelined tree broadcast pays log2(N) latencies and the payload once. Both
are idealised: no congestion, and broadcasts from different sources do not
share links.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Network", "NETWORKS", "ring_allreduce_time", "broadcast_time"]


@dataclasses.dataclass(frozen=True)
class Network:
    """An alpha-beta network: a latency per message and a bandwidth per direction."""

    name: str
    alpha: float  # seconds per message (latency)
    bandwidth: float  # bytes per second per direction


# ib100: 100 Gb/s EDR InfiniBand, the interconnect of TACC Longhorn where the SC20
# paper's V100 runs were made (Pauloski et al. 2020, sec. V); nvlink: an NVSwitch
# fabric (A100/H100 nodes), 300 GB/s per direction per GPU.
NETWORKS = {
    "ib100": Network("InfiniBand 100 Gb/s", alpha=5e-6, bandwidth=12.5e9),
    "nvlink": Network("NVLink (NVSwitch)", alpha=3e-6, bandwidth=300e9),
}


def ring_allreduce_time(nbytes: float, workers: int, net: Network) -> float:
    """Seconds of a ring all-reduce of ``nbytes`` over ``workers``: 2(n-1) messages, 2(n-1)/n of the bytes each way."""
    if workers <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (workers - 1) * net.alpha + 2 * (workers - 1) / workers * nbytes / net.bandwidth


def broadcast_time(nbytes: float, workers: int, net: Network) -> float:
    """Pipelined tree broadcast: log2(P) latencies, the payload once at link speed."""
    if workers <= 1 or nbytes <= 0:
        return 0.0
    return math.ceil(math.log2(workers)) * net.alpha + nbytes / net.bandwidth
