"""Shared test set-up.

Shared helpers live in modules next to the tests and import by name (pytest's
``pythonpath`` in pyproject.toml holds tests/ and tests/placement/):
``_tensors`` (seeded tensors and error measures for the op tests),
``_kfac_reference`` (float64 K-FAC from the definitions), ``dist_utils``
(Gloo process groups on 127.0.0.1), ``_small_graphs`` / ``_small_modules``
(placement). This file makes the ``cuda`` marker skip without a CUDA device, and
points ``XDG_CACHE_HOME`` at a temporary folder for the session, so that no test
(``kfac-ext bench scaling --profile cpu`` caches its profile) writes the user's cache.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _private_cache_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
