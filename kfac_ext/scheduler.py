"""kfac-pytorch's ``kfac.scheduler.LambdaParamScheduler`` for kfac_ext's preconditioner.

Each ``*_lambda`` is a callable of the step (or of whatever number is passed to
``step(step=...)``, e.g. the epoch) returning a *factor*: every ``step()``
multiplies the hyperparameter's current number by it (the update intervals are
then truncated to an int, as in kfac-pytorch). So ``lambda e: 0.5 if e in (20, 30)
else 1`` halves the damping at epochs 20 and 30, and the effect compounds.

It composes with kfac_ext's own schedules by refusing to touch one: a
hyperparameter given to the preconditioner as a callable of the step (a schedule,
an ``AdaptiveDamping``) cannot also be rescaled, and naming a lambda for it is a
``ValueError`` at construction, as in kfac-pytorch. The new values go through
:meth:`KFACPreconditioner.set_hyperparameters`: all are checked before any is
set (an interval that truncates to 0 is refused, where kfac-pytorch would divide
by zero at its next step), and they are saved with the preconditioner's
``state_dict()``, so a resumed run continues from the rescaled numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from kfac_ext.kfac_pytorch_names import refuse_internal
from kfac_ext.schedules import Hyperparameter

if TYPE_CHECKING:
    from kfac_ext.preconditioner import KFACPreconditioner

Factor = Callable[[int], float]
# Intervals are step counts: kfac-pytorch truncates their rescaled value to an int.
_INTEGER = ("factor_update_steps", "inv_update_steps")


def __getattr__(name: str) -> NoReturn:  # kfac.scheduler also exposes BaseKFACPreconditioner
    raise refuse_internal(f"module {__name__!r}", name)


class LambdaParamScheduler:
    """Rescales a preconditioner's hyperparameters by factors of the step.

    Call ``step()`` after ``preconditioner.step()`` (the factor is computed at
    ``preconditioner.steps``) or ``step(step=epoch)`` once per epoch.
    """

    def __init__(
        self,
        preconditioner: KFACPreconditioner,
        *,
        factor_update_steps_lambda: Factor | None = None,
        inv_update_steps_lambda: Factor | None = None,
        damping_lambda: Factor | None = None,
        factor_decay_lambda: Factor | None = None,
        kl_clip_lambda: Factor | None = None,
        lr_lambda: Factor | None = None,
    ) -> None:
        given = {
            "factor_update_steps": factor_update_steps_lambda,
            "inv_update_steps": inv_update_steps_lambda,
            "damping": damping_lambda,
            "factor_decay": factor_decay_lambda,
            "kl_clip": kl_clip_lambda,
            "lr": lr_lambda,
        }
        self._lambdas: dict[str, Factor] = {}
        for name, fn in given.items():
            if fn is None:
                continue
            if not callable(fn):
                raise ValueError(f"{name}_lambda must be a callable of the step returning a factor; got {fn!r}")
            h = getattr(preconditioner, name, None)
            if not isinstance(h, Hyperparameter):
                raise TypeError(
                    f"LambdaParamScheduler needs a kfac_ext KFACPreconditioner (its "
                    f"{name} is a kfac_ext.schedules.Hyperparameter); got "
                    f"{type(preconditioner).__name__}"
                )
            if callable(h.value):
                raise ValueError(
                    f"preconditioner.{name} is already a callable (a schedule of "
                    f"the step) and cannot also be rescaled by {name}_lambda"
                )
            if h.value is None:
                raise ValueError(f"preconditioner.{name} is None (turned off); {name}_lambda has nothing to rescale")
            self._lambdas[name] = fn
        self._preconditioner = preconditioner

    def step(self, step: int | None = None) -> None:
        """Multiply each scheduled hyperparameter by its lambda's factor at ``step``
        (default: ``preconditioner.steps``)."""
        p = self._preconditioner
        at = p.steps if step is None else step
        values = {}
        for name, fn in self._lambdas.items():
            value = getattr(p, name).value * fn(at)
            values[name] = int(value) if name in _INTEGER else value
        p.set_hyperparameters(**values)

    def __repr__(self) -> str:
        return f"LambdaParamScheduler({', '.join(f'{n}_lambda' for n in self._lambdas)})"
