"""Per-step cost of K-FAC on a GPT-style model against AdamW (issue 25, item 6).

Model: token + position Embedding, 4 pre-LayerNorm blocks of nn.MultiheadAttention
(d_model 256, 4 heads, causal mask) and a 256-1024-256 MLP, an untied Linear head
(vocabulary 512); batch 8 × 128 tokens; every Linear, attention projection and
embedding is a K-FAC layer. One step = zero_grad, forward, backward,
(preconditioner.step()), AdamW.step(). Rows:

- AdamW: no preconditioner;
- every step: factors and eigendecompositions every step;
- factors only: factors every step, eigendecompositions never after the first;
- precondition only: neither after the first (the steady-state step);
- amortised (10, 100): factors every 10, eigendecompositions every 100 steps, computed
  as precondition + (factors − precondition)/10 + (every − factors)/100.

    PYTHONPATH=. python benchmarks/table_transformer_step.py [--reps 5] [--approx reduce]
        [--method inverse]

Medians and minima of ``--reps`` timed steps after 2 warm-up steps, the four modes'
steps interleaved (the amortised row is formed from the medians, and from the
minima). The machine is shared: the absolute figures move with its load, the ratios
less; the minima are the steps other processes disturbed least.

Floors (printed after the table, how close each method is to the least it could cost):

- *FLOP floor* = (F + P + C/10 + E/100) / (F + W) for the amortised row, (F + P) / (F + W)
  for precondition only, from this script's own counts (:func:`gemm_gflop`): F the
  forward + backward GEMMs, P the preconditioning GEMMs (eigen: four a layer,
  ``Q_G [(Q_Gᵀ Γ Q_A) ⊘ (d_G d_Aᵀ + λ)] Q_Aᵀ``, which no exact rewrite shortens, because
  the damping λ is added to the eigenvalue products and so is not Kronecker-factored;
  inverse: two, ``(G+λI)⁻¹ Γ (A+λI)⁻¹``), C a factor step's covariance GEMMs, E the
  eigendecompositions (≈ 9n³ a dense factor) or Cholesky inverses (≈ n³), W AdamW's
  elementwise update (≈ 13 flops a parameter, no GEMM). It is what the ratio would be
  if every flop of both steps ran at one rate. The AdamW step also holds work that is
  no GEMM (softmax, LayerNorm, GELU, the optimizer's memory traffic), which K-FAC does
  not add to, so a measured ratio can sit below this figure.
- *GEMM-time floor* = 1 + (t_P + t_C/10 + t_E/100) / t_AdamW: the same GEMMs (and
  ``torch.linalg.eigh`` / Cholesky inverses) run as plain torch calls on random
  matrices of the model's shapes, timed in the same interleaved loop as the steps
  (t_C is the time of full ``xᵀx`` products halved: K-FAC forms one triangle). A
  method whose measured row equals it spends nothing beyond its arithmetic.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import kfac_ext

D, HEADS, LAYERS, VOCAB, BATCH, TOKENS = 256, 4, 4, 512, 8, 128


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.fc, self.proj = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.proj(torch.nn.functional.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, D), nn.Embedding(TOKENS, D)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln, self.head = nn.LayerNorm(D), nn.Linear(D, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(TOKENS) < 0)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.ln(x))


class Runner:
    """One model, its AdamW and (``intervals`` not None) its preconditioner."""

    def __init__(self, intervals, approx: str, method: str):
        torch.manual_seed(0)
        self.model = GPT()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.pre = (
            None
            if intervals is None
            else kfac_ext.KFACPreconditioner(
                self.model,
                factor_update_steps=intervals[0],
                inv_update_steps=intervals[1],
                lr=1e-3,
                kfac_approx=approx,
                compute_method=method,
            )
        )
        self.idx = torch.randint(0, VOCAB, (BATCH, TOKENS + 1), generator=torch.Generator().manual_seed(1))

    def step(self) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad()
        out = self.model(self.idx[:, :-1])
        nn.functional.cross_entropy(out.reshape(-1, VOCAB), self.idx[:, 1:].reshape(-1)).backward()
        if self.pre is not None:
            self.pre.step()
        self.opt.step()
        return time.perf_counter() - t0


def time_modes(modes: dict, reps: int, approx: str, method: str, extra: dict | None = None) -> tuple[dict, dict]:
    """Median step time of each mode, the modes' steps interleaved (one of each in
    turn), so that a change of the shared machine's load falls on all of them alike.
    ``extra``: more objects with a ``step()`` to time in the same loop."""
    runners = {name: Runner(intervals, approx, method) for name, intervals in modes.items()}
    runners.update(extra or {})
    modes = dict(runners)
    times = {name: [] for name in modes}
    for rep in range(reps + 2):
        for name, runner in runners.items():
            t = runner.step()
            if rep >= 2:  # the first step of every mode decomposes: warm-up
                times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}, {name: min(ts) for name, ts in times.items()}


def gemm_gflop(method: str) -> dict[str, float]:
    """GEMM arithmetic of one step (GFLOP, 2 per multiply-add), from the registered layers.

    forward + backward: 3 products of rows x in x out per Linear-like layer (output,
    input gradient, weight gradient; the Embeddings' lookups are none), plus the
    attention core (Q Kᵀ and A V: 2·B·T²·D each way, ×3 with backward, causal masking
    not discounted). Preconditioning: per layer 2·(g²·a + g·a²) for each of the two
    sides' multiplications, twice for the eigen method (Q_ᵀ … then Q …), once for the
    inverse method; a diagonal factor's side is elementwise (none). Factors: one
    triangle, rows·n², per dense factor. Solves (not GEMMs; estimates): a symmetric
    eigendecomposition with vectors ≈ 9n³ (Golub & Van Loan), a Cholesky inverse ≈ n³."""
    pre = Runner((1, 1), "expand", method).pre
    assert pre is not None
    rows = BATCH * TOKENS
    fwd_bwd = 3 * 2 * 2 * BATCH * TOKENS * TOKENS * D * LAYERS
    precondition = factors = solves = 0.0
    sides = 2 if method == "eigen" else 1
    for layer in pre.layers:
        a, g = layer.a_dim, layer.g_dim
        if not layer.a_diagonal:  # an Embedding's lookup is no GEMM
            fwd_bwd += 3 * 2 * rows * (a - int(layer.has_bias)) * g
            precondition += sides * 2 * g * a * a
            factors += rows * a * a
        precondition += 0 if layer.g_diagonal else sides * 2 * g * g * a
        factors += 0 if layer.g_diagonal else rows * g * g
        solves += sum(
            (9 if method == "eigen" else 1) * n**3 for n, d in ((a, layer.a_diagonal), (g, layer.g_diagonal)) if not d
        )
    return {
        "forward + backward": fwd_bwd / 1e9,
        "preconditioning": precondition / 1e9,
        "factors": factors / 1e9,
        "solves": solves / 1e9,
    }


ADAMW_FLOPS_PER_PARAM = 13  # decay, two moment updates, sqrt, bias corrections, the step


def flop_floor(method: str) -> dict[str, float]:
    """The FLOP floors of the precondition-only and amortised rows (module docstring)."""
    gf = gemm_gflop(method)
    params = sum(p.numel() for p in GPT().parameters())
    base = gf["forward + backward"] + ADAMW_FLOPS_PER_PARAM * params / 1e9
    extra = gf["preconditioning"]
    return {
        "precondition only": (gf["forward + backward"] + extra) / base,
        "amortised (10, 100)": (gf["forward + backward"] + extra + gf["factors"] / 10 + gf["solves"] / 100) / base,
    }


class GemmFloor:
    """The K-FAC arithmetic of one step as plain torch calls at the model's shapes: its
    ``step()`` times the preconditioning GEMMs (what :func:`gemm_gflop` counts) and
    keeps the time of the covariance GEMMs (full products, halved) in ``factor_times``;
    ``solve_time()`` times the eigendecompositions or Cholesky inverses once."""

    def __init__(self, method: str):
        pre = Runner((1, 1), "expand", method).pre
        assert pre is not None
        self.method = method
        gen = torch.Generator().manual_seed(2)
        self.layers = []
        self.rows = []  # (rows, n) of each dense factor's covariance
        for layer in pre.layers:
            a, g = layer.a_dim, layer.g_dim
            qa = None if layer.a_diagonal else torch.randn(a, a, generator=gen)
            qg = None if layer.g_diagonal else torch.randn(g, g, generator=gen)
            self.layers.append((torch.randn(g, a, generator=gen), qa, qg))
            self.rows += [torch.randn(BATCH * TOKENS, n, generator=gen) for n, q in ((a, qa), (g, qg)) if q is not None]
        self.factor_times: list[float] = []

    def step(self) -> float:
        t0 = time.perf_counter()
        for grad, qa, qg in self.layers:
            v = grad if qg is None else qg.T @ grad
            v = v if qa is None else v @ qa
            if self.method == "eigen":
                v = v if qg is None else qg @ v
                v = v if qa is None else v @ qa.T
        t1 = time.perf_counter()
        for x in self.rows:
            x.T @ x
        self.factor_times.append((time.perf_counter() - t1) / 2)  # one triangle is needed
        return t1 - t0

    def solve_time(self) -> float:
        spd = [x.T @ x / x.shape[0] + 1e-3 * torch.eye(x.shape[1]) for x in self.rows]
        t0 = time.perf_counter()
        for f in spd:
            if self.method == "eigen":
                torch.linalg.eigh(f)
            else:
                torch.cholesky_inverse(torch.linalg.cholesky(f))
        return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--approx", default="expand", choices=["expand", "reduce"])
    parser.add_argument("--method", default="eigen", choices=["eigen", "inverse"])
    args = parser.parse_args(argv)
    never = 10**9
    floor = GemmFloor(args.method)
    medians, mins = time_modes(
        {"AdamW": None, "every step": (1, 1), "factors only": (1, never), "precondition only": (never, never)},
        args.reps,
        args.approx,
        args.method,
        extra={"GEMMs": floor},
    )
    gemm_medians = {"precondition": medians.pop("GEMMs"), "factors": statistics.median(floor.factor_times)}
    gemm_mins = {"precondition": mins.pop("GEMMs"), "factors": min(floor.factor_times)}
    for rows in (medians, mins):
        rows["amortised (10, 100)"] = (
            rows["precondition only"]
            + (rows["factors only"] - rows["precondition only"]) / 10
            + (rows["every step"] - rows["factors only"]) / 100
        )
    print(
        f"GPT-style d_model {D}, {LAYERS} layers, {BATCH}x{TOKENS} tokens, "
        f"kfac_approx={args.approx}, compute_method={args.method}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.reps} reps"
    )
    # The minimum is the step the other processes on a shared machine disturbed least.
    print("| step | median ms | × AdamW | min ms | × AdamW (mins) |\n|---|---|---|---|---|")
    for name in medians:
        print(
            f"| {name} | {medians[name] * 1e3:.0f} | {medians[name] / medians['AdamW']:.2f} "
            f"| {mins[name] * 1e3:.0f} | {mins[name] / mins['AdamW']:.2f} |"
        )
    flops = gemm_gflop(args.method)
    print(
        "GFLOP a step (GEMMs; solves: eigendecompositions or Cholesky inverses, estimated): "
        + ", ".join(f"{k} {v:.2f}" for k, v in flops.items())
    )
    solve = floor.solve_time()
    print(
        f"\nFloors, × AdamW (module docstring). FLOP floor: {args.method}'s counts; GEMM-time "
        f"floor: plain torch GEMMs of this step's shapes timed beside the steps (median "
        f"{gemm_medians['precondition'] * 1e3:.0f} ms preconditioning, "
        f"{gemm_medians['factors'] * 1e3:.0f} ms covariances; {solve * 1e3:.0f} ms solves, once)."
    )
    print("| row | FLOP floor | GEMM-time floor | measured | measured / GEMM-time floor |\n|---|---|---|---|---|")
    flop = flop_floor(args.method)
    for name in ("precondition only", "amortised (10, 100)"):
        for label, rows, gemm in (("median", medians, gemm_medians), ("min", mins, gemm_mins)):
            extra = gemm["precondition"]
            if name.startswith("amortised"):
                extra += gemm["factors"] / 10 + solve / 100
            t_floor = 1 + extra / rows["AdamW"]
            measured = rows[name] / rows["AdamW"]
            print(
                f"| floor: {name} ({label}s) | {flop[name]:.2f} | {t_floor:.2f} | {measured:.2f} "
                f"| {measured / t_floor:.2f} |"
            )
    other = "inverse" if args.method == "eigen" else "eigen"
    print(f"FLOP floor of {other} for comparison: " + ", ".join(f"{k} {v:.2f}" for k, v in flop_floor(other).items()))


if __name__ == "__main__":
    main()
