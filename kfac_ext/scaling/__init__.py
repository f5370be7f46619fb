"""A model of the whole distributed K-FAC step, to plan runs past one machine.

- ``workload``: FLOPs, activations and the K-FAC layers the preconditioner registers (its
  layer-type registry) of any ``nn.Module`` (meta device);
- ``network``: alpha-beta collectives; ``profiles``: device rates;
- ``step``: SGD and K-FAC step time and memory per rank, per strategy and intervals,
  with the host work the model's op count sets (``HostCost``);
- ``assign``: the one call into the eigendecomposition assignment (makespan solver);
- ``measure``: this machine (or a GPU) timed robustly; ``profile_cache``: that profile
  kept on disk and reused, keyed by what it is valid for; ``calibrate``: GPU profiles
  from datasheet peaks, the V100 fitted to one published row (``published``);
- ``planner``: the recommended strategy and intervals under a memory limit.

`kfac-ext bench scaling` is the command line (kfac_ext/app/bench.py);
docs/distributed.md has the model's validation.
"""

from kfac_ext.scaling.network import NETWORKS, Network, broadcast_time, ring_allreduce_time
from kfac_ext.scaling.planner import Plan, plan
from kfac_ext.scaling.profiles import DeviceProfile
from kfac_ext.scaling.step import HostCost, Intervals, StepTime, predict, strategies
from kfac_ext.scaling.workload import FactorLayer, Workload, workload_of

__all__ = [
    "NETWORKS",
    "Network",
    "broadcast_time",
    "ring_allreduce_time",
    "Plan",
    "plan",
    "DeviceProfile",
    "HostCost",
    "Intervals",
    "StepTime",
    "predict",
    "strategies",
    "FactorLayer",
    "Workload",
    "workload_of",
]
