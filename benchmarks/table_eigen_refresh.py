"""Eigenbasis refresh cheaper than eigh: skip rate and error on recorded factor sequences.

Two real training runs with KFACPreconditioner record, at every eigendecomposition
step, each layer's running factors A and G and its raw gradient Γ:

  digits   the digits CNN (kfac_ext.app: data, model), batch 64, SGD lr 0.2
           momentum 0.9, damping 0.1, factors every 5 / eigh every 20 steps (the
           `kfac-ext train` digits schedule), every layer preconditioned
  resnet20 ResNet-20 on CIFAR-shaped random data (4096 N(0,1) 3x32x32 images,
           10 random labels), batch 32, lr 0.05, damping 0.003, factors every
           step / eigh every 10 (10 factor updates between two decompositions,
           as with the CIFAR schedule 10/100)

Then every refresh method replays the sequence, each from its own previous
result (as it would run inside the preconditioner), and is compared with an
exact eigh of the same factors:

  skip tau     eigen_refresh.SkipTest(tau): keep the basis while
               ||offdiag(QᵀFQ)||_F <= tau ||F||_F, else exact eigh
  orth k       warm start: k orthogonal-iteration steps Q <- qr(F Q) from the
               previous basis, eigenvalues diag(QᵀFQ)
  perturb      warm start: one first-order (Jacobi-like) rotation of the
               previous basis, Q <- qr(Q (I + K)), K_ij = M_ij / (M_jj - M_ii)
               for M = QᵀFQ (pairs closer than 1e-3 max|d| left alone)

Columns: the skip rate (factors that kept their basis / factors tested), the
largest factor error ||F - Q diag(d) Qᵀ||_F / ||F||_F, the error of the
preconditioned gradient P = Q_G[(Q_GᵀΓQ_A)/(d_G d_Aᵀ + λ)]Q_Aᵀ against exact eigh
(relative Frobenius per layer and update, float64: median, max, and the share
above 1e-3, the bar a warm start must clear), and the refresh time over the
sequence as a ratio to exact eigh's.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/table_eigen_refresh.py [--steps 400 300] [--json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _machine import describe_machine

from kfac_ext import KFACPreconditioner, ops
from kfac_ext import reference as ref
from kfac_ext.app.data import load_dataset
from kfac_ext.app.models import build_model, resnet_cifar
from kfac_ext.eigen_refresh import SkipTest

TAUS = (0.01, 0.03, 0.1)
BAR = 1e-3


# ------------------------------------------------------------- recording ----


def record(name: str, steps: int):
    """[(factors [A0, G0, A1, G1, ...], gradients [Γ0, Γ1, ...])] at each eigh step, damping."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if name == "digits":
        data = load_dataset("digits", None)
        model = build_model("digits-cnn", data.num_classes, data.in_channels)
        batch, lr, damping, f_every, inv_every = 64, 0.2, 0.1, 5, 20
        xs, ys = None, None
    else:
        model = resnet_cifar(20)
        batch, lr, damping, f_every, inv_every = 32, 0.05, 0.003, 1, 10
        xs = torch.randn(4096, 3, 32, 32, generator=gen)
        ys = torch.randint(0, 10, (4096,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    pre = KFACPreconditioner(model, factor_update_steps=f_every, inv_update_steps=inv_every, damping=damping, lr=lr)
    n = len(data.train_y) if xs is None else len(ys)
    out, order = [], None
    for step in range(steps):
        i = step % (n // batch)
        if i == 0:
            order = torch.randperm(n, generator=gen)
        idx = order[i * batch : (i + 1) * batch]
        x, y = data.batch(idx, True, gen) if xs is None else (xs[idx], ys[idx])
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        due = step % inv_every == 0
        grads = [l.grad_matrix(torch.float32) for l in pre.layers] if due else None
        pre.step()
        if due:
            out.append(([f.clone() for l in pre.layers for f in (l.A, l.G)], grads))
        opt.step()
    return out, damping


# ----------------------------------------------------------- warm starts ----


def _rayleigh(f, q):
    return (q.T @ f @ q).diagonal().clamp(min=0.0)


def orth_iteration(steps):
    def refresh(f, prev):
        q = prev[1]
        for _ in range(steps):
            q = torch.linalg.qr(f @ q)[0]
        return [_rayleigh(f, q), q]

    return refresh


def perturb(f, prev):
    q = prev[1]
    m = q.T @ f @ q
    d = m.diagonal()
    gap = d.unsqueeze(0) - d.unsqueeze(1)  # gap[i, j] = d_j - d_i
    close = gap.abs() <= 1e-3 * d.abs().max().clamp(min=1e-30)
    k = torch.where(close, torch.zeros_like(m), m / torch.where(close, torch.ones_like(gap), gap))
    k.fill_diagonal_(0.0)
    q = torch.linalg.qr(q @ (torch.eye(len(d), dtype=q.dtype) + k))[0]
    return [_rayleigh(f, q), q]


def _exact(fs):
    values, vectors = ops.batched_eigh(fs)
    return [[d, q] for d, q in zip(values, vectors)]


# ------------------------------------------------------------- replaying ----


def _precondition64(grads, decomps, damping):
    dec = [[t.double() for t in d] for d in decomps]
    return ref.eigen_precondition(
        [g.double() for g in grads],
        [d[1] for d in dec[0::2]],
        [d[0] for d in dec[0::2]],
        [d[1] for d in dec[1::2]],
        [d[0] for d in dec[1::2]],
        damping,
    )


def replay(seq, damping):
    """Per method: skip rate, factor error, P errors vs exact, refresh time / exact's."""
    methods = {f"skip {t}": SkipTest(t) for t in TAUS}
    methods.update({"orth 1": orth_iteration(1), "orth 2": orth_iteration(2), "perturb": perturb})
    state = {name: None for name in methods}
    stats = {name: {"time": 0.0, "ferr": 0.0, "perr": []} for name in methods}
    exact_time = 0.0
    for factors, grads in seq:
        t0 = time.perf_counter()
        exact = _exact(factors)
        exact_time += time.perf_counter() - t0
        p_exact = _precondition64(grads, exact, damping)
        for name, method in methods.items():
            prev = state[name]
            t0 = time.perf_counter()
            if prev is None:
                new = _exact(factors)
            elif isinstance(method, SkipTest):
                new = method.solve(factors, prev, _exact)
            else:
                new = [method(f, p) for f, p in zip(factors, prev)]
            st = stats[name]
            st["time"] += time.perf_counter() - t0
            state[name] = new
            if prev is None:
                continue  # the first decomposition is exact for every method
            for f, (d, q) in zip(factors, new):
                f64, d64, q64 = f.double(), d.double(), q.double()
                err = float((f64 - q64 @ torch.diag(d64) @ q64.T).norm() / f64.norm())
                st["ferr"] = max(st["ferr"], err)
            for p, pe in zip(_precondition64(grads, new, damping), p_exact):
                st["perr"].append(float((p - pe).norm() / pe.norm()))
    rows = []
    for name, method in methods.items():
        st = stats[name]
        perr = st["perr"]
        rows.append(
            {
                "method": name,
                "skip_rate": method.skip_rate if isinstance(method, SkipTest) else None,
                "factors_tested": method.checked if isinstance(method, SkipTest) else None,
                "factor_err_max": st["ferr"],
                "p_err_median": statistics.median(perr),
                "p_err_max": max(perr),
                "p_err_share_above_1e-3": sum(e > BAR for e in perr) / len(perr),
                "time_x_exact": st["time"] / exact_time,
            }
        )
    return rows


def test_cost(sizes, reps=3):
    """Median time of one skip test (QᵀFQ and two norms) against ops.batched_eigh, per size."""
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n + 8, n, generator=g)
        f = x.T @ x / n
        prev = _exact([f])[0]
        test, eigh = [], []
        for _ in range(reps):  # interleaved
            t0 = time.perf_counter()
            SkipTest(0.01).test(f, prev[1])[1].item()
            test.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _exact([f])
            eigh.append(time.perf_counter() - t0)
        rows.append({"n": n, "test_ms": 1e3 * statistics.median(test), "eigh_ms": 1e3 * statistics.median(eigh)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steps",
        type=int,
        nargs=2,
        default=[400, 300],
        metavar=("DIGITS", "R20"),
        help="training steps recorded for digits and ResNet-20 (default 400 300)",
    )
    p.add_argument("--models", default="digits,resnet20")
    p.add_argument(
        "--cost-sizes",
        type=int,
        nargs="*",
        default=[512, 1024, 2048],
        help="factor sizes at which one skip test is timed against eigh",
    )
    p.add_argument("--cost-only", action="store_true", help="only the cost table")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    a = p.parse_args(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    if not models or any(m not in ("digits", "resnet20") for m in models):
        p.exit(2, f"table_eigen_refresh.py: error: --models: choose from digits,resnet20; got {a.models!r}\n")
    if min(a.steps) < 1:
        p.exit(2, f"table_eigen_refresh.py: error: --steps must be >= 1, got {a.steps}\n")
    result = {
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "machine": describe_machine(),
        "models": {},
    }
    if any(n < 1 for n in a.cost_sizes):
        p.exit(2, f"table_eigen_refresh.py: error: --cost-sizes must be >= 1, got {a.cost_sizes}\n")
    result["cost"] = test_cost(a.cost_sizes)
    for name in [] if a.cost_only else models:
        steps = a.steps[0] if name == "digits" else a.steps[1]
        seq, damping = record(name, steps)
        result["models"][name] = {"steps": steps, "updates": len(seq), "rows": replay(seq, damping)}
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"Eigenbasis refresh on recorded factor sequences, {result['date']}, {result['machine']}")
    print("\nOne skip test vs one eigh (median of 3, interleaved):\n")
    print("| n | skip test ms | eigh ms | test / eigh |")
    print("|---:|---:|---:|---:|")
    for r in result["cost"]:
        print(f"| {r['n']} | {r['test_ms']:.1f} | {r['eigh_ms']:.1f} | {r['test_ms'] / r['eigh_ms']:.3f} |")
    for name, res in result["models"].items():
        print(f"\n{name}: {res['steps']} training steps, {res['updates']} decompositions\n")
        print("| method | skip rate | factor err max | P err median | P err max | P err > 1e-3 | time x eigh |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in res["rows"]:
            skip = "-" if r["skip_rate"] is None else f"{r['skip_rate']:.2f} of {r['factors_tested']}"
            print(
                f"| {r['method']} | {skip} | {r['factor_err_max']:.1e} | {r['p_err_median']:.1e} | "
                f"{r['p_err_max']:.1e} | {100 * r['p_err_share_above_1e-3']:.0f}% | "
                f"{r['time_x_exact']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
