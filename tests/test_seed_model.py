import numpy as np
import onnx

from spec import seed_model
from spec.onnx_import import import_model
from tests.conftest import SEED_MODEL


def test_generator_is_byte_identical_to_committed_model(tmp_path):
    fresh = seed_model.write(tmp_path / "seed.onnx")
    assert fresh.read_bytes() == SEED_MODEL.read_bytes()


def test_seed_model_passes_full_checker_and_has_2017_architecture():
    onnx.checker.check_model(onnx.load(str(SEED_MODEL)), full_check=True)
    spec = import_model(SEED_MODEL)
    assert spec.parameter_count() == 1_250_858
    assert [l.kind for l in spec.layers] == [
        "conv", "relu", "conv", "relu", "maxpool", "dropout", "conv", "relu", "conv", "relu", "maxpool",
        "dropout", "flatten", "dense", "relu", "dense", "softmax"]
    assert [l.output_shape for l in spec.layers if l.kind in ("conv", "maxpool", "flatten", "dense")] == [
        (32, 32, 32), (32, 30, 30), (32, 15, 15), (64, 15, 15), (64, 13, 13), (64, 6, 6), (2304,), (512,), (10,)]
    assert {l.attrs["rate"] for l in spec.layers if l.kind == "dropout"} == {0.25}


def test_initial_weights_are_glorot_uniform_with_zero_biases():
    spec = import_model(SEED_MODEL)
    for layer in spec.parametric():
        w = spec.weight(layer)
        if layer.kind == "conv":
            receptive = w.shape[2] * w.shape[3]
            fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        else:
            fan_in, fan_out = w.shape
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= limit
        assert np.abs(w).max() > 0.95 * limit  # spans the range, not a narrower distribution
        assert abs(w.std() - limit / np.sqrt(3)) < 0.05 * limit  # uniform: std = limit / sqrt(3)
        assert not spec.bias(layer).any()
