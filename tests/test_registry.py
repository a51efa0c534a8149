"""The one registry helper behind STEs, weight quantizers and models: names, lookups and refusals."""

import pytest

from src.models import MODELS
from src.quant import STES, WQUANTS, WSTES
from src.quant.ste import STE
from src.registry import Registry


def test_the_three_registries_list_their_names():
    assert list(WQUANTS) == ["fp", "binary", "ternary", "uniform"] and list(WSTES) == ["identity", "clipped"]
    assert list(MODELS) == ["lenet5", "vgg11", "resnet", "resnet20", "tiny", "two_layer", "resnet18"]
    assert (STES.kind, WQUANTS.kind, WSTES.kind, MODELS.kind) == ("ste", "wquant", "wquant.ste", "model")


def test_register_by_name_attribute_or_given_name_and_look_up():
    reg = Registry("thing")

    @reg.register
    class A:
        name = "a"

    b = reg.register("b")(len)
    assert reg.lookup("a") is A and reg.lookup("b") is b is len
    with pytest.raises(ValueError, match=r"^unknown thing 'c'; valid names: a, b$"):
        reg.lookup("c")


def test_a_taken_name_is_refused_so_a_plugin_cannot_replace_a_built_in():
    class Relu(STE):
        name = "relu"

    with pytest.raises(ValueError, match=r"^ste 'relu' is registered twice"):
        STES.register(Relu)
    assert STES["relu"] is not Relu
