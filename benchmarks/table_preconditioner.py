"""KFACPreconditioner step cost on CIFAR ResNet-20 and a wide MLP, vs SGD and plain torch.

One training step = zero_grad + forward + cross-entropy + backward
[+ preconditioner.step()] + SGD step. Rows, each as a median over --reps
steps, interleaved so every row sees the same machine load:

  sgd            plain SGD step
  kfac_full      factors + eigendecompositions every step
  kfac_factors   factors every step, no eigendecomposition (stale basis)
  kfac_precond   neither (hooks idle, only the preconditioning itself)
  amortised      factors every 10, eigh every 100 steps: the weighted mean
                 (1*full + 9*factors + 90*precond) / 100 of the measured rows,
                 i.e. extrapolated from component times (pass --amortised-steps N
                 to also time N real steps of that schedule, interleaved with SGD
                 steps, whose mean is then the SGD column of that row)

for kfac_ext (fused ops) and for the same K-FAC loop written with plain torch
ops (unfold + mm factors, torch.linalg.eigh per factor, four matmuls and a
division per layer). Ratios are against the SGD step of the same run; "x SGD,
paired" is the median over reps of each K-FAC step divided by the SGD step
of the same rep (steadier on a shared machine).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/table_preconditioner.py [--reps 5] [--models resnet20,mlp]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _machine import describe_machine
from torch import nn

import kfac_ext

RATIOS = (("kfac_full", 1), ("kfac_factors", 9), ("kfac_precond", 90))


class PlainTorchKFAC:
    """The same K-FAC step written with plain torch ops (the comparison row)."""

    def __init__(self, model, damping=0.001, factor_decay=0.95, kl_clip=0.001, lr=0.1):
        self.damping, self.decay, self.kl_clip, self.lr = damping, factor_decay, kl_clip, lr
        self.layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        self.state = {m: {} for m in self.layers}
        self.update_factors = self.update_eigens = True
        for m in self.layers:
            m.register_forward_hook(self._fwd)

    def _fwd(self, m, args, out):
        if not (self.update_factors and torch.is_grad_enabled()):
            return
        x = args[0].detach()
        if isinstance(m, nn.Conv2d):
            cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
            t = cols.shape[2]
            a = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        else:
            t, a = 1, x.reshape(-1, x.shape[-1])
        if m.bias is not None:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], 1)
        a = a / t
        self._running(m, "A", a.T @ a / a.shape[0])

        def grad_hook(g, m=m, t=t):
            g = g.detach()
            g = g.transpose(1, -1).reshape(-1, g.shape[1]) / t if g.dim() == 4 else g.reshape(-1, g.shape[-1])
            self._running(m, "G", g.T @ g / g.shape[0])

        out.register_hook(grad_hook)

    def _running(self, m, key, batch):
        old = self.state[m].get(key)
        self.state[m][key] = batch if old is None else old * self.decay + batch * (1 - self.decay)

    @torch.no_grad()
    def step(self):
        precond, grads = [], []
        for m in self.layers:
            s = self.state[m]
            if self.update_eigens or "QA" not in s:
                s["dA"], s["QA"] = torch.linalg.eigh(s["A"])
                s["dG"], s["QG"] = torch.linalg.eigh(s["G"])
            g = m.weight.grad.reshape(m.weight.shape[0], -1)
            if m.bias is not None:
                g = torch.cat([g, m.bias.grad.reshape(-1, 1)], 1)
            v = s["QG"].T @ g @ s["QA"]
            v = v / (s["dG"].clamp(min=0)[:, None] * s["dA"].clamp(min=0)[None, :] + self.damping)
            precond.append(s["QG"] @ v @ s["QA"].T)
            grads.append(g)
        vg = sum((p * g).sum() for p, g in zip(precond, grads)) * self.lr**2
        nu = min(1.0, (self.kl_clip / abs(float(vg))) ** 0.5) if float(vg) != 0 else 1.0
        for m, p in zip(self.layers, precond):
            p = p * nu
            if m.bias is not None:
                m.weight.grad.copy_(p[:, :-1].reshape(m.weight.shape))
                m.bias.grad.copy_(p[:, -1])
            else:
                m.weight.grad.copy_(p.reshape(m.weight.shape))


def _models(names):
    from kfac_ext.app.models import resnet_cifar

    out = {}
    if "resnet20" in names:
        out["ResNet-20, batch 128, 3x32x32"] = (lambda: resnet_cifar(depth=20, num_classes=10), (128, 3, 32, 32))
    if "mlp" in names:
        out["MLP 1024-2048-2048-10, batch 256"] = (
            lambda: nn.Sequential(
                nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)
            ),
            (256, 1024),
        )
    return out


class Runner:
    """One model + optimizer + (optional) preconditioner whose mode is set per row."""

    def __init__(self, make_model, shape, kind):
        torch.manual_seed(0)
        self.model = make_model()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.x = torch.randn(*shape)
        self.y = torch.randint(0, 10, (shape[0],))
        self.kind = kind
        self.schedule = {"factors": 1, "eigh": 1}
        if kind == "ours":
            self.pre = kfac_ext.KFACPreconditioner(
                self.model,
                factor_update_steps=lambda s: self.schedule["factors"],
                inv_update_steps=lambda s: self.schedule["eigh"],
            )
        elif kind == "torch":
            self.pre = PlainTorchKFAC(self.model)
        else:
            self.pre = None

    def set_mode(self, mode):
        """Make the NEXT step a full / factors-only / precondition-only step."""
        big = 10**9
        f, e = {"kfac_full": (1, 1), "kfac_factors": (1, big), "kfac_precond": (big, big)}[mode]
        if self.kind == "ours":
            self.schedule.update(factors=f, eigh=e)
            self.pre._set_capture()
        elif self.kind == "torch":
            self.pre.update_factors, self.pre.update_eigens = f == 1, e == 1

    def step(self):
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        if self.pre is not None:
            self.pre.step()
        self.opt.step()
        return time.perf_counter() - t0


def measure(make_model, shape, reps, amortised_steps):
    runners = {k: Runner(make_model, shape, k) for k in ("sgd", "ours", "torch")}
    for r in runners.values():  # warm-up; K-FAC runners get factors and a basis
        r.set_mode("kfac_full")
        r.step()
    times = {}
    rows = [("sgd", "sgd")] + [(k, m) for k in ("ours", "torch") for m, _ in RATIOS]
    for _ in range(reps):
        for kind, mode in rows:
            r = runners[kind]
            if kind != "sgd":
                r.set_mode(mode)
            times.setdefault((kind, mode), []).append(r.step())
    med = {k: statistics.median(v) for k, v in times.items()}
    # Paired: each rep's K-FAC step over that rep's SGD step, then the median.
    # Cancels the drift of a shared machine between reps (the SGD step alone
    # moved 0.30-0.40 s between runs of this script).
    for kind in ("ours", "torch"):
        for mode, _ in RATIOS:
            pairs = [t / s for t, s in zip(times[(kind, mode)], times[("sgd", "sgd")])]
            med[(kind, mode, "paired")] = statistics.median(pairs)
    for kind in ("ours", "torch"):
        med[(kind, "amortised")] = sum(med[(kind, m)] * w for m, w in RATIOS) / 100
    if amortised_steps:
        # Real steps of the /10, /100 schedule, interleaved with SGD steps so that the
        # ratio compares steps taken under the same machine load.
        totals = {"sgd": 0.0, "ours": 0.0, "torch": 0.0}
        for s in range(amortised_steps):
            mode = "kfac_full" if s % 100 == 0 else "kfac_factors" if s % 10 == 0 else "kfac_precond"
            for kind, r in runners.items():
                if kind != "sgd":
                    r.set_mode(mode)
                totals[kind] += r.step()
        for kind, total in totals.items():
            med[(kind, "amortised_measured")] = total / amortised_steps
    return med


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default="resnet20,mlp")
    ap.add_argument("--amortised-steps", type=int, default=0)
    args = ap.parse_args(argv)
    print(
        f"Preconditioner step, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{describe_machine()}; torch {torch.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}\n")
    print("| model | step | SGD (s) | kfac_ext (s) | x SGD | x SGD, paired | plain torch (s) | x SGD | torch / ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (make, shape) in _models(args.models.split(",")).items():
        med = measure(make, shape, args.reps, args.amortised_steps)
        sgd = med[("sgd", "sgd")]
        modes = ["kfac_full", "kfac_factors", "kfac_precond", "amortised"]
        if args.amortised_steps:
            modes.append("amortised_measured")
        for mode in modes:
            ours, plain = med[("ours", mode)], med[("torch", mode)]
            sgd = med.get(("sgd", mode), med[("sgd", "sgd")])
            paired = med.get(("ours", mode, "paired"))
            paired = "" if paired is None else f"{paired:.2f}"
            print(
                f"| {name} | {mode} | {sgd:.3f} | {ours:.3f} | {ours / sgd:.2f} | {paired} | "
                f"{plain:.3f} | {plain / sgd:.2f} | {plain / ours:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
