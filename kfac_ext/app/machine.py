"""The machine line that `kfac-ext bench` and every benchmark table print (tables
are read side by side, so they describe the machine the same way)."""

import os
import platform
import subprocess

import torch


def cpu_model() -> str:
    """The CPU's model name from lscpu (falls back to platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def describe_machine(threads: bool = True) -> str:
    """'<CPU model>, <n> cores[, <t> torch threads]'."""
    text = f"{cpu_model()}, {os.cpu_count()} cores"
    return f"{text}, {torch.get_num_threads()} torch threads" if threads else text
