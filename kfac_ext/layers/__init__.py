"""K-FAC layer types: what a module's Kronecker factors are and how its gradient is read and written.

``base.py`` holds :class:`KFACLayer` (the math of ``nn.Linear`` and ``nn.Conv2d``,
and the base of every other type); every other file but ``registry.py`` (which
module becomes which type, and :func:`register_layer_type` for a user's own) and
``tied.py`` (weights shared by several layers) registers one type
(``linear_conv.py``: Linear and Conv2d). How to add a
type: README.md in this folder.
"""

import importlib
import pkgutil

from kfac_ext.layers.base import KFACLayer
from kfac_ext.layers.registry import LayerType, register_layer_type, unregister_layer_type

# Every file of this folder is imported here, once, when the package is: a built-in
# layer type registers its factory in its own file (@builtin_layer_type), so adding
# one is adding a file, with no list to extend. This is discovery of the folder, not
# a lookup by name: nothing asks for a module or an attribute by a name it holds, and
# the order does not matter (registry.layer_type_for refuses a module that two
# built-ins match).
for _file in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_file.name}")

__all__ = ["KFACLayer", "LayerType", "register_layer_type", "unregister_layer_type"]
