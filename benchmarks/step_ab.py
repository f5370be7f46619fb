"""K-FAC step time of this tree against another git revision's Python, in one process.

Two preconditioners on the same model and batches, one with the methods of
``KFACPreconditioner`` and of the layers' capture/gradient code taken from
``--old-ref`` (``git show REF:kfac_ext/...``, bound onto that instance), the other
with this tree's; SGD at B 32 beside them as the reference; all three stepped in
one round-robin loop as ``batch_scaling.round_robin_times`` does (the order
reversed every other round, means over whole update periods). Both K-FAC runs
must end with equal parameters (a change meant to keep results bitwise equal).
Only Python changes are compared: the C++ ops are this tree's for both.

    OMP_WAIT_POLICY=PASSIVE nice -n 5 python benchmarks/step_ab.py --name kfac-lazy --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batch_scaling import autoencoder_problem, make_optimizer, timed_step, whole_periods  # noqa: E402

# The layer methods bound from the old revision (those of the capture and gradient paths).
LAYER_METHODS = [
    "has_grad",
    "grad_tensors",
    "bias_rows",
    "_forward_hook",
    "_grad_hook",
    "_add_activation",
    "_add_gradient",
    "add_activation_rows",
    "add_gradient_rows",
    "rows",
]


def _old_module(ref: str, path: str, name: str) -> types.ModuleType:
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout
    src = subprocess.run(
        ["git", "show", f"{ref}:{path}"], capture_output=True, text=True, check=True, cwd=root.strip()
    ).stdout
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(src, f"{ref}:{path}", "exec"), module.__dict__)
    return module


def bind_old(pre, old_pre: types.ModuleType, old_base: types.ModuleType) -> None:
    """Give ``pre`` and its layers the old revision's methods (forward hooks re-registered)."""
    for layer in pre.layers:
        for n in LAYER_METHODS:
            setattr(layer, n, types.MethodType(getattr(old_base.KFACLayer, n), layer))
        # A revision from before the hook was parked while not capturing keeps it on.
        park = getattr(old_base.KFACLayer, "_can_park", lambda self: False)
        layer._can_park = types.MethodType(park, layer)
        for h in layer._handles:
            h.remove()
        layer._handles = [layer.module.register_forward_hook(layer._forward_hook)]
    for n, f in vars(old_pre.KFACPreconditioner).items():
        if n.startswith("__") or not callable(f) and not isinstance(f, staticmethod):
            continue
        setattr(pre, n, f.__func__ if isinstance(f, staticmethod) else types.MethodType(f, pre))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-ref", default="main")
    ap.add_argument("--name", default="kfac-lazy", help="batch_scaling's K-FAC name (kfac-lazy, kfac-fF-iI)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--relative-damping", action="store_true", help="relative λ, factor decay 0.5")
    ap.add_argument("--reps", type=int, default=400, help="rounded up to whole update periods")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the thread's CPU time (time.thread_time), less moved by other processes on a loaded machine",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    old_base = _old_module(a.old_ref, "kfac_ext/layers/base.py", "kfac_ext.layers._ab_old_base")
    old_pre = _old_module(a.old_ref, "kfac_ext/preconditioner.py", "kfac_ext._ab_old_preconditioner")
    problem = autoencoder_problem()
    kfac = dict(lr=0.025, damping=0.03)
    if a.relative_damping:
        kfac.update(relative_damping=True, factor_decay=0.5)
    configs = [("sgd", dict(lr=0.04), 32), (a.name, kfac, a.batch), (a.name, dict(kfac), a.batch)]
    runs = []
    for k, (name, setting, batch) in enumerate(configs):
        torch.manual_seed(0)
        model = problem.make_model()
        opt, pre = make_optimizer(name, model, problem, setting, batch)
        if k == 1:
            bind_old(pre, old_pre, old_base)
        runs.append((model, opt, pre, torch.Generator().manual_seed(batch), batch, []))
    reps = whole_periods(a.reps, [a.name])
    for i in range(reps + 3):
        for model, opt, pre, gen, batch, times in runs if i % 2 == 0 else runs[::-1]:
            if a.clock == "wall":
                t = timed_step(problem, model, opt, pre, batch, gen)
            else:  # timed_step's work, timed by the thread's CPU clock
                x, y = problem.sample(batch, gen)
                t0 = time.thread_time()
                opt.zero_grad(set_to_none=True)
                problem.loss(model(x), y).backward()
                if pre is not None:
                    pre.step()
                opt.step()
                t = time.thread_time() - t0
            if i >= 3:
                times.append(t)
    sgd, old, new = (statistics.fmean(r[5]) * 1e3 for r in runs)
    equal = all(torch.equal(x, y) for x, y in zip(runs[1][0].parameters(), runs[2][0].parameters()))
    out = {
        "config": f"{a.name} B{a.batch} {kfac}",
        "clock": a.clock,
        "steps": reps,
        "sgd_b32_ms": round(sgd, 3),
        "old_ms": round(old, 3),
        "new_ms": round(new, 3),
        "old_over_sgd": round(old / sgd, 3),
        "new_over_sgd": round(new / sgd, 3),
        "new_over_old": round(new / old, 3),
        "params_equal": equal,
        "load": os.getloadavg()[0],
    }
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
