"""The float64 training-step reference: gradients against finite differences, forward against onnxruntime."""
import dataclasses

import numpy as np
import pytest

import cifar10
from spec import experiments, ops, reference64, training
from spec.onnx_import import import_model, load_onnx
from tests.conftest import SEED_MODEL
from verify.reference import layer_outputs


@pytest.fixture(scope="module")
def seed():
    spec = import_model(SEED_MODEL)
    return spec, training.datasets(cifar10.find(), experiments.load("seed-2017"))


def _finite_difference_errors(spec, x, y, probes):
    ref = reference64.Reference(spec, spec.weights)
    _, grads = ref.loss_and_grads(x, y)
    errors = []
    for name, index in probes:
        h = 1e-6
        ref.params[name][index] += h
        up, _ = ref.loss_and_grads(x, y)
        ref.params[name][index] -= 2 * h
        down, _ = ref.loss_and_grads(x, y)
        ref.params[name][index] += h
        numeric = (up - down) / (2 * h)
        errors.append(abs(grads[name][index] - numeric) / max(abs(numeric), 1e-6))
    return errors


PROBES = [("conv1.weight", (3, 1, 2, 0)), ("conv2.bias", (4,)), ("conv4.weight", (10, 5, 1, 1)),
          ("dense1.weight", (100, 7)), ("dense2.bias", (3,))]


def test_gradients_match_finite_differences(seed):
    spec, (x, y, _, _) = seed
    assert max(_finite_difference_errors(spec, x[:4], y[:4], PROBES)) < 1e-5


def test_gradient_check_catches_a_wrong_max_pool_gradient(seed, monkeypatch):
    spec, (x, y, _, _) = seed
    maxpool = ops.REGISTRY["maxpool"]

    def wrong(attrs, params, xs, out, first, g):  # planted bug: gradient to the window's first element
        return maxpool.backward(attrs, params, xs, out, np.zeros_like(first), g)
    monkeypatch.setitem(ops.REGISTRY, "maxpool", dataclasses.replace(maxpool, backward=wrong))
    assert max(_finite_difference_errors(spec, x[:4], y[:4], PROBES)) > 1e-2


def test_forward_matches_onnxruntime(seed):
    # the libraries' first training steps against this reference: tests/test_training.py (rmsprop_facts)
    spec, (x, _, _, _) = seed
    p, _ = reference64.Reference(spec, spec.weights).forward(x[:16])
    assert np.abs(p - layer_outputs(load_onnx(SEED_MODEL), spec, x[:16])["softmax"]).max() < 1e-6
