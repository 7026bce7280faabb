"""A ModelSpec written out as ONNX: the canonical graph with whatever weights the spec holds (a library's trained
parameters and BatchNorm statistics, in the canonical layout), for onnxruntime and for the user to take away.

One `_<kind>` function per op kind of the registry (`spec.ops`; tests/test_onnx_export.py fails for a kind without
one): it returns the ONNX nodes computing the IR node's output from its inputs, and the initializers it adds.
Tensor names are the IR's: a node's output is named after the node, so a layer of the written file lines up with
the layer of the spec. Inference form: a BatchNorm trained in training mode is written with its running
statistics, a Dropout as ONNX's inference-mode Dropout. A spec whose input is channels-last ("NHWC", tf2onnx's
form) is written with that input and one Transpose to NCHW, as the file it came from.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from spec import ops
from spec.ir import ModelSpec, Node

OPSET = 17  # ReduceMean's axes are an attribute up to 17, ReduceSum's an input from 13: both written as such
PRODUCER = "onnx-cross-library-verifier"


def to_onnx(spec: ModelSpec, name: str = "model", doc: str = "") -> onnx.ModelProto:
    """The spec as an ONNX model that passes onnx.checker (full check, shapes inferred)."""
    nodes, initializers = [], []
    first = spec.input_name
    if spec.input_layout == "NHWC":
        first = f"{spec.input_name}__nchw"
        nodes.append(helper.make_node("Transpose", [spec.input_name], [first], name=first, perm=[0, 3, 1, 2]))
    renamed = {spec.input_name: first}
    for node in spec.layers:
        made, weights = _emit(spec, node, [renamed.get(t, t) for t in node.inputs])
        nodes += made
        initializers += [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), n)
                         for n, v in weights.items()]
    shape = list(spec.input_shape)
    if spec.input_layout == "NHWC":
        shape = shape[1:] + shape[:1]
    batch = spec.batch_size or "N"
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(spec.input_name, onnx.TensorProto.FLOAT, [batch, *shape])],
        [helper.make_tensor_value_info(spec.output().name, onnx.TensorProto.FLOAT,
                                       [batch, *spec.output().output_shape])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER,
                              doc_string=doc)
    model.ir_version = 8  # what OPSET 17 needs; onnxruntimes older than the newest IR still read the file
    onnx.checker.check_model(model, full_check=True)
    return model


def save(spec: ModelSpec, path, name: str = "model", doc: str = "") -> None:
    onnx.save(to_onnx(spec, name, doc), str(path))


def kinds() -> set:
    """The op kinds this module writes."""
    return {name[1:] for name in globals() if name.startswith("_") and name[1:] in ops.REGISTRY}


def _emit(spec: ModelSpec, node: Node, inputs: list) -> tuple:
    function = globals().get(f"_{node.kind}")
    if function is None:
        raise NotImplementedError(f"{node.name}: no ONNX form for op kind {node.kind!r} (spec.onnx_export)")
    weights = {f"{node.name}.{p}": v for p, v in spec.params(node).items()}

    def constant(suffix: str, value, dtype=np.int64) -> str:
        """An initializer the ONNX form needs beyond the node's parameters (a shape, pads, clip bounds)."""
        weights[f"{node.name}.{suffix}"] = np.asarray(value, dtype=dtype)
        return f"{node.name}.{suffix}"

    made = function(node, inputs, constant)
    return (made if isinstance(made, list) else [made]), weights


def _one(op_type: str, node: Node, inputs: list, **attrs):
    return helper.make_node(op_type, inputs, [node.name], name=node.name, **attrs)


def _window(node: Node, **more) -> dict:
    a = node.attrs
    return {"kernel_shape": list(a["kernel"]), "strides": list(a["strides"]), "pads": list(a["pads"]),
            **({"dilations": list(a["dilations"])} if "dilations" in a else {}), **more}


def _conv(node, inputs, const):
    return _one("Conv", node, [*inputs, f"{node.name}.weight", f"{node.name}.bias"],
                **_window(node, group=node.attrs.get("group", 1)))


def _convtranspose(node, inputs, const):
    extra = {"output_padding": list(node.attrs["output_padding"])} if "output_padding" in node.attrs else {}
    return _one("ConvTranspose", node, [*inputs, f"{node.name}.weight", f"{node.name}.bias"],
                **_window(node, **extra))


def _dense(node, inputs, const):  # canonical (in, out) is Gemm's B without transB
    return _one("Gemm", node, [*inputs, f"{node.name}.weight", f"{node.name}.bias"])


def _maxpool(node, inputs, const):
    return _one("MaxPool", node, inputs, **_window(node))


def _avgpool(node, inputs, const):
    return _one("AveragePool", node, inputs, **_window(node, count_include_pad=int(node.attrs["count_include_pad"])))


def _plain(op_type: str):
    """An op written one-to-one, its attributes the registry's (the ONNX names, with the node's values)."""
    def emit(node, inputs, const):
        attrs = {k: node.attrs.get(k, default) for k, default in ops.get(node.kind).attrs.items()}
        return _one(op_type, node, inputs, **attrs)
    return emit


_relu, _tanh, _sigmoid, _leakyrelu, _elu, _selu = map(_plain, ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu", "Selu"))
_softplus, _hardsigmoid, _hardswish = map(_plain, ("Softplus", "HardSigmoid", "HardSwish"))
_depthtospace = _plain("DepthToSpace")


def _instancenorm(node, inputs, const):
    return _one("InstanceNormalization", node, [*inputs, f"{node.name}.scale", f"{node.name}.bias"],
                epsilon=node.attrs.get("epsilon", 1e-5))


def _clip(node, inputs, const):
    low = const("min", node.attrs["min"], np.float32)
    return _one("Clip", node, [*inputs, low, const("max", node.attrs["max"], np.float32)])


def _dropout(node, inputs, const):  # inference mode: the identity, as the file a library would write
    return _one("Dropout", node, [*inputs, const("ratio", node.attrs.get("rate", 0.5), np.float32)])


def _softmax(node, inputs, const):
    return _one("Softmax", node, inputs, axis=node.attrs.get("axis", 1))


def _logsoftmax(node, inputs, const):
    return _one("LogSoftmax", node, inputs, axis=node.attrs.get("axis", 1))


def _flatten(node, inputs, const):
    if node.attrs.get("order", "CHW") == "CHW":
        return _one("Flatten", node, inputs, axis=1)
    view = f"{node.name}__nhwc"  # the (H, W, C) order: flattened channels-last, as Keras and TensorFlow flatten
    return [helper.make_node("Transpose", inputs, [view], name=view, perm=[0, 2, 3, 1]),
            _one("Flatten", node, [view], axis=1)]


def _add(node, inputs, const):
    return _one("Add" if len(inputs) == 2 else "Sum", node, inputs)


def _mul(node, inputs, const):
    return _one("Mul", node, inputs)


def _concat(node, inputs, const):
    return _one("Concat", node, inputs, axis=1)


def _globalavgpool(node, inputs, const):
    if node.attrs.get("keepdims", True):
        return _one("GlobalAveragePool", node, inputs)
    pooled = f"{node.name}__pooled"
    return [helper.make_node("GlobalAveragePool", inputs, [pooled], name=pooled), _one("Flatten", node, [pooled])]


def _batchnorm(node, inputs, const):  # the inference form: the running statistics (training mode is the harness's)
    return _one("BatchNormalization", node, [*inputs, *(f"{node.name}.{p}" for p in ("scale", "bias", "mean", "var"))],
                epsilon=node.attrs["epsilon"], momentum=node.attrs.get("momentum", 0.9))


def _lrn(node, inputs, const):
    return _one("LRN", node, inputs, **{k: node.attrs[k] for k in ("size", "alpha", "beta", "bias")})


def _scale(node, inputs, const):  # value at the input's rank without the batch axis: ONNX broadcasts it right-aligned
    return _one("Mul", node, [*inputs, f"{node.name}.value"])


def _shift(node, inputs, const):
    return _one("Add", node, [*inputs, f"{node.name}.value"])


def _channelshuffle(node, inputs, const):
    c, h, wd = node.output_shape
    g = node.attrs["groups"]
    split, swapped = f"{node.name}__split", f"{node.name}__swapped"
    return [helper.make_node("Reshape", [*inputs, const("split", [0, g, c // g, h, wd])], [split],
                             name=split),
            helper.make_node("Transpose", [split], [swapped], name=swapped, perm=[0, 2, 1, 3, 4]),
            _one("Reshape", node, [swapped, const("shape", [0, c, h, wd])])]


def _pad(node, inputs, const):
    top, left, bottom, right = node.attrs["pads"]
    pads = const("pads", [0, 0, top, left, 0, 0, bottom, right])
    mode = node.attrs.get("mode", "constant")
    value = [const("value", node.attrs.get("value", 0.0), np.float32)] if mode == "constant" else []
    return _one("Pad", node, [*inputs, pads, *value], mode=mode)


def _prelu(node, inputs, const):
    return _one("PRelu", node, [*inputs, f"{node.name}.slope"])


def _unsqueeze(node, inputs, const):
    return _one("Unsqueeze", node, [*inputs, const("axes", [2, 3])])


def _reduce(node, inputs, const):
    """Reduced with kept axes, then flattened where the IR's output is a vector: the IR keeps a (C, H, W) map with 1
    on the reduced axes unless one axis or none is left (spec.ops `_reduce_shape`), ONNX's keepdims=0 drops them."""
    a = node.attrs
    vector = len(node.output_shape) == 1
    out = f"{node.name}__kept" if vector else node.name
    if a["mode"] == "mean":
        made = [helper.make_node("ReduceMean", inputs, [out], name=out, axes=list(a["axes"]), keepdims=1)]
    else:
        made = [helper.make_node("ReduceSum", [*inputs, const("axes", list(a["axes"]))], [out], name=out, keepdims=1)]
    return made + ([_one("Flatten", node, [out], axis=1)] if vector else [])


def _tile(node, inputs, const):
    return _one("Tile", node, [*inputs, const("repeats", [1, *node.attrs["repeats"]])])
