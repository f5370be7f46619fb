"""K-FAC at scale: kfac_ext vs kfac-pytorch vs SGD on ResNet-50 and a transformer stack.

One training step = zero_grad + forward + loss + backward [+ preconditioner.step()]
+ SGD step. Per model, every step kind is timed in one loop, interleaved (one step
of each kind per repetition, so every kind sees the same machine load), and given
as the median over repetitions and as a ratio to the median SGD step:

  sgd        plain SGD (a copy of the model without hooks)
  precond    preconditioning only (no factor capture, no eigendecomposition)
  factor     factors captured and updated every step, preconditioning
  eigh       factors + eigendecompositions every step, preconditioning
  amortised  factors every 10, eigh every 100 steps: (1*eigh + 9*factor + 90*precond)/100
             of the measured medians (extrapolated, as in table_preconditioner.py)

for kfac_ext and for kfac-pytorch (github.com/gpauloski/kfac-pytorch, imported
only when importable: pip-installed, or a source tree on PYTHONPATH such as the
git-ignored third_party/kfac-pytorch that benchmarks/gpu_check.sh puts there).
Both use the same hyperparameters (damping 0.001, decay 0.95, kl_clip 0.001).

Models: ResNet-50 (torchvision v1.5 layout, from table_gpu.py), ImageNet shape
3x224x224; a stack of pre-LN transformer blocks, d_model 1024, 4 heads, q/k/v/o
1024x1024 and MLP 1024x4096x1024 Linear layers (all with bias), tokens = batch x
sequence >= 2048, MSE loss on a random target.

Refresh rows (with timed eigh steps): after 10 more factor updates on fresh batches (as
between two eigh steps of the 10/100 schedule), one refresh of every kfac_ext factor,
exact batched_eigh against eigen_refresh.SkipTest(0.01), and the share it kept.

Precision rows (kfac_ext's own bases after the run, the model's real gradients):
the preconditioned gradient with the four GEMMs in float32, TF32 (CUDA only) and
bfloat16 (kfac_ext.precision), relative Frobenius error vs float64 (max over
layers) and time, for ``KFACPreconditioner(precondition_dtype=...)``.

On a 2-core CPU an eigendecomposition step takes minutes at these widths
(ResNet-50: 3 factors of 4608; the MLP: 4096): with --quick (or --eigh off) it is
not timed (its rows say so), both libraries start from identity eigenbases
instead of a first eigh step, and the precision rows use an eigh of the real
factors of the layers at most 1025 wide. Without --quick a
CPU run times that step (batch 4) in every repetition: about an hour on 2 cores.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/table_scale.py --quick       # CPU, a few minutes
    python benchmarks/table_scale.py --device cuda                           # GPU: R50 b32, 4 blocks
    python benchmarks/table_scale.py --quick --json                          # one JSON object
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import json
import statistics
import sys
import time
from unittest import mock

import torch
import torch.nn.functional as F
from _machine import describe_machine
from table_gpu import resnet50
from torch import nn

import kfac_ext
from kfac_ext import ops, precision
from kfac_ext.eigen_refresh import SkipTest

NEVER = 10**9  # an update interval no run reaches
INTERVALS = {"precond": (NEVER, NEVER), "factor": (1, NEVER), "eigh": (1, 1)}
AMORTISED = (("eigh", 1), ("factor", 9), ("precond", 90))
REFRESH_AFTER = 10  # factor updates between two eigh steps with factors /10, eigh /100
HYPER = dict(damping=0.001, factor_decay=0.95, kl_clip=0.001, lr=0.1)


def import_kfac_pytorch():
    """kfac-pytorch's module, or None. A source tree on PYTHONPATH has no installed
    metadata, which its __init__ reads only for __version__: supply a placeholder."""
    try:
        import kfac
    except importlib.metadata.PackageNotFoundError:
        sys.modules.pop("kfac", None)
        with mock.patch("importlib.metadata.version", return_value="source tree"):
            import kfac
    except ImportError:
        return None
    return kfac


# ----------------------------------------------------------------- models ----


class Block(nn.Module):
    """Pre-LN transformer block: attention with q/k/v/o Linear layers, GELU MLP."""

    def __init__(self, d_model=1024, heads=4, d_ff=4096):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.up, self.down = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x):
        b, s, d = x.shape
        h = self.ln1(x)
        q, k, v = (lin(h).view(b, s, self.heads, d // self.heads).transpose(1, 2) for lin in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


def model_specs(device, quick, time_eigh):
    """(name, build, input shape, loss kind, whether the eigh step is timed)."""
    cuda = device.type == "cuda"
    r50_batch = 32 if cuda else (2 if quick else 4)
    blocks, batch, seq = (4, 8, 512) if cuda else (1, 4, 512)
    return [
        (f"ResNet-50 ImageNet, batch {r50_batch}", resnet50, (r50_batch, 3, 224, 224), "ce", time_eigh),
        (
            f"Transformer {blocks}x(d 1024, 4 heads, MLP 4096), {batch}x{seq} tokens",
            lambda: nn.Sequential(*[Block() for _ in range(blocks)]),
            (batch, seq, 1024),
            "mse",
            time_eigh,
        ),
    ]


# ---------------------------------------------------------- preconditioners ----


class Stepper:
    """One model + optimizer (+ a preconditioner whose step kind follows a schedule)."""

    def __init__(self, name, model, x, target, loss_kind, make_pre=None):
        self.name, self.model, self.x, self.target = name, model, x, target
        self.loss_fn = F.cross_entropy if loss_kind == "ce" else F.mse_loss
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        self.kinds = {}  # step index -> step kind, read by the interval callables
        self.pre = make_pre(self) if make_pre else None
        self.times = {}

    def interval(self, which):
        return lambda step: INTERVALS[self.kinds.get(step, "precond")][which]

    @property
    def steps(self):
        return self.pre.steps if self.pre is not None else 0

    def plan(self, kinds):
        """The kinds of the next steps, fixed ahead: kfac_ext decides whether step k
        captures factors at the end of step k-1."""
        self.kinds.update({self.steps + j: kind for j, kind in enumerate(kinds)})

    def step(self, kind, sync):
        assert self.pre is None or self.kinds.get(self.steps, "precond") == kind
        sync()
        t0 = time.perf_counter()
        self.model.zero_grad(set_to_none=True)
        self.loss_fn(self.model(self.x), self.target).backward()
        if self.pre is not None:
            self.pre.step()
        self.opt.step()
        sync()
        self.times.setdefault(kind, []).append(time.perf_counter() - t0)


def make_kfac_ext(stepper):
    return kfac_ext.KFACPreconditioner(
        stepper.model, factor_update_steps=stepper.interval(0), inv_update_steps=stepper.interval(1), **HYPER
    )


def make_kfac_pytorch(kfac):
    def make(stepper):
        return kfac.preconditioner.KFACPreconditioner(
            stepper.model, factor_update_steps=stepper.interval(0), inv_update_steps=stepper.interval(1), **HYPER
        )

    return make


def identity_bases(stepper, library):
    """Both libraries start with identity eigenbases instead of a first eigh step."""
    pre = stepper.pre
    if library == "kfac_ext":
        state = pre.state_dict()
        for l in pre.layers:
            entry = state["layers"][l.name]
            entry["factor_updates"] = 1
            entry["second_order"] = {
                w: [torch.ones(n, device=l.device), torch.eye(n, device=l.device)]
                for w, n in (("A", l.a_dim), ("G", l.g_dim))
            }
        state["steps"], state["inv_tracker"] = 1, {"last": 0}
        pre.load_state_dict(state)
    else:
        pre.load_state_dict({"steps": 1}, compute_inverses=False)
        for _, layer in pre._layers.values():  # noqa: SLF001  (no public setter for bases)
            a_dim, g_dim = layer.module.a_factor_shape[0], layer.module.g_factor_shape[0]
            dev = layer.module.device
            layer.qa, layer.qg = torch.eye(a_dim, device=dev), torch.eye(g_dim, device=dev)
            layer.dgda = 1.0 / (torch.ones(g_dim, a_dim, device=dev) + HYPER["damping"])


# ---------------------------------------------------------------- timing ----


def run_model(spec, device, reps, kfac, sync):
    name, build, shape, loss_kind, time_eigh = spec
    torch.manual_seed(0)
    base = build().to(device)
    x = torch.randn(*shape, device=device)
    target = (
        torch.randint(0, 1000, (shape[0],), device=device) if loss_kind == "ce" else torch.randn(*shape, device=device)
    )
    steppers = [Stepper("sgd", copy.deepcopy(base), x, target, loss_kind)]
    steppers.append(Stepper("kfac_ext", copy.deepcopy(base), x, target, loss_kind, make_kfac_ext))
    if kfac is not None:
        steppers.append(Stepper("kfac-pytorch", copy.deepcopy(base), x, target, loss_kind, make_kfac_pytorch(kfac)))
    del base
    kinds = ["precond", "factor"] + (["eigh"] if time_eigh else [])
    # One step of each kind per repetition, the order rotated from one repetition
    # to the next (the step after an eigh step may find colder caches).
    order = [kinds[r % len(kinds) :] + kinds[: r % len(kinds)] for r in range(reps)]
    for s in steppers:  # warm-up (not timed): first step, allocations, first basis
        if s.pre is not None:
            if not time_eigh:
                identity_bases(s, s.name)
            first = "eigh" if time_eigh else "precond"
            # kfac_ext ends with untimed factor steps before the refresh measurement.
            extra = ["factor"] * REFRESH_AFTER if time_eigh and s.name == "kfac_ext" else []
            s.plan([first] + [k for rep in order for k in rep] + extra)
            s.step(first, sync)
        else:
            s.step("sgd", sync)
        s.times.clear()
    for rep in range(reps):
        for s in steppers[rep % len(steppers) :] + steppers[: rep % len(steppers)]:
            for kind in order[rep] if s.pre is not None else ["sgd"]:
                s.step(kind, sync)
    sgd = statistics.median(steppers[0].times["sgd"])
    rows = [{"model": name, "library": "sgd", "kind": "sgd", "ms": 1e3 * sgd, "x_sgd": 1.0, "reps": reps}]
    for s in steppers[1:]:
        med = {k: statistics.median(v) for k, v in s.times.items()}
        if time_eigh:
            med["amortised"] = sum(w * med[k] for k, w in AMORTISED) / 100
        for kind in ("precond", "factor", "eigh", "amortised"):
            ms = med.get(kind)
            rows.append(
                {
                    "model": name,
                    "library": s.name,
                    "kind": kind,
                    "ms": None if ms is None else 1e3 * ms,
                    "x_sgd": None if ms is None else ms / sgd,
                    "reps": len(s.times.get(kind, [])) if kind != "amortised" else None,
                }
            )
    if time_eigh:
        # Fresh batches: with the timed steps' single batch every factor update mixes
        # the same statistics and the basis would never move.
        for _ in range(REFRESH_AFTER):
            steppers[1].x = torch.randn_like(x)
            steppers[1].step("factor", sync)
        rows.append(refresh_row(name, steppers[1], sync))
    # Without timed eigh steps the bases are identities: decompose the real factors
    # of the layers whose factors are at most 1025 wide for the precision rows.
    prec = precision_rows(name, steppers[1], sync, device, None if time_eigh else 1025)
    return rows, prec


def refresh_row(name, stepper, sync):
    """One eigenbasis refresh of every kfac_ext factor: exact batched_eigh against
    eigen_refresh.SkipTest(0.01) from the bases in use, REFRESH_AFTER factor updates
    old (as between two refreshes of the amortised schedule)."""
    pre = stepper.pre
    keys = [(i, w) for i in sorted(pre._second) for w in "AG"]  # noqa: SLF001
    factors = [(pre.layers[i].A if w == "A" else pre.layers[i].G) for i, w in keys]
    previous = [pre._second[i][w] for i, w in keys]  # noqa: SLF001

    def exact(fs):
        values, vectors = ops.batched_eigh(fs)
        return [[d, q] for d, q in zip(values, vectors)]

    sync()
    t0 = time.perf_counter()
    exact(factors)
    sync()
    t_exact = time.perf_counter() - t0
    skip = SkipTest(0.01)
    t0 = time.perf_counter()
    skip.solve(factors, previous, exact)
    sync()
    t_skip = time.perf_counter() - t0
    return {
        "model": name,
        "library": "kfac_ext",
        "kind": "refresh",
        "ms": 1e3 * t_exact,
        "skip_test_ms": 1e3 * t_skip,
        "skip_rate": skip.skip_rate,
        "factors": len(factors),
        "x_sgd": None,
        "reps": 1,
    }


def precision_rows(name, stepper, sync, device, max_dim=None):
    """The preconditioned gradient in float32 / TF32 / bfloat16 vs float64: kfac_ext's
    bases, or (max_dim) eigh of the factors of the layers at most max_dim wide."""
    pre = stepper.pre
    stepper.model.zero_grad(set_to_none=True)
    stepper.loss_fn(stepper.model(stepper.x), stepper.target).backward()
    if max_dim is None:
        idx = sorted(pre._second)  # noqa: SLF001  (the bases the preconditioner holds)
        s = [pre._second[i] for i in idx]  # noqa: SLF001
    else:
        idx = [i for i, l in enumerate(pre.layers) if max(l.a_dim, l.g_dim) <= max_dim]
        values, vectors = ops.batched_eigh([f for i in idx for f in (pre.layers[i].A, pre.layers[i].G)])
        s = [
            {"A": (values[2 * k], vectors[2 * k]), "G": (values[2 * k + 1], vectors[2 * k + 1])}
            for k in range(len(idx))
        ]
        name = f"{name} ({len(idx)} of {len(pre.layers)} layers: factors <= {max_dim})"
    grads = [pre.layers[i].grad_matrix(torch.float32) for i in idx]
    args = (
        [x["A"][1] for x in s],
        [x["A"][0] for x in s],
        [x["G"][1] for x in s],
        [x["G"][0] for x in s],
        HYPER["damping"],
    )
    exact = ops.reference.eigen_precondition(
        [g.double() for g in grads], *[[t.double() for t in a] for a in args[:4]], args[4]
    )
    variants = [("float32", lambda: ops.eigen_precondition(grads, *args))]
    if device.type == "cuda":

        def tf32():
            with precision.allow_tf32():
                return ops.eigen_precondition(grads, *args)

        variants.append(("tf32", tf32))
    variants.append(("bfloat16", lambda: precision.eigen_precondition_bf16(grads, *args)))
    rows = []
    for label, fn in variants:
        fn()  # warm-up
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        rows.append(
            {
                "model": name,
                "precondition_dtype": label,
                "ms": 1e3 * (time.perf_counter() - t0),
                "rel_err_vs_fp64": precision.relative_error(out, exact),
            }
        )
    f32 = rows[0]["ms"]
    for r in rows:
        r["x_fp32"] = r["ms"] / f32
    return rows


# ----------------------------------------------------------------- output ----


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_tables(result):
    print(
        f"K-FAC at scale, {result['date']}, {result['machine']}, torch {result['torch']}, "
        f"kfac-pytorch: {result['kfac_pytorch'] or 'not importable (column left out)'}, "
        f"{result['reps']} reps\n"
    )
    print("| model | library | step | median ms | x SGD | reps |")
    print("|---|---|---|---:|---:|---:|")
    for r in result["rows"]:
        if r["kind"] == "refresh":
            continue
        note = "" if r["ms"] is not None or r["kind"] == "amortised" else " (not timed: --eigh off)"
        if r["kind"] == "amortised" and r["ms"] is None:
            note = " (needs the eigh step)"
        print(
            f"| {r['model']} | {r['library']} | {r['kind']}{note} | {fmt(r['ms'], '.1f')} | "
            f"{fmt(r['x_sgd'], '.2f')} | {fmt(r['reps'], 'd') if r['reps'] else '-'} |"
        )
    refresh = [r for r in result["rows"] if r["kind"] == "refresh"]
    if refresh:
        print("\nEigenbasis refresh of all kfac_ext factors after the run (one call each):\n")
        print("| model | factors | batched_eigh ms | SkipTest(0.01) ms | kept |")
        print("|---|---:|---:|---:|---:|")
        for r in refresh:
            print(
                f"| {r['model']} | {r['factors']} | {r['ms']:.1f} | {r['skip_test_ms']:.1f} | "
                f"{100 * r['skip_rate']:.0f} % |"
            )
    if result["ratios"]:
        print("\nkfac_ext / kfac-pytorch (median step time; < 1: kfac_ext faster):\n")
        print("| model | precond | factor | eigh | amortised |")
        print("|---|---:|---:|---:|---:|")
        for model, r in result["ratios"].items():
            print(
                f"| {model} | "
                + " | ".join(fmt(r.get(k), ".2f") for k in ("precond", "factor", "eigh", "amortised"))
                + " |"
            )
    if result["precision"]:
        print("\nPreconditioning GEMMs (kfac_ext bases after the run, one call over all layers):\n")
        print("| model | precondition_dtype | ms | x fp32 | max rel. error vs fp64 |")
        print("|---|---|---:|---:|---:|")
        for r in result["precision"]:
            print(
                f"| {r['model']} | {r['precondition_dtype']} | {r['ms']:.1f} | "
                f"{r['x_fp32']:.2f} | {r['rel_err_vs_fp64']:.1e} |"
            )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--quick", action="store_true", help="fewer reps, one transformer block; on a CPU no ResNet-50 eigh step"
    )
    p.add_argument("--reps", type=int, default=None, help="timed steps per kind (default 2 with --quick, else 5)")
    p.add_argument("--models", default="resnet50,transformer", help="comma-separated subset of resnet50,transformer")
    p.add_argument(
        "--eigh",
        choices=("auto", "on", "off"),
        default="auto",
        help="time the eigh step (and the amortised step); auto: on, except on a "
        "CPU with --quick (minutes per step at these widths on 2 cores)",
    )
    p.add_argument("--no-kfac-pytorch", action="store_true", help="leave kfac-pytorch out")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.exit(2, f"table_scale.py: error: --device: not a device: {args.device!r}\n")
    if device.type not in ("cpu", "cuda"):
        p.exit(2, f"table_scale.py: error: --device must be cpu or cuda, got {args.device!r}\n")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.exit(2, "table_scale.py: error: --device cuda: torch has no CUDA device here\n")
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    if reps < 1:
        p.exit(2, f"table_scale.py: error: --reps must be >= 1, got {reps}\n")
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in wanted if m not in ("resnet50", "transformer")]
    if bad or not wanted:
        p.exit(2, f"table_scale.py: error: --models: unknown {bad or wanted}; choose from resnet50,transformer\n")
    kfac = None if args.no_kfac_pytorch else import_kfac_pytorch()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    time_eigh = args.eigh == "on" or (args.eigh == "auto" and (device.type == "cuda" or not args.quick))
    specs = [
        s for key, s in zip(("resnet50", "transformer"), model_specs(device, args.quick, time_eigh)) if key in wanted
    ]
    rows, prec = [], []
    for spec in specs:
        t0 = time.perf_counter()
        print(f"table_scale.py: {spec[0]} ...", file=sys.stderr, flush=True)
        r, pr = run_model(spec, device, reps, kfac, sync)
        print(f"table_scale.py: {spec[0]} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        rows += r
        prec += pr
    ratios = {}
    if kfac is not None:
        by = {(r["model"], r["library"], r["kind"]): r["ms"] for r in rows}
        for spec in specs:
            ratios[spec[0]] = {
                k: by[(spec[0], "kfac_ext", k)] / by[(spec[0], "kfac-pytorch", k)]
                for k in ("precond", "factor", "eigh", "amortised")
                if by.get((spec[0], "kfac_ext", k)) and by.get((spec[0], "kfac-pytorch", k))
            }
    machine = torch.cuda.get_device_name() if device.type == "cuda" else describe_machine()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "device": device.type,
        "torch": torch.__version__,
        "kfac_pytorch": getattr(kfac, "__version__", None) if kfac else None,
        "quick": args.quick,
        "reps": reps,
        "rows": rows,
        "ratios": ratios,
        "precision": prec,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print_tables(result)


if __name__ == "__main__":
    main()
