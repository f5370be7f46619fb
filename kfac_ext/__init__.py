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

from typing import Any

__version__ = "0.1.0"
__all__ = ["KFACPreconditioner", "ops", "preconditioner", "enums", "scheduler", "register_layer_type"]


def __getattr__(name: str) -> Any:
    # One static import per name, so that the import graph (tests/test_package_structure.py,
    # mypy, ruff) sees every module this can load; `import kfac_ext.x as x` loads the
    # submodule before reading the attribute, so it does not call back in here.
    if name == "KFACPreconditioner":
        from kfac_ext.preconditioner import KFACPreconditioner

        return KFACPreconditioner
    if name == "register_layer_type":
        from kfac_ext.layers.registry import register_layer_type

        return register_layer_type
    # The submodules a kfac-pytorch program reaches as attributes of `import kfac`.
    if name == "ops":
        import kfac_ext.ops as ops

        return ops
    if name == "preconditioner":
        import kfac_ext.preconditioner as preconditioner

        return preconditioner
    if name == "enums":
        import kfac_ext.enums as enums

        return enums
    if name == "scheduler":
        import kfac_ext.scheduler as scheduler

        return scheduler
    if name == "schedules":
        import kfac_ext.schedules as schedules

        return schedules
    if name == "hyperparams":
        import kfac_ext.hyperparams as hyperparams

        return hyperparams
    if name == "gpt_neox":
        import kfac_ext.gpt_neox as gpt_neox  # raises the ImportError that names it unsupported

        return gpt_neox
    from kfac_ext.kfac_pytorch_names import refuse_internal  # no torch: enums only

    raise refuse_internal("module 'kfac_ext'", name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
