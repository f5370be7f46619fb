"""kfac_ext: distributed K-FAC preconditioning and optimal device placement for PyTorch.

``kfac_ext.KFACPreconditioner`` and the submodules that need torch are loaded on
first use (PEP 562), so that ``kfac_ext.placement`` and the ``kfac-ext place``
command, which need neither torch nor the compiled ops, start without loading
them. The submodules a kfac-pytorch program reaches through the package
(``kfac.preconditioner.KFACPreconditioner``, ``kfac.enums.ComputeMethod``,
``kfac.scheduler.LambdaParamScheduler``) are attributes too, so
``import kfac_ext as kfac`` runs it; ``kfac_ext.gpt_neox`` raises an ImportError
saying that kfac-pytorch's GPT-NeoX integration is not supported.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["KFACPreconditioner", "ops", "preconditioner", "enums", "scheduler", "register_layer_type"]
# Submodules loaded as attributes on first access, as `import kfac` gives kfac-pytorch's.
_LAZY_SUBMODULES = ("ops", "preconditioner", "enums", "scheduler", "schedules", "hyperparams", "gpt_neox")


def __getattr__(name: str) -> Any:
    if name == "KFACPreconditioner":
        from kfac_ext.preconditioner import KFACPreconditioner

        return KFACPreconditioner
    if name == "register_layer_type":
        from kfac_ext.layer_types import register_layer_type

        return register_layer_type
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"kfac_ext.{name}")
    from kfac_ext.kfac_pytorch_names import refuse_internal  # no torch: enums only

    raise refuse_internal("module 'kfac_ext'", name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
