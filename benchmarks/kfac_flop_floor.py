"""How much arithmetic a K-FAC step adds on the two digits races, and what that implies.

Counts multiply-accumulates (MACs) per training step of `kfac-ext train`'s default
configurations (digits CNN; `--task autoencoder`), from the layer shapes seen in one
forward pass at the default batch size:

- forward + backward of the preconditioned layers: 3 x N.T.in.out (output, input
  gradient, weight gradient; activations, pooling and losses are not counted);
- K-FAC's factors, every `factor_update_steps`: N.T.d^2/2 per factor (one triangle);
- its eigendecompositions (eigen method, about 2.3 d^3: reduction to tridiagonal,
  divide and conquer, back-transform) or Cholesky inverses (inverse method, about
  d^3/2), every `inv_update_steps`;
- its preconditioning, every step: four GEMMs a layer, 2(g^2.a + g.a^2) (eigen) or two,
  g^2.a + g.a^2 (inverse).

SGD's and AdamW's updates are O(parameters) and left out. The ratio K-FAC / SGD of
MACs per step is then a floor on the ratio of step times where the step is arithmetic
bound (the autoencoder's 256-wide layers at batch 64); the digits CNN's step is
dominated by per-op overhead instead, so there the measured ratio is the one to use.
Time to target = epochs x step time, so K-FAC reaches a time ratio R only if
epochs_K / epochs_base <= R / (step ratio).

    python benchmarks/kfac_flop_floor.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
from _common import machine_line

from kfac_ext.app import train_options
from kfac_ext.app.models import build_model


def layer_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[str, int, int, int]]:
    """(name, rows N.T, a = in[.k^2] + bias, g = out) of every Linear / Conv2d, from one forward."""
    shapes, hooks = [], []

    def hook(name):
        def record(module, inputs, output):
            bias = int(module.bias is not None)
            if isinstance(module, nn.Linear):
                rows = inputs[0].numel() // module.in_features
                shapes.append((name, rows, module.in_features + bias, module.out_features))
            else:
                n, _, h, w = output.shape
                kh, kw = module.kernel_size
                a = module.in_channels // module.groups * kh * kw + bias
                shapes.append((name, n * h * w, a, module.out_channels))

        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            hooks.append(module.register_forward_hook(hook(name)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


def step_macs(shapes, method: str, factor_steps: int, inv_steps: int) -> dict[str, float]:
    """MACs per step, by part, with the factor and inverse work amortised over their intervals."""
    fwd_bwd = sum(3 * rows * (a - 1) * g for _, rows, a, g in shapes)  # bias adds are O(N.g)
    factors = sum(rows * (a * a + g * g) / 2 for _, rows, a, g in shapes)
    per_size = 2.3 if method == "eigen" else 0.5
    second = sum(per_size * (a**3 + g**3) for _, _, a, g in shapes)
    gemms = 2 if method == "eigen" else 1
    precondition = sum(gemms * (g * g * a + g * a * a) for _, _, a, g in shapes)
    return {
        "fwd+bwd": fwd_bwd,
        "factors": factors / factor_steps,
        "eigh/inverse": second / inv_steps,
        "precondition": precondition,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.parse_args()
    digits = train_options.DEFAULTS["digits"]
    races = [
        ("digits CNN", "digits-cnn", (digits["batch_size"], 1, 8, 8), digits),
        (
            "autoencoder",
            "digits-autoencoder",
            (train_options.AUTOENCODER_DEFAULTS["batch_size"], 64),
            {**digits, **train_options.AUTOENCODER_DEFAULTS},
        ),
    ]
    print(f"## MACs per training step, K-FAC against SGD ({machine_line()})")
    print("command: python benchmarks/kfac_flop_floor.py\n")
    print(
        "| race | method | f / i steps | fwd+bwd | factors | eigh/inverse | precondition | K-FAC total | K-FAC / SGD |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, model_name, shape, cfg in races:
        model = build_model(model_name, 10, 1)
        shapes = layer_shapes(model, torch.zeros(shape))
        parts = step_macs(shapes, cfg["compute_method"], cfg["factor_update_steps"], cfg["inv_update_steps"])
        total = sum(parts.values())
        cells = " | ".join(f"{parts[k] / 1e6:.2f} M" for k in ("fwd+bwd", "factors", "eigh/inverse", "precondition"))
        print(
            f"| {label} | {cfg['compute_method']} | {cfg['factor_update_steps']} / "
            f"{cfg['inv_update_steps']} | {cells} | {total / 1e6:.2f} M | "
            f"{total / parts['fwd+bwd']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
