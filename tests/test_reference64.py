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


@pytest.fixture(scope="module")
def resnet20():
    from spec import resnet20 as model
    spec = import_model(model.DEFAULT_PATH)
    return spec, training.datasets(cifar10.find(), experiments.load("seed-2017"))


def _moved_weights(spec, seed=1):
    """The spec's weights with BatchNorm's scale, bias and running statistics moved off their identity values,
    so that every term of the gradient and of the running update shows."""
    rng = np.random.default_rng(seed)
    weights = dict(spec.weights)
    for name, value in spec.weights.items():
        if name.endswith((".scale", ".var")):
            weights[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif name.endswith((".bias", ".mean")) and "bn" in name:
            weights[name] = rng.uniform(-0.3, 0.3, value.shape).astype(np.float32)
    return weights


def _training_fd_errors(spec, x, y, probes):
    """Relative errors of the training-mode gradient against central differences with a small step (ReLUs whose
    input crosses 0 within the step bend the difference quotient by O(step))."""
    ref = reference64.Reference(spec, spec.weights, training=True)
    _, grads = ref.loss_and_grads(x, y)
    errors = {}
    for name, index in probes:
        h, keep = 1e-7, ref.params[name][index]
        ref.params[name][index] = keep + h
        up, _ = ref.loss_and_grads(x, y)
        ref.params[name][index] = keep - h
        down, _ = ref.loss_and_grads(x, y)
        ref.params[name][index] = keep
        numeric = (up - down) / (2 * h)
        errors[name] = abs(grads[name][index] - numeric) / max(abs(numeric), 1e-3)
    return grads, errors


RESNET_PROBES = [("stem_conv.weight", (3, 1, 2, 0)), ("stage1_block0_bn1.scale", (5,)),
                 ("stage2_block0_shortcut_bn.bias", (7,)), ("stage3_block2_conv2.weight", (10, 5, 1, 1)), ("fc.bias", (3,))]


@pytest.mark.slow  # about 20 s: 40 float64 passes of ResNet-20
def test_batchnorm_training_gradients_match_finite_differences(resnet20, monkeypatch):
    """ResNet-20 in training mode (batch statistics, logits with the softmax inside the loss): the gradient
    flows through each BatchNorm's batch mean and variance. Negative control: the inference form's backward
    (statistics held constant) under the training forward is caught."""
    spec, (x, y, _, _) = resnet20
    spec = dataclasses.replace(spec, weights=_moved_weights(spec))
    grads, errors = _training_fd_errors(spec, x[:4], y[:4], RESNET_PROBES)
    assert max(errors.values()) < 1e-3, errors
    assert not {f"{n.name}.{p}" for n in spec.layers if n.kind == "batchnorm" for p in ("mean", "var")} & set(grads)
    batchnorm = ops.REGISTRY["batchnorm"]

    def constant_statistics(attrs, params, xs, out, cache, g):  # planted: the batch statistics get no gradient
        return batchnorm.backward({**attrs, "training": False}, params, xs, out, cache, g)
    monkeypatch.setitem(ops.REGISTRY, "batchnorm", dataclasses.replace(batchnorm, backward=constant_statistics))
    _, errors = _training_fd_errors(spec, x[:4], y[:4], RESNET_PROBES)
    assert min(errors[n] for n in ("stem_conv.weight", "stage1_block0_bn1.scale")) > 1e-2, errors


def test_running_statistics_move_as_onnx_defines(resnet20):
    """The stem BatchNorm's running mean and variance after one training batch: momentum * running + (1 -
    momentum) * the batch's mean and biased variance of the convolution's output, as onnxruntime computes it."""
    spec, (x, y, _, _) = resnet20
    weights = _moved_weights(spec)
    spec = dataclasses.replace(spec, weights=weights)
    # two images: PyTorch's unbiased variance (n / (n - 1) over 2048 values) is then well beyond float32's error
    _, _, state = reference64.Reference(spec, weights, training=True).loss_grads_state(x[:2], y[:2])
    conv = layer_outputs(load_onnx(spec.source), spec, x[:2])["stem_conv"].astype(np.float64)
    m = spec.node("stem_bn").attrs["momentum"]
    want_mean = m * weights["stem_bn.mean"] + (1 - m) * conv.mean(axis=(0, 2, 3))
    want_var = m * weights["stem_bn.var"] + (1 - m) * conv.var(axis=(0, 2, 3))
    assert np.abs(state["stem_bn.mean"] - want_mean).max() < 1e-6
    assert np.abs(state["stem_bn.var"] - want_var).max() < 1e-6
    unbiased = m * weights["stem_bn.var"] + (1 - m) * conv.var(axis=(0, 2, 3), ddof=1)  # PyTorch's running update
    assert np.abs(state["stem_bn.var"] - unbiased).max() > 1e-5
    assert len(state) == 2 * sum(n.kind == "batchnorm" for n in spec.layers)
