"""kfac_ext: distributed K-FAC preconditioning and optimal device placement for PyTorch.

``kfac_ext.KFACPreconditioner`` and ``kfac_ext.ops`` are loaded on first use
(PEP 562), so that ``kfac_ext.placement`` and the ``kfac-ext place`` command,
which need neither torch nor the compiled ops, start without loading them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["KFACPreconditioner", "ops", "register_layer_type"]


def __getattr__(name: str):
    if name == "KFACPreconditioner":
        from kfac_ext.preconditioner import KFACPreconditioner
        return KFACPreconditioner
    if name == "register_layer_type":
        from kfac_ext.layer_types import register_layer_type
        return register_layer_type
    if name == "ops":
        return importlib.import_module("kfac_ext.ops")
    raise AttributeError(f"module 'kfac_ext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
