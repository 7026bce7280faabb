"""spec.onnx_export: a spec written as ONNX computes, in onnxruntime, every node's output the float64 reference
computes on the spec, for every op kind; its weights are the spec's, bit for bit."""
import dataclasses

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from spec import onnx_export, ops
from spec.onnx_import import import_model, normalized_model
from spec.reference64 import Reference
from tests.conftest import ROOT, SEED_MODEL
from verify import reference

ONNX_ONLY = ("strided", "same_pool", "tanh", "activations", "opset9", "graph", "layers", "reductions", "batchnorm",
             "cancellation")  # the zoo models written with onnx.helper alone (fast)
EXPORTED = ("torch_script", "torch_dynamo", "blocks", "keras")


def _images(spec, seed=0) -> np.ndarray:
    """A few images (the model's fixed batch where it has one)."""
    shape = (spec.batch_size or 4, *spec.input_shape)
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _errors(spec, model, expected=None) -> dict:
    """{node: largest error relative to the node's largest value}, in graph order, of onnxruntime on the written file
    against `expected` (onnxruntime on the file the spec came from) or else the float64 reference."""
    x = _images(spec)
    written = dataclasses.replace(spec, layers=[dataclasses.replace(n, onnx_output=n.name) for n in spec.layers])
    got = reference.layer_outputs(model, written, x)
    expected = (reference.layer_outputs(expected, spec, x) if expected is not None else
                Reference(spec, spec.weights).outputs(x))
    return {n.name: float(np.abs(got[n.name] - expected[n.name]).max() / (np.abs(expected[n.name]).max() or 1.0))
            for n in spec.layers}


def _worst(spec, model, expected=None) -> tuple:
    """(largest relative error, its node)."""
    return max((error, name) for name, error in _errors(spec, model, expected).items())


def test_every_op_kind_of_the_registry_has_an_onnx_form():
    assert onnx_export.kinds() == set(ops.REGISTRY)


@pytest.mark.parametrize("name", ONNX_ONLY)
def test_zoo_models_written_out_compute_what_the_reference_computes(zoo, name):
    spec = import_model(zoo[name])
    worst, where = _worst(spec, onnx_export.to_onnx(spec), normalized_model(zoo[name]))
    assert worst < 1e-6, (name, where, worst)


@pytest.mark.slow  # the zoo's torch and tf2onnx exports (shared with other tests in a full run)
@pytest.mark.parametrize("name", EXPORTED)
def test_exported_models_written_out_compute_what_the_reference_computes(zoo, name):
    spec = import_model(zoo[name])
    model = onnx_export.to_onnx(spec)
    worst, where = _worst(spec, model, normalized_model(zoo[name]))
    assert worst < 1e-6, (name, where, worst)
    if spec.input_layout == "NHWC":  # the user's interface is kept: channels-last in, as the file read
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
        assert dims == [*spec.input_shape[1:], spec.input_shape[0]]


@pytest.mark.parametrize("path", [SEED_MODEL, ROOT / "spec" / "resnet20.onnx"], ids=["seed_cnn", "resnet20"])
def test_canonical_models_round_trip_with_their_weights_bit_for_bit(tmp_path, path):
    spec = import_model(path)
    onnx_export.save(spec, tmp_path / "out.onnx")
    written = onnx.load(str(tmp_path / "out.onnx"))
    stored = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    for key, value in spec.weights.items():
        assert np.array_equal(stored[key], value), key
    again = import_model(tmp_path / "out.onnx")
    assert [(n.kind, n.output_shape) for n in again.layers] == [(n.kind, n.output_shape) for n in spec.layers]
    x = _images(spec)
    np.testing.assert_allclose(Reference(again, again.weights).outputs(x)[again.output().name],
                               Reference(spec, spec.weights).outputs(x)[spec.output().name], rtol=0, atol=1e-12)


def test_the_comparison_catches_a_flatten_written_in_the_wrong_order(monkeypatch):
    """Negative control: a writer that ignores the (H, W, C) flatten order (Keras's and TensorFlow's, as a tf2onnx
    file flattens) is caught at the flatten."""
    seed = import_model(SEED_MODEL)
    layers = [dataclasses.replace(n, attrs={"order": "HWC"}) if n.kind == "flatten" else n for n in seed.layers]
    spec = dataclasses.replace(seed, layers=layers)
    assert _worst(spec, onnx_export.to_onnx(spec))[0] < 1e-5
    monkeypatch.setattr(onnx_export, "_flatten", lambda node, inputs, const: onnx_export._one("Flatten", node, inputs))
    errors = _errors(spec, onnx_export.to_onnx(spec))
    first = next(name for name, error in errors.items() if error > 1e-5)
    assert spec.node(first).kind == "flatten" and errors[first] > 1e-2


def test_onnx_backend_test_models_written_out_compute_what_the_reference_computes():
    """The onnx package's own test models (an outside yardstick) that import: each written out and compared."""
    from spec.onnx_import import ModelError
    from verify.survey import onnx_backend_models

    compared = 0
    for name, path in onnx_backend_models(("pytorch-converted", "pytorch-operator")):
        try:
            spec = import_model(path)
        except ModelError:
            continue
        worst, where = _worst(spec, onnx_export.to_onnx(spec), normalized_model(path))
        assert worst < 1e-6, (name, where, worst)
        compared += 1
    assert compared >= 10
