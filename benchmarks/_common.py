"""What several benchmark scripts share: seeded inputs, the layer shapes of the
two reference networks, and the in-process `kfac-ext train` runner with its
table header (the training races and their sweeps)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json

import torch
from _machine import describe_machine

from kfac_ext.app import train, train_options
from kfac_ext.app.scaling import resnet50_factor_shapes

DTYPE = torch.float32


def rand(*shape, seed: int = 0, device="cpu", dtype=DTYPE) -> torch.Tensor:
    """Standard normal, drawn on the CPU from its own seed (the same numbers on every device)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).to(device)


def spd(n: int, seed: int = 0, device="cpu", dtype=DTYPE) -> torch.Tensor:
    """A covariance-like n x n factor: XᵀX/rows plus a small ridge."""
    x = rand(n + 8, n, seed=seed, dtype=dtype)
    return (x.T @ x / (n + 8) + 1e-3 * torch.eye(n, dtype=dtype)).to(device)


def rel_err(result: torch.Tensor, exact64: torch.Tensor) -> float:
    """max |result - exact| / max |exact|, in float64 on the CPU."""
    exact64 = exact64.double().cpu()
    scale = exact64.abs().max().clamp(min=1e-300)
    return ((result.double().cpu() - exact64).abs().max() / scale).item()


def resnet20_grad_shapes() -> list[tuple[int, int]]:
    """(out, in) of CIFAR ResNet-20's weight gradients (3x3 convs without bias; fc with bias)."""
    layers = [(16, 27)] + [(16, 144)] * 6
    layers += [(32, 144)] + [(32, 288)] * 5 + [(64, 288)] + [(64, 576)] * 5 + [(10, 65)]
    return layers


def resnet50_grad_shapes() -> list[tuple[int, int]]:
    """(out, in) of ResNet-50's 54 K-FAC layers (kfac_ext.app.scaling holds the network)."""
    return [(g, a) for _, a, g in resnet50_factor_shapes()]


def resnet50_factor_sizes() -> list[int]:
    """Sizes of ResNet-50's 108 factors, A then G per layer."""
    return [n for _, a, g in resnet50_factor_shapes() for n in (a, g)]


def run_train(flags: list[str], allow_diverged: bool = False) -> dict | None:
    """Run `kfac-ext train FLAGS --json` in this process; its JSON result (None for a
    diverged run when ``allow_diverged``: a sweep scores it as never reaching the target)."""
    parser = argparse.ArgumentParser()
    train_options.add_arguments(parser)
    args = parser.parse_args([*flags, "--json", "--quiet", "--plot", ""])
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = train.run(args)
    except FloatingPointError:
        if allow_diverged:
            return None
        raise
    if code != 0:
        raise RuntimeError(f"kfac-ext train {' '.join(flags)} failed with exit code {code}")
    return json.loads(out.getvalue())


def machine_line() -> str:
    """Date, CPU model, cores, torch version: the header of every table."""
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{describe_machine(threads=False)}, torch {torch.__version__}"
    )
