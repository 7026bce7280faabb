"""Every registered library fulfils the library interface (builders.interface): its builder and trainer
modules have every protocol member, its weight conversions invert each other, and it has a method for every
op of the registry or says, as data here, why not."""
import importlib

import numpy as np
import pytest

from builders import LIBRARIES, interface
from spec import ops
from spec.onnx_import import import_model
from tests.conftest import SEED_MODEL

# (library, op kind) pairs a library cannot express faithfully, with the reason; empty today
UNSUPPORTED: dict = {}


def _builder(library):
    return importlib.import_module(LIBRARIES[library][0])


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_builder_and_trainer_fulfil_the_protocols(library):
    builder = _builder(library)
    trainer = importlib.import_module(f"trainers.{LIBRARIES[library][0].split('.')[-1]}")
    assert interface.missing(builder, interface.BUILDER_FUNCTIONS) == []
    assert interface.missing(trainer, interface.TRAINER_FUNCTIONS) == []
    assert builder.NAME == trainer.NAME == library


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_every_registered_op_has_a_method_or_a_stated_reason(library):
    have = set(interface.supported_kinds(_builder(library)))
    lacking = {kind for kind in ops.REGISTRY if kind not in have}
    assert lacking == {k for (lib, k) in UNSUPPORTED if lib == library}, lacking


@pytest.fixture(scope="module")
def specs(zoo):
    return [import_model(SEED_MODEL), *(import_model(p) for name, p in zoo.items() if not name.startswith("torch"))]


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_weight_conversions_round_trip(library, specs):
    builder = _builder(library)
    rng = np.random.default_rng(0)
    for spec in specs:
        for node in spec.parametric():
            for param, value in spec.params(node).items():
                value = rng.standard_normal(value.shape).astype(np.float32)
                native = builder.to_native(spec, node, param, value)
                assert native.size == value.size
                back = builder.to_canonical(spec, node, param, native)
                assert back.shape == value.shape and np.array_equal(back, value), (spec.source, node.name, param)


def test_a_library_without_an_op_says_which_op():
    node = import_model(SEED_MODEL).layers[0]
    fake = type(interface)("fake")
    fake.NAME = "fake"
    with pytest.raises(interface.Unsupported, match="conv1: fake has no 'conv' op"):
        interface.op_function(fake, node)
