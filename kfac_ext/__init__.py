"""kfac_ext: distributed K-FAC preconditioning and optimal device placement for PyTorch."""
from kfac_ext import _C  # noqa: F401  (loads the library: registers torch.ops.kfac_ext.*)
from kfac_ext import ops  # noqa: F401

__version__ = "0.1.0"
