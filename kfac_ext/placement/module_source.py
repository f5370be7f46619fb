"""A model named on the command line: ``--module PKG.MOD:FACTORY --input-shape 8,3,32,32``.

Shared by ``kfac-ext place --module`` and ``kfac-ext pipeline``. Every check
happens here, before any solving or process spawning, and fails with a
ValueError whose message names the option and says what was wrong.

The module is imported, and its factory called, with ``sys.argv`` set to the
module's name alone: a module that parses the command line at import sees no
arguments (not kfac-ext's), and one that calls ``sys.exit()`` there (an
argparse error, a script's exit) is an error naming the module, not a silent
exit of kfac-ext.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys

#: An example input larger than this many elements would take minutes to
#: trace on a CPU (and gigabytes); --input-shape is a *shape*, not a dataset.
MAX_INPUT_ELEMENTS = 1 << 26


def parse_shape(text: str) -> tuple[int, ...]:
    """``"8,3,32,32"`` -> (8, 3, 32, 32); positive integers only."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"--input-shape must be comma-separated positive integers (e.g. 8,3,32,32), got {text!r}"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"--input-shape must be comma-separated positive integers (e.g. 8,3,32,32), got {text!r}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ValueError(
            f"--input-shape {text} has {math.prod(shape)} elements, over the limit of "
            f"{MAX_INPUT_ELEMENTS}; a small batch gives the same graph"
        )
    return shape


@contextlib.contextmanager
def _as_if_run_alone(name: str):
    """sys.argv = [name] inside (restored after): the user's module does not see
    kfac-ext's own command line."""
    saved = sys.argv
    sys.argv = [name]
    try:
        yield
    finally:
        sys.argv = saved


def _exit_message(what: str, exc: SystemExit) -> str:
    return (
        f"--module: {what} called sys.exit({exc.code!r}); a module given to --module must "
        "build the model without exiting (guard script code with if __name__ == '__main__', "
        "and do not parse the command line at import)"
    )


def load_factory(spec: str):
    """The callable named by ``PKG.MOD:FACTORY`` (a function or a class); the
    current directory is searched last, so a module beside the user is found."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--module must look like PKG.MOD:FACTORY, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: a module next to the user is found
    try:
        with _as_if_run_alone(module_name):
            module = importlib.import_module(module_name)
    except SystemExit as e:
        raise ValueError(_exit_message(f"importing {module_name!r}", e)) from None
    except Exception as e:  # ImportError, or anything the module raises at import
        raise ValueError(f"--module: cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--module: {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"--module: {spec} is not callable (it is a {type(factory).__name__})")
    return factory


def build_model(spec: str):
    """Call the factory with no arguments; it must return an ``nn.Module``."""
    import torch.nn as nn

    factory = load_factory(spec)
    try:
        with _as_if_run_alone(spec):
            model = factory()
    except SystemExit as e:
        raise ValueError(_exit_message(f"{spec}()", e)) from None
    except Exception as e:
        raise ValueError(f"--module: {spec}() raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--module: {spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def example_input(shape: tuple[int, ...], seed: int = 0):
    """A seeded standard-normal input of ``shape`` (float32)."""
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def trace_graph(
    model,
    example,
    *,
    cost: str = "flops",
    num_accelerators: int = 2,
    num_cpus: int = 0,
    memory_cap: float | None = None,
):
    """The placement graph of ``model`` on ``example`` (fx trace + FLOP or
    measured costs), with the forward pass's own errors reported as one line."""
    from .fx_graph import from_module

    try:
        return from_module(
            model, (example,), cost=cost, num_accelerators=num_accelerators, num_cpus=num_cpus, memory_cap=memory_cap
        )
    except ValueError:
        raise
    except Exception as e:  # the model's forward on the example input failed
        raise ValueError(
            f"the model's forward failed on an input of shape {tuple(example.shape)}: {type(e).__name__}: {e}"
        ) from None


__all__ = ["MAX_INPUT_ELEMENTS", "build_model", "example_input", "load_factory", "parse_shape", "trace_graph"]
