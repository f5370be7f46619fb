"""Where a K-FAC step's extra time goes on the digits CNN, against SGD.

The two models of `kfac-ext train`'s default run (same initial weights, same
batches) are trained side by side in one process, one step each in turn (the
order flips every step), so machine drift hits both alike. Per phase
(batch assembly, zero_grad + forward + backward, preconditioner.step(),
optimizer.step()) the median over the steps of each kind: plain K-FAC steps,
factor steps (every 5th: the hooks capture), and eigendecomposition steps
(every 20th, also factor steps; with the default lag 2 the solve runs on the
background thread); SGD's steps at the same positions are listed alike. The
amortised K-FAC step weights the kinds by how often they occur.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/table_step_breakdown.py [--steps 630] [--lag 2]
        [--method eigen|inverse] [--damping 0.1] [--skip-layers [PATTERN ...]]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _machine import describe_machine

from kfac_ext import KFACPreconditioner
from kfac_ext.app.data import load_dataset
from kfac_ext.app.models import build_model
from kfac_ext.app.train_options import DEFAULTS

PHASES = ("batch", "fwd+bwd", "pre.step", "opt.step", "step")
KINDS = ("plain", "factor", "eigh")


def kind_of(step: int, factor_steps: int, inv_steps: int) -> str:
    if step % inv_steps == 0:
        return "eigh"
    return "factor" if step % factor_steps == 0 else "plain"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=630)
    p.add_argument("--lag", type=int, default=DEFAULTS["digits"]["inv_lag_steps"])
    p.add_argument("--method", choices=("eigen", "inverse"), default="eigen")
    p.add_argument("--damping", type=float, default=DEFAULTS["digits"]["damping"])
    p.add_argument(
        "--skip-layers",
        nargs="*",
        default=None,
        help="default: the digits default (Conv2d); the flag alone: every layer",
    )
    a = p.parse_args()
    d = DEFAULTS["digits"]
    skip = d["skip_layers"] if a.skip_layers is None else a.skip_layers
    torch.set_num_threads(1)
    data = load_dataset("digits", None)
    runs = {}
    for name in ("sgd", "kfac"):
        torch.manual_seed(0)
        model = build_model(d["model"], data.num_classes, data.in_channels)
        lr = d["lr_kfac"] if name == "kfac" else d["lr_sgd"]
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=d["weight_decay"])
        pre = (
            KFACPreconditioner(
                model,
                factor_update_steps=d["factor_update_steps"],
                inv_update_steps=d["inv_update_steps"],
                damping=a.damping,
                lr=lr,
                inv_lag_steps=a.lag,
                compute_method=a.method,
                skip_layers=skip,
            )
            if name == "kfac"
            else None
        )
        runs[name] = (model, opt, pre)
    times = {(name, kind): {ph: [] for ph in PHASES} for name in runs for kind in KINDS}
    batch = d["batch_size"]
    per_epoch = len(data.train_y) // batch
    gen = torch.Generator().manual_seed(1)
    for step in range(a.steps):
        i = step % per_epoch
        if i == 0:
            order = torch.randperm(len(data.train_y), generator=gen)
        kind = kind_of(step, d["factor_update_steps"], d["inv_update_steps"])
        for name in ("sgd", "kfac") if step % 2 else ("kfac", "sgd"):
            model, opt, pre = runs[name]
            t0 = time.perf_counter()
            x, y = data.batch(order[i * batch : (i + 1) * batch], True, torch.Generator().manual_seed(step))
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            t2 = time.perf_counter()
            if pre is not None:
                pre.step()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            if step >= 2 * d["inv_update_steps"]:  # skip start-up (first solves are inline)
                rec = times[(name, kind)]
                for ph, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                    rec[ph].append(1e3 * dt)
    print("## K-FAC step breakdown against SGD (digits CNN, defaults of `kfac-ext train`)\n")
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{describe_machine()}, {a.method} method, lag {a.lag}, "
        f"skip_layers {list(skip)}"
    )
    print(f"command: python benchmarks/table_step_breakdown.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print("| run | step kind | steps | " + " | ".join(f"{ph} ms" for ph in PHASES) + " |")
    print("|---|---|---|" + "---|" * len(PHASES))
    sgd_step = statistics.median(v for kind in KINDS for v in times[("sgd", kind)]["step"])
    amortised = 0.0
    counted = sum(len(times[("kfac", kind)]["step"]) for kind in KINDS)
    for (name, kind), rec in sorted(times.items(), key=lambda kv: (KINDS.index(kv[0][1]), kv[0][0])):
        n = len(rec["step"])
        med = {ph: statistics.median(v) for ph, v in rec.items()}
        print(f"| {name} | {kind} | {n} | " + " | ".join(f"{med[ph]:.3f}" for ph in PHASES) + " |")
        if name == "kfac":
            amortised += med["step"] * n / counted
    print()
    print(
        f"K-FAC step, amortised over the kinds: {amortised:.3f} ms against SGD's median "
        f"{sgd_step:.3f} ms: {100 * (amortised / sgd_step - 1):+.0f} %"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
