"""kfac-pytorch and its example programs, imported from the git-ignored
third_party/kfac-pytorch (a clone of github.com/gpauloski/kfac-pytorch) or from an
installed ``kfac``; the tests that use them skip when neither is there.

Nothing of kfac-pytorch is copied into this repository. Stand-ins, all for
imports only, none on a path the tests compare:
- ``importlib.metadata.version``: a source tree has no installed metadata, which
  ``kfac/__init__.py`` reads for ``__version__`` only;
- ``torch.utils.tensorboard`` and ``torchinfo`` (the vision scripts import
  ``SummaryWriter`` and ``summary``; neither package is installed here),
  ``examples.language.dataset`` (imports torchtext, which has no build for
  torch 2.13) and ``examples.vision.datasets`` (torchvision's datasets): the tests
  call the scripts' ``parse_args`` and build their own synthetic data;
- ``torchvision`` where it does not import (here: torchvision 0.28's compiled ops
  do not load into torch 2.13, "operator torchvision::nms does not exist"): the
  ImageNet script imports its models, which the tests do not build.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import types
import warnings
from unittest import mock

import pytest

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "third_party", "kfac-pytorch")


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def kfac_pytorch():
    """kfac-pytorch's ``kfac`` package, or skip the test."""
    if os.path.isdir(os.path.join(SOURCE, "kfac")) and SOURCE not in sys.path:
        sys.path.insert(0, SOURCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "NVIDIA Apex is not installed"
        try:
            import kfac
        except importlib.metadata.PackageNotFoundError:
            sys.modules.pop("kfac", None)
            with mock.patch("importlib.metadata.version", return_value="source tree"):
                import kfac
        except ImportError:
            pytest.skip("kfac-pytorch is not in third_party/kfac-pytorch nor installed")
    if not hasattr(kfac, "scheduler"):  # e.g. the TensorFlow package that is also named kfac
        pytest.skip(f"the kfac found ({kfac.__file__}) is not kfac-pytorch")
    if not os.path.isdir(os.path.join(SOURCE, "examples")):
        pytest.skip("kfac-pytorch's examples need its source tree in third_party/kfac-pytorch")
    return kfac


def example(name: str):
    """The module ``examples.<name>`` of kfac-pytorch's source tree (import stand-ins
    in place while it loads)."""
    kfac_pytorch()
    stubs = {
        "torch.utils.tensorboard": _stub("torch.utils.tensorboard", SummaryWriter=None),
        "torchinfo": _stub("torchinfo", summary=None),
        "examples.language.dataset": _stub("examples.language.dataset", get_dataset=None),
        "examples.vision.datasets": _stub("examples.vision.datasets", get_cifar=None, get_imagenet=None),
    }
    try:
        import torchvision.models  # noqa: F401
    except Exception:  # noqa: BLE001  (any failure to load it: a stand-in will do)
        stubs["torchvision"] = _stub("torchvision")
        stubs["torchvision.models"] = stubs["torchvision"].models = _stub("torchvision.models")
    # A stand-in found in sys.modules is not attached to its package unless the
    # package was imported first ("import examples.vision.datasets as d" needs it).
    for package in ("examples.vision", "examples.language"):
        importlib.import_module(package)
    missing = {k: v for k, v in stubs.items() if k not in sys.modules}
    sys.modules.update(missing)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(f"examples.{name}")
    finally:  # the stand-ins only, not what the import loaded for real
        for key, stub in missing.items():
            if sys.modules.get(key) is stub:
                del sys.modules[key]


def parse_args(script, argv):
    """``script.parse_args()`` of a kfac-pytorch example with ``argv`` as its command line."""
    with mock.patch.object(sys, "argv", [script.__name__] + list(argv)):
        return script.parse_args()
