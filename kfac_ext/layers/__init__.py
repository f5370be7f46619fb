"""K-FAC layer types: what a module's Kronecker factors are and how its gradient is read and written.

``base.py`` holds :class:`KFACLayer` (``nn.Linear`` and ``nn.Conv2d``, and the
base of every other type); ``conv1d.py``, ``attention.py`` and ``embedding.py``
one type each; ``registry.py`` which module becomes which type (and
:func:`register_layer_type` for a user's own); ``tied.py`` weights shared by
several layers. How to add a type: README.md in this folder.
"""

from kfac_ext.layers.base import KFACLayer
from kfac_ext.layers.registry import LayerType, register_layer_type, unregister_layer_type

__all__ = ["KFACLayer", "LayerType", "register_layer_type", "unregister_layer_type"]
