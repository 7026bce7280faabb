"""The op registry's float64 math: every op's backward against central finite differences, on random inputs
and parameters, with a planted wrong derivative as the negative control."""
import dataclasses

import numpy as np
import pytest

from spec import ops

# attrs and the input shape (no batch axis) each op kind is checked with
CASES = {
    "conv": ({"filters": 3, "kernel": (3, 2), "strides": (2, 1), "pads": (1, 0, 2, 1)}, (2, 6, 5)),
    "dense": ({"units": 4}, (5,)),
    "maxpool": ({"kernel": (2, 3), "strides": (2, 1), "pads": (1, 1, 0, 1)}, (2, 5, 6)),
    "avgpool": ({"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "count_include_pad": False},
                (2, 6, 6)),
    "relu": ({}, (3, 4, 4)),
    "tanh": ({}, (3, 4, 4)),
    "dropout": ({"rate": 0.5}, (6,)),
    "softmax": ({}, (7,)),
    "flatten": ({}, (2, 3, 3)),
}


def test_every_registered_op_has_a_gradient_case():
    assert set(CASES) == set(ops.REGISTRY)


def _params(op, attrs, in_shape, rng):
    shapes = {"conv": {"weight": (attrs.get("filters", 0), in_shape[0], *attrs.get("kernel", (1, 1))),
                       "bias": (attrs.get("filters", 0),)},
              "dense": {"weight": (in_shape[0], attrs.get("units", 0)), "bias": (attrs.get("units", 0),)}}
    return {p: rng.standard_normal(shapes[op.kind][p]) for p in op.param_names}


def _fd_errors(op, attrs, in_shape, seed=0):
    """Largest relative error of backward against finite differences of sum(r * y), over input and params."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *in_shape))
    params = _params(op, attrs, in_shape, rng)
    y, cache = op.forward(attrs, params, [x])
    assert y.shape[1:] == tuple(op.shape(attrs, [in_shape]))
    r = rng.standard_normal(y.shape)
    (dx,), dparams = op.backward(attrs, params, [x], y, cache, r)

    def objective():
        return float((op.forward(attrs, params, [x])[0] * r).sum())

    worst = 0.0
    for tensor, grad in [(x, dx), *((params[p], dparams[p]) for p in op.param_names)]:
        for index in map(tuple, rng.integers(0, tensor.shape, size=(6, tensor.ndim))):
            h, keep = 1e-6, tensor[index]
            tensor[index] = keep + h
            up = objective()
            tensor[index] = keep - h
            down = objective()
            tensor[index] = keep
            numeric = (up - down) / (2 * h)
            worst = max(worst, abs(grad[index] - numeric) / max(abs(numeric), 1e-3))
    return worst


@pytest.mark.parametrize("kind", sorted(CASES))
def test_backward_matches_finite_differences(kind):
    attrs, in_shape = CASES[kind]
    assert _fd_errors(ops.get(kind), attrs, in_shape) < 1e-5


def test_a_wrong_tanh_derivative_is_caught(monkeypatch):
    tanh = ops.get("tanh")
    wrong = dataclasses.replace(tanh, backward=lambda a, p, xs, y, c, g: ([g * (1 - y)], {}))  # planted: 1-y, not 1-y²
    assert _fd_errors(wrong, *CASES["tanh"]) > 1e-2


def test_parameters_are_asked_of_the_registry():
    assert [k for k, op in ops.REGISTRY.items() if op.params] == ["conv", "dense"]
    assert ops.get("conv").param_names == ("weight", "bias")
    with pytest.raises(KeyError, match="unknown op kind 'nope'"):
        ops.get("nope")
