"""spec.batchnorm: canonical, native and single-departure BatchNorm semantics, applied to the graph, and the float64
reference's running statistics under each library's native estimator against the libraries' own layers."""
import numpy as np
import pytest

from builders import LIBRARIES, native_batchnorm
from spec import batchnorm, ops
from spec.resnet20 import DEFAULT_PATH as RESNET20


@pytest.fixture(scope="module")
def resnet():
    from spec.onnx_import import import_model

    return import_model(RESNET20)


def _bn_attrs(spec):
    return [layer.attrs for layer in spec.layers if layer.kind == "batchnorm"]


def test_canonical_keeps_the_graph_s_own_and_native_takes_the_library_s(resnet):
    canonical = batchnorm.semantics(resnet, native_batchnorm("keras-tensorflow"), "canonical")
    assert all((a["momentum"], a["epsilon"], a["running_variance"]) == (b["momentum"], b["epsilon"], "biased")
               for a, b in zip(_bn_attrs(canonical), _bn_attrs(resnet)))
    assert batchnorm.departures(resnet, canonical) == []
    native = batchnorm.semantics(resnet, native_batchnorm("keras-tensorflow"), "native")
    assert {(a["momentum"], a["epsilon"]) for a in _bn_attrs(native)} == {(0.99, 1e-3)}
    assert batchnorm.departures(resnet, native) == ["BatchNorm momentum 0.99 (canonical 0.9)",
                                                    "BatchNorm epsilon 0.001 (canonical 1e-05)"]


@pytest.mark.parametrize("mode", batchnorm.DEPARTURES)
def test_a_departure_alone_changes_only_itself(resnet, mode):
    trained = batchnorm.semantics(resnet, native_batchnorm("keras-theano"), mode)
    (found,) = batchnorm.departures(resnet, trained)
    assert found.startswith(f"BatchNorm {mode.replace('-', ' ')} ")


def test_every_library_declares_a_native_layer_the_reference_can_run():
    for library in LIBRARIES:
        native = native_batchnorm(library)
        assert native.running_variance in ops.RUNNING_VARIANCE and 0 < native.momentum < 1 and native.epsilon > 0


def test_pytorch_s_own_layer_moves_the_running_variance_as_its_native_row_declares():
    """The registry's unbiased estimator against stock torch.nn.BatchNorm2d after one training forward; ONNX's
    biased one is measurably elsewhere (the planted-bug direction)."""
    import torch

    x = np.random.default_rng(3).standard_normal((4, 3, 5, 5))
    layer = torch.nn.BatchNorm2d(3, momentum=0.1, eps=1e-5).double()
    layer.train()
    layer(torch.from_numpy(x))
    params = {"scale": np.ones(3), "bias": np.zeros(3), "mean": np.zeros(3), "var": np.ones(3)}
    native = native_batchnorm("pytorch")
    op = ops.get("batchnorm")
    states = {}
    for estimator in ("unbiased", "biased"):
        attrs = {"momentum": native.momentum, "epsilon": native.epsilon, "training": True,
                 "running_variance": estimator}
        _, cache = op.forward(attrs, params, [x])
        states[estimator] = op.state(attrs, params, [x], cache)["var"]
    assert np.allclose(states["unbiased"], layer.running_var.numpy(), rtol=1e-12)
    assert not np.allclose(states["biased"], layer.running_var.numpy(), rtol=1e-3)
