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
    "sigmoid": ({}, (3, 4)),
    "leakyrelu": ({"alpha": 0.1}, (3, 4)),
    "elu": ({"alpha": 0.7}, (3, 4)),
    "selu": (dict(ops.get("selu").attrs), (3, 4)),
    "softplus": ({}, (3, 4)),
    "hardsigmoid": ({"alpha": 0.3, "beta": 0.4}, (3, 4)),
    "hardswish": ({}, (3, 4)),
    "clip": ({"min": -0.5, "max": 0.6}, (3, 4)),
    "logsoftmax": ({}, (7,)),
    "globalavgpool": ({}, (3, 4, 5)),
    "batchnorm": ({"epsilon": 1e-3, "momentum": 0.9}, (3, 4, 4)),
    "lrn": ({"size": 4, "alpha": 0.3, "beta": 0.75, "bias": 2.0}, (6, 3, 3)),  # even size: an asymmetric window
    "scale": ({}, (3, 4, 4)),
    "shift": ({}, (3, 4, 4)),
    "channelshuffle": ({"groups": 3}, (6, 2, 2)),
    "pad": ({"pads": (2, 1, 1, 3), "mode": "reflect"}, (2, 4, 5)),
    "convtranspose": ({"filters": 3, "kernel": (3, 2), "strides": (2, 3), "pads": (1, 0, 0, 1),
                       "output_padding": (1, 2)}, (2, 4, 3)),
    "prelu": ({}, (3, 4, 4)),
    "instancenorm": ({"epsilon": 1e-3}, (3, 4, 5)),
    "depthtospace": ({"blocksize": 2, "mode": "CRD"}, (8, 2, 3)),
    "unsqueeze": ({}, (5,)),
    "reduce": ({"mode": "mean", "axes": [1, 3], "keepdims": True}, (3, 4, 5)),
    "tile": ({"repeats": [2, 1, 3]}, (2, 3, 2)),
}
# ops of several inputs: (attrs, input shapes)
MULTI = {"add": ({}, [(2, 3, 3), (2, 3, 3), (2, 3, 3)]), "concat": ({}, [(2, 3, 3), (1, 3, 3), (3, 3, 3)]),
         "mul": ({}, [(3, 4, 4), (3, 1, 1)])}
# grouped and dilated convolution, dilated max pooling
VARIANTS = {
    "depthwise conv, multiplier 2": ("conv", {"filters": 6, "kernel": (3, 3), "strides": (1, 1), "pads": (1, 1, 1, 1),
                                              "group": 3}, (3, 5, 5)),
    "grouped dilated conv": ("conv", {"filters": 4, "kernel": (3, 2), "strides": (2, 1), "pads": (2, 1, 0, 1),
                                      "group": 2, "dilations": (2, 3)}, (4, 7, 7)),
    "dilated max pool": ("maxpool", {"kernel": (2, 2), "strides": (1, 2), "pads": (0, 1, 1, 0),
                                     "dilations": (2, 2)}, (2, 6, 6)),
    "global mean, no kept axes": ("globalavgpool", {"keepdims": False}, (3, 2, 5)),
    "edge padding": ("pad", {"pads": (3, 0, 1, 2), "mode": "edge"}, (2, 3, 3)),
    "constant padding": ("pad", {"pads": (1, 2, 0, 1), "mode": "constant", "value": 1.5}, (2, 3, 3)),
    "dilated transposed conv": ("convtranspose", {"filters": 2, "kernel": (2, 3), "strides": (1, 2), "pads": (1, 1, 0, 2),
                                                  "dilations": (2, 2)}, (3, 4, 4)),
    "depth to space, DCR": ("depthtospace", {"blocksize": 2, "mode": "DCR"}, (8, 2, 3)),
    "softmax over W": ("softmax", {"axis": 3}, (2, 3, 4)),
    "log softmax over channels": ("logsoftmax", {}, (3, 2, 2)),
    "flatten in HWC order": ("flatten", {"order": "HWC"}, (3, 2, 4)),
    "sum over H, no kept axes": ("reduce", {"mode": "sum", "axes": [2], "keepdims": False}, (3, 4, 5)),
    "mean over C and H to a vector": ("reduce", {"mode": "mean", "axes": [1, 2], "keepdims": False}, (3, 4, 5)),
    "batchnorm in training": ("batchnorm", {"epsilon": 1e-3, "momentum": 0.9, "training": True}, (3, 4, 4)),
}


def test_every_registered_op_has_a_gradient_case():
    assert set(CASES) | set(MULTI) == set(ops.REGISTRY)


def _params(op, attrs, in_shape, rng):
    channels = in_shape[0]
    shapes = {"conv": {"weight": (attrs.get("filters", 0), channels // attrs.get("group", 1),
                                  *attrs.get("kernel", (1, 1))),
                       "bias": (attrs.get("filters", 0),)},
              "dense": {"weight": (in_shape[0], attrs.get("units", 0)), "bias": (attrs.get("units", 0),)},
              "batchnorm": dict.fromkeys(("scale", "bias", "mean", "var"), (channels,)),
              "convtranspose": {"weight": (channels, attrs.get("filters", 0), *attrs.get("kernel", (1, 1))),
                                "bias": (attrs.get("filters", 0),)},
              "instancenorm": {"scale": (channels,), "bias": (channels,)},
              "scale": {"value": (channels, 1, 1)}, "shift": {"value": (channels, 1, 1)},
              "prelu": {"slope": (channels, 1, 1)}}
    params = {p: rng.standard_normal(shapes[op.kind][p]) for p in op.param_names}
    if "var" in params:
        params["var"] = np.abs(params["var"]) + 0.1
    return params


def _fd_errors(op, attrs, in_shapes, seed=0):
    """Largest relative error of backward against finite differences of sum(r * y), over inputs and params."""
    in_shapes = in_shapes if isinstance(in_shapes, list) else [in_shapes]
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((2, *shape)) for shape in in_shapes]
    params = _params(op, attrs, in_shapes[0], rng)
    y, cache = op.forward(attrs, params, xs)
    assert y.shape[1:] == tuple(op.shape(attrs, in_shapes))
    r = rng.standard_normal(y.shape)
    dxs, dparams = op.backward(attrs, params, xs, y, cache, r)
    assert len(dxs) == len(xs)

    def objective():
        return float((op.forward(attrs, params, xs)[0] * r).sum())

    worst = 0.0
    for tensor, grad in [*zip(xs, dxs), *((params[p], dparams[p]) for p in op.param_names)]:
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


@pytest.mark.parametrize("kind", sorted(CASES) + sorted(MULTI))
def test_backward_matches_finite_differences(kind):
    attrs, in_shape = CASES[kind] if kind in CASES else MULTI[kind]
    assert _fd_errors(ops.get(kind), attrs, in_shape) < 1e-5


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_grouped_and_dilated_windows_match_finite_differences(variant):
    kind, attrs, in_shape = VARIANTS[variant]
    assert _fd_errors(ops.get(kind), attrs, in_shape) < 1e-5


@pytest.mark.parametrize("variant", ["depthwise conv, multiplier 2", "grouped dilated conv", "dilated max pool"])
def test_grouped_and_dilated_forward_matches_onnxruntime(variant):
    """The forward the gradients are checked against is ONNX's: onnxruntime on a one-node model."""
    from onnx import numpy_helper

    kind, attrs, in_shape = VARIANTS[variant]
    op = ops.get(kind)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *in_shape)).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in _params(op, attrs, in_shape, rng).items()}
    onnx_attrs = {"kernel_shape": list(attrs["kernel"]), "strides": list(attrs["strides"]),
                  "pads": [attrs["pads"][i] for i in (0, 1, 2, 3)], "dilations": list(attrs.get("dilations", (1, 1)))}
    inits = []
    if kind == "conv":
        onnx_attrs["group"] = attrs["group"]
        inits = [numpy_helper.from_array(params["weight"], "w"), numpy_helper.from_array(params["bias"], "b")]
    expected = _onnxruntime_one_node("Conv" if kind == "conv" else "MaxPool", onnx_attrs, inits, x)
    got, _ = op.forward(attrs, {k: v.astype(np.float64) for k, v in params.items()}, [x.astype(np.float64)])
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4


def _onnxruntime_one_node(op_type, onnx_attrs, inits, x):
    """onnxruntime's output of a one-node model reading x and the initializers `inits`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["x"] + [t.name for t in inits], ["y"], **onnx_attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_wrong_tanh_derivative_is_caught(monkeypatch):
    tanh = ops.get("tanh")
    wrong = dataclasses.replace(tanh, backward=lambda a, p, xs, y, c, g: ([g * (1 - y)], {}))  # planted: 1-y, not 1-y²
    assert _fd_errors(wrong, *CASES["tanh"]) > 1e-2


def test_parameters_are_asked_of_the_registry():
    assert [k for k, op in ops.REGISTRY.items() if op.params] == ["conv", "dense", "batchnorm", "scale", "shift", "convtranspose",
                                                                "prelu", "instancenorm"]
    assert ops.get("conv").param_names == ("weight", "bias")
    with pytest.raises(KeyError, match="unknown op kind 'nope'"):
        ops.get("nope")


@pytest.mark.parametrize("size", [3, 5])  # onnxruntime runs odd sizes only (onnx's ReferenceEvaluator's LRN is wrong)
def test_lrn_forward_is_onnx_s_with_alpha_divided_by_size(size):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    attrs = {"size": size, "alpha": 0.3, "beta": 0.75, "bias": 2.0}
    x = np.random.default_rng(2).standard_normal((2, 6, 3, 3)).astype(np.float32)
    node = helper.make_node("LRN", ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got, _ = ops.get("lrn").forward(attrs, {}, [x.astype(np.float64)])
    assert np.abs(got - expected).max() < 1e-5
    tf_style, _ = ops.get("lrn").forward({**attrs, "alpha": attrs["alpha"] * size}, {}, [x.astype(np.float64)])
    assert np.abs(tf_style - expected).max() > 1e-3  # alpha not divided by size: the trap is visible at this scale


ONNX_FORWARD = {  # (ONNX op, its attributes, the registry's attrs, input shape)
    "reflect pad": ("Pad", {"mode": "reflect"}, VARIANTS["edge padding"][1] | {"mode": "reflect"}, (2, 4, 4)),
    "edge pad": ("Pad", {"mode": "edge"}, VARIANTS["edge padding"][1], (2, 3, 3)),
    "constant pad": ("Pad", {"mode": "constant"}, VARIANTS["constant padding"][1], (2, 3, 3)),
    "dilated transposed conv": ("ConvTranspose", {}, VARIANTS["dilated transposed conv"][1], (3, 4, 4)),
    "transposed conv, output padding": ("ConvTranspose", {}, CASES["convtranspose"][0], (2, 4, 3)),
    "depth to space, DCR": ("DepthToSpace", {"blocksize": 2, "mode": "DCR"}, VARIANTS["depth to space, DCR"][1],
                            (8, 2, 3)),
    "depth to space, CRD": ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}, CASES["depthtospace"][0], (8, 2, 3)),
    "instance norm": ("InstanceNormalization", {"epsilon": 1e-3}, CASES["instancenorm"][0], (3, 4, 5)),
    "mean over C and W": ("ReduceMean", {"axes": [1, 3], "keepdims": 1}, CASES["reduce"][0], (3, 4, 5)),
    "sum over H, no kept axes": ("ReduceSum", {"keepdims": 0}, VARIANTS["sum over H, no kept axes"][1], (3, 4, 5)),
    "mean over C and H to a vector": ("ReduceMean", {"axes": [1, 2], "keepdims": 0},
                                      VARIANTS["mean over C and H to a vector"][1], (3, 4, 5)),
    "tile": ("Tile", {}, CASES["tile"][0], (2, 3, 2)),
}


@pytest.mark.parametrize("case", sorted(ONNX_FORWARD))
def test_new_op_forward_matches_onnxruntime(case):
    """Padding modes, transposed convolution, depth to space and instance norm are ONNX's as onnxruntime runs them."""
    from onnx import numpy_helper

    op_type, onnx_attrs, attrs, in_shape = ONNX_FORWARD[case]
    op = ops.get({"Pad": "pad", "ConvTranspose": "convtranspose", "DepthToSpace": "depthtospace",
                  "InstanceNormalization": "instancenorm", "ReduceMean": "reduce", "ReduceSum": "reduce",
                  "Tile": "tile"}[op_type])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *in_shape)).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in _params(op, attrs, in_shape, rng).items()}
    inits = [numpy_helper.from_array(params[p], p) for p in op.param_names]
    if op_type == "Pad":
        top, left, bottom, right = attrs["pads"]
        inits = [numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), "pads"),
                 numpy_helper.from_array(np.array(attrs.get("value", 0.0), np.float32), "value")]
    if op_type == "ConvTranspose":
        onnx_attrs = {"kernel_shape": list(attrs["kernel"]), "strides": list(attrs["strides"]),
                      "pads": list(attrs["pads"]), "dilations": list(attrs.get("dilations", (1, 1))),
                      "output_padding": list(attrs.get("output_padding", (0, 0)))}
    if op_type == "ReduceSum":  # opset 13 on: its axes are an input
        inits = [numpy_helper.from_array(np.array(attrs["axes"], np.int64), "axes")]
    if op_type == "Tile":
        inits = [numpy_helper.from_array(np.array([1, *attrs["repeats"]], np.int64), "repeats")]
    expected = _onnxruntime_one_node(op_type, onnx_attrs, inits, x)
    got, _ = op.forward(attrs, {k: v.astype(np.float64) for k, v in params.items()}, [x.astype(np.float64)])
    if op.kind == "reduce":  # recorded with the dropped axes as 1 (or as a vector); the values in ONNX's order
        expected = expected.reshape(got.shape)
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4


def _batchnorm_training_in_onnxruntime(x, params, epsilon, momentum):
    """onnxruntime's BatchNormalization with training_mode=1: (y, running mean, running variance)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y", "mean_out", "var_out"],
                            epsilon=epsilon, momentum=momentum, training_mode=1)
    graph = helper.make_graph([node], "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.output],
                              initializer=[numpy_helper.from_array(v, k) for k, v in params.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_batchnorm_training_form_and_running_statistics_are_onnx_s():
    """The batch's mean and biased variance normalise; the running ones move by ONNX's momentum (the old value's
    weight). Negative controls: PyTorch's momentum convention and the unbiased batch variance are both visible."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 3, 5, 5)) * 2 + 1).astype(np.float32)
    params = {k: rng.standard_normal(3).astype(np.float32) for k in ("scale", "bias", "mean")}
    params["var"] = (np.abs(rng.standard_normal(3)) + 0.5).astype(np.float32)
    y, mean, var = _batchnorm_training_in_onnxruntime(x, params, 1e-3, 0.8)
    op, attrs = ops.get("batchnorm"), {"epsilon": 1e-3, "momentum": 0.8, "training": True}
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    got, cache = op.forward(attrs, p64, [x.astype(np.float64)])
    state = op.state(attrs, p64, [x.astype(np.float64)], cache)
    assert np.abs(got - y).max() < 1e-5
    assert np.abs(state["mean"] - mean).max() < 1e-6 and np.abs(state["var"] - var).max() < 1e-6
    torch_convention = op.state({**attrs, "momentum": 0.2}, p64, [x], cache)  # 0.8 read as the new batch's weight
    assert np.abs(torch_convention["mean"] - mean).max() > 1e-2
    unbiased = 0.8 * p64["var"] + 0.2 * x.astype(np.float64).var(axis=(0, 2, 3), ddof=1)
    assert np.abs(unbiased - var).max() > 1e-3
