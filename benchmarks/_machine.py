"""The machine line every benchmark table prints; it lives in the package
(kfac_ext.app.machine) so that `kfac-ext bench` prints it the same way."""

from kfac_ext.app.machine import cpu_model, describe_machine

__all__ = ["cpu_model", "describe_machine"]
