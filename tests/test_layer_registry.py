"""How a module finds its K-FAC layer type: the built-ins register from their own
files (the package imports every file of kfac_ext/layers/), their matches are
disjoint, and a user's registration comes first."""

import pathlib
import sys

import pytest
import torch
from torch import nn

import kfac_ext
import kfac_ext.layers
from kfac_ext.layers import registry

LAYERS_DIR = pathlib.Path(kfac_ext.layers.__file__).parent


class Conv1D(nn.Module):
    """Hugging Face's Conv1D as its duck type sees it: the class name, ``nf`` and a 2-D weight."""

    def __init__(self, nf=3, nx=4):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))


# One module of every kind a built-in type claims, and the factory expected for it.
ZOO = [
    (lambda: nn.Linear(4, 3), "linear_conv.linear_conv_layers"),
    (lambda: nn.Conv2d(2, 3, 3), "linear_conv.linear_conv_layers"),
    (lambda: nn.Conv1d(2, 3, 3), "conv1d.conv1d_layers"),
    (lambda: nn.MultiheadAttention(8, 2), "attention.attention_layers"),
    (lambda: nn.MultiheadAttention(8, 2).out_proj, "linear_conv.linear_conv_layers"),  # a Linear subclass
    (lambda: nn.Embedding(10, 4), "embedding.embedding_layers"),
    (lambda: Conv1D(), "hf_conv1d.hf_conv1d_layers"),
]


def test_every_file_of_the_folder_is_imported_with_the_package():
    files = {p.stem for p in LAYERS_DIR.glob("*.py") if p.stem != "__init__"}
    assert {"base", "registry", "tied", "attention", "embedding", "hf_conv1d"} <= files  # the scan reads the folder
    assert all(f"kfac_ext.layers.{f}" in sys.modules for f in files)


def test_every_built_in_type_is_defined_in_a_file_of_the_folder():
    types = registry.builtin_layer_types()
    assert types, "no built-in layer type registered"
    for t in types:
        module = t.factory.__module__
        assert module.startswith("kfac_ext.layers.") and (LAYERS_DIR / f"{module.rpartition('.')[2]}.py").exists()
    assert len({t.factory for t in types}) == len(types)  # each registered once, however often imported


@pytest.mark.parametrize(("make", "expected"), ZOO, ids=[e for _, e in ZOO])
def test_each_module_matches_exactly_one_built_in_type(make, expected):
    module = make()
    matching = [t.describe() for t in registry.builtin_layer_types() if t.matches(module)]
    assert matching == [expected]
    assert registry.layer_type_for(module).describe() == expected


def test_a_module_two_built_ins_match_is_refused_by_name(monkeypatch):
    overlap = registry.LayerType(nn.Linear, lambda name, m, dtype: [])
    monkeypatch.setattr(registry, "_BUILTIN", [*registry._BUILTIN, overlap])
    with pytest.raises(
        TypeError, match=r"Linear matches 2 built-in K-FAC layer types \(linear_conv.linear_conv_layers, "
    ):
        registry.layer_type_for(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="must be disjoint"):
        kfac_ext.KFACPreconditioner(nn.Sequential(nn.Linear(2, 2)))
    assert registry.layer_type_for(nn.Embedding(3, 2)).describe() == "embedding.embedding_layers"  # others unaffected


def test_a_users_type_takes_precedence_over_the_built_in_one():
    def two_halves(name, module, dtype):
        return [kfac_ext.layers.KFACLayer(name, module, dtype)]

    registry.register_layer_type((nn.Linear, nn.Bilinear), two_halves)
    try:
        assert registry.layer_type_for(nn.Linear(2, 2)).factory is two_halves
    finally:
        registry.unregister_layer_type((nn.Linear, nn.Bilinear))
    assert registry.layer_type_for(nn.Linear(2, 2)).describe() == "linear_conv.linear_conv_layers"


@pytest.mark.parametrize("match", [(), (nn.Linear, 3), "Linear"])
def test_a_match_that_is_no_class_tuple_or_callable_is_refused(match):
    with pytest.raises(TypeError, match="match must be a class, a tuple of classes or a callable"):
        registry.register_layer_type(match, lambda *a: [])
    with pytest.raises(TypeError, match="match must be"):
        registry.builtin_layer_type(match)(lambda *a: [])
