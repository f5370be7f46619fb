"""kfac_ext: distributed K-FAC preconditioning and optimal device placement for PyTorch."""
import torch  # noqa: F401  (loads libc10/libtorch before the extension that links them)

from kfac_ext import _C  # noqa: F401  (loads the library: registers torch.ops.kfac_ext.*)
from kfac_ext import ops  # noqa: F401
from kfac_ext.preconditioner import KFACPreconditioner

__version__ = "0.1.0"
__all__ = ["KFACPreconditioner", "ops"]
