"""tflearn 0.5.0 (TF1 graph mode on TensorFlow 2): ModelSpec -> tflearn layers wrapped in a tflearn.DNN, NHWC.

tflearn layers are functions on TF1 tensors, so the graph is walked node by node (`interface.walk`), each node's
`op_<kind>` applied to the tensors it reads. tflearn has no zero-padding layer, so explicit pads are tf.pad on the
layer tensors. Its pooling defaults to padding 'same' and its dropout takes the KEEP probability. Where tflearn has
no layer at all (Pad's modes, instance normalisation, depth to space, dilated transposed convolution) the op
function uses TensorFlow ops on the layer tensors and variables made by tflearn, and its docstring says which.

Build options (`trainers.tflearn.build_options`): seed, the graph's random seed (tflearn's own dropout masks);
dropout_masks="harness" with batch_size: the identical-dropout variant (see `harness_dropout`).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from builders import Unsupported, interface, layouts
from spec import ir, ops
from spec.batchnorm import NativeBatchNorm

NAME = "tflearn"
NATIVE_BATCHNORM = NativeBatchNorm("tflearn.layers.normalization.batch_normalization", "decay=0.9, epsilon=1e-5",
                                   0.9, 1e-5, "biased")


def conv_kernel(w):
    """Canonical (O, I, kh, kw) -> TensorFlow (kh, kw, I, O)."""
    return layouts.oihw_to_hwio(w)


def depthwise_kernel(w, channels: int):
    """Canonical depthwise (C*M, 1, kh, kw) -> grouped_conv_2d's (kh, kw, C, M) (tf.nn.depthwise_conv2d's)."""
    return layouts.oihw_to_hwcm(w, channels)


def dense_kernel(w, flatten_from):
    """Canonical (in, out), rows in (C, H, W) order -> rows in the (H, W, C) order an NHWC flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def constant_value(value, flatten_from):
    """A scale or shift node's canonical constant, e.g. (C, 1, 1) -> (1, 1, C), broadcasting over NHWC."""
    return layouts.chw_constant_to_hwc(value, flatten_from)


def transposed_kernel(w):
    """Canonical transposed-conv weight (in, out, kh, kw) -> conv_2d_transpose's (kh, kw, out, in), the filter of
    tf.nn.conv2d_transpose (the input gradient of TF's cross-correlation, as ONNX's: no kernel flip)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def prelu_slope(value, flatten_from):
    """A PRelu slope (C, 1, 1) or (1, 1, 1) -> tflearn prelu's alphas (C,) or (1,), on NHWC's last axis; a flat
    (F,) one read against an NHWC flatten's (H, W, C)-ordered vector -> that order."""
    return layouts.chw_constant_to_hwc(value, flatten_from).reshape(-1)


CONSTANT_KINDS = ("scale", "shift")  # op kinds whose one parameter is a constant broadcasting over the input


def to_native(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """A canonical parameter (or gradient) -> the layout tflearn's variable holds it in."""
    if param == "weight" and layouts.is_depthwise(spec, node):
        return depthwise_kernel(value, spec.shape_of(node.inputs[0])[0])
    if node.kind in CONSTANT_KINDS:
        return constant_value(value, layouts.flatten_source_of(spec, node.inputs[0]))
    if (node.kind, param) == ("convtranspose", "weight"):
        return transposed_kernel(value)
    if node.kind == "prelu":
        return prelu_slope(value, layouts.flatten_source_of(spec, node.inputs[0]))
    return layouts.nhwc_parameter(spec, node, param, value, conv_kernel, dense_kernel)


def to_canonical(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Inverse of to_native."""
    if param == "weight" and layouts.is_depthwise(spec, node):
        return layouts.hwcm_to_oihw(value)
    if node.kind in CONSTANT_KINDS:
        return layouts.hwc_constant_to_chw(value, layouts.flatten_source_of(spec, node.inputs[0]))
    if (node.kind, param) == ("convtranspose", "weight"):
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if node.kind == "prelu":
        if len(spec.shape_of(node.inputs[0])) == 3:
            return np.ascontiguousarray(value.reshape(-1, 1, 1))
        return layouts.hwc_constant_to_chw(value, layouts.flatten_source_of(spec, node.inputs[0]))
    return layouts.canonical_parameter(spec, node, param, value)


def library():
    """(tf.compat.v1, tflearn), imported with the shims tflearn 0.5.0 needs on today's TensorFlow and Pillow.
    Importing tflearn switches the whole process to TF1 graph mode."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's info banner off the worker's stderr
    from tensorflow.python.util import nest
    nest.is_sequence = nest.is_nested  # removed from TF; tflearn 0.5.0 still calls it
    import PIL.Image
    if not hasattr(PIL.Image, "ANTIALIAS"):
        PIL.Image.ANTIALIAS = PIL.Image.LANCZOS  # removed in Pillow 10
    import tensorflow.compat.v1 as tf
    tf.get_logger().setLevel("ERROR")  # tflearn's import and each of its TF1 calls log a deprecation notice
    import tflearn
    # Importing tflearn turns resource variables off (tf.disable_v2_behavior). A TF1 reference variable's read
    # aliases its buffer, so within one training step the in-place RMSProp update of an upper layer races the
    # backward pass that still reads those weights: measured, lower-layer gradients changed from run to run and
    # the 2nd step's loss was 6.44 instead of 2.5527725. Every model is built with resource variables.
    tf.enable_resource_variables()
    return tf, tflearn


def versions(**_options) -> dict:
    tf, _ = library()
    import importlib.metadata as md
    return {"tflearn": md.version("tflearn"), "tensorflow": tf.__version__, "numpy": np.__version__}


class _Network:
    """What the op functions share while one graph is built: the libraries, the spec, the options, and what
    the builder loads or hands out afterwards."""

    def __init__(self, tf, tflearn, spec, mask_rows):
        self.tf, self.tflearn, self.spec, self.mask_rows = tf, tflearn, spec, mask_rows
        self.params = {}  # "<node>.<param>" -> tflearn's variable
        self.loads = []  # (variable, its value in tflearn's layout), set once the session exists
        self.masks = {}  # dropout node -> (mask placeholder, op assigning it to the mask variable)

    def hold(self, node, **variables) -> None:
        """Record the variables holding node's parameters (the registry's names, all of them)."""
        if sorted(variables) != sorted(ops.get(node.kind).param_names):
            raise RuntimeError(f"{node.name}: variables {sorted(variables)} for {ops.get(node.kind).param_names}")
        for param, var in variables.items():
            self.params[f"{node.name}.{param}"] = var
            self.loads.append((var, to_native(self.spec, node, param, self.spec.weights[f"{node.name}.{param}"])))


def _pad(tf, x, pads, value=0.0):
    top, left, bottom, right = pads
    return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)


def _window_mode(net, node) -> str:
    a = node.attrs
    return ir.padding_mode(net.spec.input_shapes(node)[0][1:], ops.effective_kernel(a), a["strides"], a["pads"])


def _flat_input(net, node, what: str) -> None:
    shape = net.spec.input_shapes(node)[0]
    if len(shape) != 1:
        raise Unsupported(f"{node.name}: {what} on an unflattened {shape} input")


def _subsampled(y, strides):
    """TensorFlow's dilated depthwise conv and dilated pooling take stride 1 only: a strided window over explicitly
    padded input is the stride-1 one subsampled."""
    return y[:, ::strides[0], ::strides[1], :]


def _tf_conv(net, node, x, mode):
    """A convolution tflearn has no layer for, as tf ops on variables made by tflearn (tflearn.variables.variable,
    in the node's scope, as its layers make theirs): depthwise and dilated (grouped_conv_2d has no dilation), or
    1 < group < channels (tflearn has no grouped conv; tf.nn.conv2d convolves in groups when the kernel's input
    depth is channels/group, output o in group o // (O/G) as in ONNX), or dilated with strides or unequal rates
    (atrous_conv_2d has one rate and no strides; tf.nn.conv2d takes both, checked against the reference)."""
    tf, a = net.tf, node.attrs
    channels, group = net.spec.shape_of(node.inputs[0])[0], a.get("group", 1)
    depthwise, dilations = layouts.is_depthwise(net.spec, node), list(ops.dilations(a))
    shape = [*a["kernel"], channels, a["filters"] // group] if depthwise else [*a["kernel"], channels // group, a["filters"]]
    with tf.variable_scope(None, default_name=layouts.safe_name(node.name)):
        w = net.tflearn.variables.variable("W", shape=shape, initializer=tf.zeros_initializer())
        b = net.tflearn.variables.variable("b", shape=[a["filters"]], initializer=tf.zeros_initializer())
        if not depthwise:
            y = tf.nn.conv2d(x, w, [1, *a["strides"], 1], mode.upper(), dilations=[1, *dilations, 1])
        else:  # measured: TF's dilated depthwise conv with strides gives outputs of the wrong shape
            if mode == "same":
                x = _pad(tf, x, a["pads"])
            y = _subsampled(tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "VALID", dilations=dilations), a["strides"])
        y = tf.nn.bias_add(y, b)
    y.W, y.b = w, b
    return y


def op_conv(net, node, x):
    a, mode = node.attrs, _window_mode(net, node)
    if mode == "explicit":
        x, mode = _pad(net.tf, x, a["pads"]), "valid"
    name, (dh, dw), conv_layers = layouts.safe_name(node.name), ops.dilations(a), net.tflearn.layers.conv
    if layouts.is_depthwise(net.spec, node) and (dh, dw) == (1, 1):
        # tflearn's depthwise conv (tf.nn.depthwise_conv2d with a channel multiplier); it has no bias by default
        y = conv_layers.grouped_conv_2d(x, a["filters"] // a["group"], list(a["kernel"]), list(a["strides"]),
                                        padding=mode, activation="linear", bias=True, name=name)
    elif a.get("group", 1) > 1 or (dh, dw) != (1, 1) and (dh != dw or tuple(a["strides"]) != (1, 1)):
        y = _tf_conv(net, node, x, mode)
    elif dh > 1:
        y = conv_layers.atrous_conv_2d(x, a["filters"], list(a["kernel"]), dh, padding=mode, activation="linear",
                                       name=name)
    else:
        y = net.tflearn.conv_2d(x, a["filters"], list(a["kernel"]), list(a["strides"]), padding=mode,
                                activation="linear", name=name)
    net.hold(node, weight=y.W, bias=y.b)
    return y


def op_dense(net, node, x):
    _flat_input(net, node, "dense layer")
    y = net.tflearn.fully_connected(x, node.attrs["units"], activation="linear", name=layouts.safe_name(node.name))
    net.hold(node, weight=y.W, bias=y.b)
    return y


def op_maxpool(net, node, x):
    a, mode = node.attrs, _window_mode(net, node)
    if ops.dilations(a) != (1, 1):  # max_pool_2d has no dilation: tf.nn.pool, which has, at stride 1
        x = _pad(net.tf, x, a["pads"], -np.inf)
        y = net.tf.nn.pool(x, list(a["kernel"]), "MAX", "VALID", strides=[1, 1], dilations=list(ops.dilations(a)))
        return _subsampled(y, a["strides"])
    if mode == "explicit":
        x, mode = _pad(net.tf, x, a["pads"], -np.inf), "valid"
    return net.tflearn.max_pool_2d(x, list(a["kernel"]), list(a["strides"]), padding=mode,
                                   name=layouts.safe_name(node.name))


def op_avgpool(net, node, x):
    a, mode = node.attrs, _window_mode(net, node)
    if mode != "valid" and a["count_include_pad"]:
        x, mode = _pad(net.tf, x, a["pads"]), "valid"  # TF 'same' would exclude the padding
    elif mode == "explicit":
        return _avgpool_in_bounds(net, node, x)
    return net.tflearn.avg_pool_2d(x, list(a["kernel"]), list(a["strides"]), padding=mode,
                                   name=layouts.safe_name(node.name))


def _avgpool_in_bounds(net, node, x):
    """tflearn's average pooling excludes padding only for 'same': explicit pads divide the zero-padded window's
    mean by the share of the window in bounds, the same pooling of padded ones."""
    a, tf, name = node.attrs, net.tf, layouts.safe_name(node.name)
    kernel, strides = list(a["kernel"]), list(a["strides"])
    ones = tf.ones([1, *net.spec.shape_of(node.inputs[0])[1:], 1])
    share = net.tflearn.avg_pool_2d(_pad(tf, ones, a["pads"]), kernel, strides, padding="valid", name=f"{name}_share")
    return tf.math.divide(net.tflearn.avg_pool_2d(_pad(tf, x, a["pads"]), kernel, strides, padding="valid"), share,
                          name=name)


def op_relu(net, node, x):
    return net.tflearn.activation(x, "relu", name=layouts.safe_name(node.name))


def op_tanh(net, node, x):
    return net.tflearn.activation(x, "tanh", name=layouts.safe_name(node.name))


NHWC_AXES = {1: 3, 2: 1, 3: 2}  # a canonical NCHW axis -> its NHWC axis


def _native_axis(net, node) -> int:
    """The NHWC axis of a softmax's canonical axis (attr axis, default 1): a flat input's features are its last
    axis, whatever order an NHWC flatten left them in (the softmax sees every one of them)."""
    axis, rank = node.attrs.get("axis", 1), len(net.spec.shape_of(node.inputs[0]))
    if rank == 1 and axis == 1:
        return -1
    if rank == 3 and axis in NHWC_AXES:
        return NHWC_AXES[axis]
    raise Unsupported(f"{node.name}: {node.kind} over axis {axis} of a {net.spec.shape_of(node.inputs[0])} input")


def op_softmax(net, node, x):
    axis = _native_axis(net, node)
    if axis in (-1, 3):  # tflearn's softmax activation is tf.nn.softmax over the last axis
        return net.tflearn.activation(x, "softmax", name=layouts.safe_name(node.name))
    return net.tflearn.activation(x, lambda v: net.tf.nn.softmax(v, axis=axis), name=layouts.safe_name(node.name))


def op_logsoftmax(net, node, x):
    axis = _native_axis(net, node)
    # tflearn has no log-softmax activation
    return net.tflearn.activation(x, lambda v: net.tf.nn.log_softmax(v, axis=axis), name=layouts.safe_name(node.name))


def op_sigmoid(net, node, x):
    return net.tflearn.activation(x, "sigmoid", name=layouts.safe_name(node.name))


def op_softplus(net, node, x):
    return net.tflearn.activation(x, "softplus", name=layouts.safe_name(node.name))


def op_leakyrelu(net, node, x):
    alpha = node.attrs["alpha"]
    return net.tflearn.activation(x, lambda v: net.tflearn.activations.leaky_relu(v, alpha),
                                  name=layouts.safe_name(node.name))


def _scaled_elu(net, x, alpha):
    """tflearn's elu (tf.nn.elu) has alpha 1; another alpha scales its negative side: x if x > 0 else
    alpha * (exp(x) - 1)."""
    elu = net.tflearn.activations.elu(x)
    return elu if alpha == 1.0 else net.tf.where(x > 0, x, alpha * elu)


def op_elu(net, node, x):
    alpha = node.attrs["alpha"]
    return net.tflearn.activation(x, lambda v: _scaled_elu(net, v, alpha), name=layouts.safe_name(node.name))


SELU = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946)  # tflearn's selu (tf.nn.selu)


def op_selu(net, node, x):
    alpha, gamma = node.attrs["alpha"], node.attrs["gamma"]
    if np.float32(alpha) == np.float32(SELU[0]) and np.float32(gamma) == np.float32(SELU[1]):
        return net.tflearn.activation(x, "selu", name=layouts.safe_name(node.name))
    return net.tflearn.activation(x, lambda v: gamma * _scaled_elu(net, v, alpha), name=layouts.safe_name(node.name))


def op_hardsigmoid(net, node, x):
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    if np.float32(alpha) == np.float32(0.2) and np.float32(beta) == np.float32(0.5):
        return net.tflearn.activation(x, "hard_sigmoid", name=layouts.safe_name(node.name))  # its slope and offset
    return net.tflearn.activation(x, lambda v: net.tf.clip_by_value(alpha * v + beta, 0.0, 1.0),
                                  name=layouts.safe_name(node.name))


def op_hardswish(net, node, x):
    # tflearn has no hard-swish: x * hard_sigmoid(x) with ONNX's slope 1/6 and offset 1/2, in tf ops
    return net.tflearn.activation(x, lambda v: v * net.tf.clip_by_value(v / 6.0 + 0.5, 0.0, 1.0),
                                  name=layouts.safe_name(node.name))


def op_clip(net, node, x):
    low, high = node.attrs["min"], node.attrs["max"]
    if (low, high) == (0.0, 6.0):
        return net.tflearn.activation(x, "relu6", name=layouts.safe_name(node.name))
    # tflearn's only clipping activation is relu6
    return net.tflearn.activation(x, lambda v: net.tf.clip_by_value(v, low, high), name=layouts.safe_name(node.name))


def _same_flat_order(net, node) -> None:
    """Flat inputs of a node reading several tensors must share one element order (an NHWC flatten's (H, W, C)
    order, or the canonical one), or the node would mix them."""
    sources = {layouts.flatten_source_of(net.spec, t) for t in node.inputs}
    if len(sources) > 1 or (node.kind == "concat" and sources != {None}):
        raise Unsupported(f"{node.name}: {node.kind} of flat inputs in NHWC flatten order {sorted(map(str, sources))}")


def op_add(net, node, *xs):
    _same_flat_order(net, node)
    if len(xs) == 1:  # tflearn's merge wants two tensors or more
        return net.tf.identity(xs[0], name=layouts.safe_name(node.name))
    return net.tflearn.merge(list(xs), "elemwise_sum", name=layouts.safe_name(node.name))


def op_mul(net, node, a, b):
    _same_flat_order(net, node)
    # tflearn's merge multiplies equal shapes only; a (1, 1, C) gate per image broadcasts with TensorFlow's multiply
    if a.shape[1:] == b.shape[1:]:
        return net.tflearn.merge([a, b], "elemwise_mul", name=layouts.safe_name(node.name))
    return net.tf.multiply(a, b, name=layouts.safe_name(node.name))


def op_concat(net, node, *xs):
    _same_flat_order(net, node)
    if len(xs) == 1:
        return net.tf.identity(xs[0], name=layouts.safe_name(node.name))
    # the last axis: NHWC's channels, or a flat input's features
    return net.tflearn.merge(list(xs), "concat", axis=-1, name=layouts.safe_name(node.name))


def op_globalavgpool(net, node, x):
    y = net.tflearn.global_avg_pool(x, name=layouts.safe_name(node.name))  # [N, C]
    if node.attrs.get("keepdims", True):  # ONNX's GlobalAveragePool keeps H and W as 1, tflearn's layer drops them
        y = net.tf.reshape(y, [-1, 1, 1, node.output_shape[0]])
    return y


def op_batchnorm(net, node, x):
    """tflearn's batch_normalization with ONNX's epsilon; its decay weighs the old running value as ONNX's momentum
    does, so it is the momentum itself. Inference (layer_outputs) uses the running statistics."""
    if len(net.spec.shape_of(node.inputs[0])) != 3:
        raise Unsupported(f"{node.name}: batch normalisation of a {net.spec.shape_of(node.inputs[0])} input, not NCHW")
    a, tf = node.attrs, net.tf
    interface.running_variance(node, "biased")
    y = net.tflearn.batch_normalization(x, epsilon=a["epsilon"], decay=a["momentum"], name=layouts.safe_name(node.name))
    scope = y.scope.name
    running = {v.name: v for v in tf.get_collection(tf.GraphKeys.GLOBAL_VARIABLES, scope=scope)}
    net.hold(node, scale=y.gamma, bias=y.beta, mean=running[f"{scope}/moving_mean:0"],
             var=running[f"{scope}/moving_variance:0"])
    return y


def _feature_map(net, node, what: str) -> tuple:
    """The node's (C, H, W) input shape; Unsupported for a flat one."""
    shape = net.spec.shape_of(node.inputs[0])
    if len(shape) != 3:
        raise Unsupported(f"{node.name}: {what} of a {shape} input, not NCHW")
    return shape


def op_lrn(net, node, x):
    """tflearn's local_response_normalization is tf.nn.lrn: a sum of x^2 over 2r+1 channels, multiplied by its
    alpha as it is, where ONNX divides alpha by size. An even size reaches one channel further above than below,
    which depth_radius cannot say: that window's sum is composed of tf.pad and slices of x^2 over the channels."""
    channels = _feature_map(net, node, "local response normalisation")[0]
    a, tf = node.attrs, net.tf
    size, bias, beta = a["size"], a["bias"], a["beta"]
    alpha = a["alpha"] / size
    if size % 2 == 1:
        return net.tflearn.layers.normalization.local_response_normalization(
            x, depth_radius=(size - 1) // 2, bias=bias, alpha=alpha, beta=beta, name=layouts.safe_name(node.name))
    below, above = (size - 1) // 2, size - 1 - (size - 1) // 2
    with tf.name_scope(layouts.safe_name(node.name)):
        squares = tf.pad(tf.square(x), [[0, 0], [0, 0], [0, 0], [below, above]])
        window = tf.add_n([squares[..., k:k + channels] for k in range(size)])
        return x * tf.pow(bias + alpha * window, -beta)


def _constant(net, node):
    """The node's constant as a variable made by tflearn (tflearn.variables.variable, in the node's scope, as its
    layers make theirs), in its NHWC shape."""
    shape = to_native(net.spec, node, "value", net.spec.weights[f"{node.name}.value"]).shape
    with net.tf.variable_scope(None, default_name=layouts.safe_name(node.name)):
        value = net.tflearn.variables.variable("value", shape=list(shape), initializer=net.tf.zeros_initializer())
    net.hold(node, value=value)
    return value


def op_scale(net, node, x):
    # tflearn's element-wise merge of the input and the constant, which broadcasts (tf.multiply)
    return net.tflearn.merge([x, _constant(net, node)], "elemwise_mul", name=layouts.safe_name(node.name))


def op_shift(net, node, x):
    return net.tflearn.merge([x, _constant(net, node)], "elemwise_sum", name=layouts.safe_name(node.name))


def op_channelshuffle(net, node, x):
    """ONNX's (N, g, C/g, H, W) -> transpose (0, 2, 1, 3, 4) -> (N, C, H, W), in NHWC with tflearn's reshape
    layer: (N, H, W, g, C/g) -> transpose (0, 1, 2, 4, 3) -> (N, H, W, C)."""
    channels, height, width = _feature_map(net, node, "channel shuffle")
    groups, name = node.attrs["groups"], layouts.safe_name(node.name)
    grouped = net.tflearn.reshape(x, [-1, height, width, groups, channels // groups], name=f"{name}_grouped")
    swapped = net.tf.transpose(grouped, [0, 1, 2, 4, 3], name=f"{name}_transpose")
    return net.tflearn.reshape(swapped, [-1, height, width, channels], name=name)


def op_flatten(net, node, x):
    """tflearn's flatten of an NHWC map is in (H, W, C) order: order "HWC" is that order itself, "CHW" is it too,
    with layer_outputs and the next dense layer's rows reordered (layouts.flatten_sources)."""
    if node.attrs.get("order", "CHW") not in ("CHW", "HWC"):
        raise Unsupported(f"{node.name}: flatten in {node.attrs['order']} order")
    return net.tflearn.flatten(x, name=layouts.safe_name(node.name))


def op_pad(net, node, x):
    """tflearn has no padding layer: tf.pad for constant and reflect (TensorFlow's REFLECT is ONNX's, the border
    not repeated); TensorFlow has no edge mode, so edge gathers rows and then columns at indices clipped into the
    map, which repeats the border."""
    a, tf, name = node.attrs, net.tf, layouts.safe_name(node.name)
    top, left, bottom, right = a["pads"]
    _, height, width = _feature_map(net, node, "padding")
    if a["mode"] == "constant":
        return tf.identity(_pad(tf, x, a["pads"], a.get("value", 0.0)), name=name)
    if a["mode"] == "reflect":
        if max(top, bottom) >= height or max(left, right) >= width:
            raise Unsupported(f"{node.name}: reflect pads {a['pads']} reach past the {height}x{width} map (TensorFlow's "
                              f"REFLECT mirrors at most size - 1)")
        return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], mode="REFLECT", name=name)
    if a["mode"] == "edge":
        rows = np.clip(np.arange(-top, height + bottom), 0, height - 1)
        cols = np.clip(np.arange(-left, width + right), 0, width - 1)
        return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2, name=name)
    raise Unsupported(f"{node.name}: padding mode {a['mode']!r}")


def op_convtranspose(net, node, x):
    """tflearn's conv_2d_transpose (tf.nn.conv2d_transpose) with padding 'valid' and the full output shape, output
    padding included (the transposed conv leaves those bottom/right rows and columns at zero before the bias, as
    ONNX does); ONNX's pads, which may be asymmetric, are then cropped from it. conv_2d_transpose has no dilation:
    a dilated one is tf.nn.conv2d_transpose with its dilations on variables made by tflearn."""
    a, name = node.attrs, layouts.safe_name(node.name)
    _, height, width = _feature_map(net, node, "transposed convolution")
    (kh, kw), (sh, sw), (oph, opw) = ops.effective_kernel(a), a["strides"], a.get("output_padding", (0, 0))
    full = [sh * (height - 1) + kh + oph, sw * (width - 1) + kw + opw]
    if ops.dilations(a) == (1, 1):
        y = net.tflearn.layers.conv.conv_2d_transpose(x, a["filters"], list(a["kernel"]), full, list(a["strides"]),
                                                      padding="valid", activation="linear", name=name)
        weight, bias = y.W, y.b
    else:
        y, weight, bias = _dilated_convtranspose(net, node, x, full)
    net.hold(node, weight=weight, bias=bias)
    top, left, bottom, right = a["pads"]
    return y[:, top:full[0] - bottom, left:full[1] - right, :]


def _dilated_convtranspose(net, node, x, full):
    tf, a = net.tf, node.attrs
    channels = net.spec.shape_of(node.inputs[0])[0]
    with tf.variable_scope(None, default_name=layouts.safe_name(node.name)):
        w = net.tflearn.variables.variable("W", shape=[*a["kernel"], a["filters"], channels],
                                           initializer=tf.zeros_initializer())
        b = net.tflearn.variables.variable("b", shape=[a["filters"]], initializer=tf.zeros_initializer())
        shape = tf.stack([tf.shape(x)[0], *full, a["filters"]])
        y = tf.nn.conv2d_transpose(x, w, shape, [1, *a["strides"], 1], "VALID", dilations=[1, *ops.dilations(a), 1])
        y = tf.nn.bias_add(tf.reshape(y, [-1, *full, a["filters"]]), b)
    return y, w, b


def op_prelu(net, node, x):
    """tflearn's prelu activation: relu(x) + alphas * (x - |x|) / 2, alphas on the last axis (NHWC's channels, or a
    flat input's features) or one shared."""
    slope = net.spec.weights[f"{node.name}.slope"]
    y = net.tflearn.activations.prelu(x, channel_shared=slope.size == 1, name=layouts.safe_name(node.name))
    net.hold(node, slope=y.alphas)
    return y


def op_instancenorm(net, node, x):
    """tflearn has no instance normalisation (its normalization module: batch_normalization, LRN, l2_normalize): the
    TF ops its batch_normalization is made of, tf.nn.moments (biased variance), here per image over H and W, and
    tf.nn.batch_normalization, on variables made by tflearn."""
    channels = _feature_map(net, node, "instance normalisation")[0]
    tf = net.tf
    with tf.variable_scope(None, default_name=layouts.safe_name(node.name)):
        scale = net.tflearn.variables.variable("gamma", shape=[channels], initializer=tf.ones_initializer())
        bias = net.tflearn.variables.variable("beta", shape=[channels], initializer=tf.zeros_initializer())
        mean, variance = tf.nn.moments(x, [1, 2], keepdims=True)
        y = tf.nn.batch_normalization(x, mean, variance, bias, scale, node.attrs["epsilon"])
    net.hold(node, scale=scale, bias=bias)
    return y


def dcr_channels(channels: int, block: int, mode: str) -> np.ndarray:
    """For each channel of DCR order (input channel (i*b + j)*C' + c), the input channel holding it in `mode`:
    itself for DCR, c*b*b + i*b + j for CRD (PyTorch's pixel shuffle)."""
    index = np.arange(channels)
    if mode == "DCR":
        return index
    return index.reshape(channels // block**2, block, block).transpose(1, 2, 0).reshape(-1)


def op_depthtospace(net, node, x):
    """tflearn has no depth-to-space layer: tf.nn.depth_to_space, whose NHWC order is DCR; CRD gathers the channels
    into DCR order first."""
    a, tf = node.attrs, net.tf
    channels = _feature_map(net, node, "depth to space")[0]
    if a["mode"] not in ("DCR", "CRD"):
        raise Unsupported(f"{node.name}: depth to space in mode {a['mode']!r}")
    order = dcr_channels(channels, a["blocksize"], a["mode"])
    if (order != np.arange(channels)).any():
        x = tf.gather(x, order, axis=3)
    return tf.nn.depth_to_space(x, a["blocksize"], name=layouts.safe_name(node.name))


def op_unsqueeze(net, node, x):
    """[N, F] -> NHWC [N, 1, 1, F] with tflearn's reshape layer."""
    _flat_input(net, node, "unsqueeze")
    if layouts.flatten_source_of(net.spec, node.inputs[0]) is not None:
        raise Unsupported(f"{node.name}: unsqueeze of a flat vector in an NHWC flatten's (H, W, C) order, not the "
                          f"canonical (C, H, W) one")
    return net.tflearn.reshape(x, [-1, 1, 1, node.output_shape[0]], name=layouts.safe_name(node.name))


def op_dropout(net, node, x):
    if net.mask_rows and node.attrs["rate"] > 0:
        return harness_dropout(net, node, x)
    return net.tflearn.dropout(x, 1.0 - node.attrs["rate"], name=layouts.safe_name(node.name))


def harness_dropout(net, node, x):
    """The dropout layer of the identical-dropout variant: in tflearn's training mode, x times the first n rows
    of a non-trainable variable that holds the step's NHWC mask padded to the full batch (the trainer assigns
    it before each step, through model.harness_masks); in inference mode the identity, as tflearn.dropout (a
    tf.cond on tflearn's training-mode variable). The mask starts at zero: a step without its masks drops all."""
    tf = net.tf
    shape = [net.mask_rows, *layouts.native_shape(node.output_shape)]
    with tf.name_scope(layouts.safe_name(node.name)):
        mask = tf.Variable(tf.zeros(shape), trainable=False, name="mask")
        value = tf.placeholder(tf.float32, shape, name="mask_value")
        net.masks[node.name] = (value, mask.assign(value))
        return tf.cond(net.tflearn.get_training_mode(), lambda: x * mask[:tf.shape(x)[0]], lambda: x)


def _session_config(tf):
    """Grappler's remapper fuses conv + sigmoid + mul (swish) into one kernel, after which the sigmoid a layer-wise
    comparison fetches no longer exists ("not found in the Graph"); without it every node runs as built, in
    verification and training alike."""
    from tensorflow.core.protobuf import rewriter_config_pb2

    config = tf.ConfigProto()
    config.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
    return config


def build(spec, seed=None, dropout_masks="library", batch_size=None):
    """The network in a graph of its own, in a tflearn.DNN whose session holds the spec's weights.
    seed: the graph's random seed, set before any op exists (tflearn's dropout masks). dropout_masks="harness"
    builds `harness_dropout` at every dropout node that drops something, with masks of batch_size rows.
    The model carries spec_outputs {node: tensor}, spec_params {"<node>.<param>": variable} and harness_masks
    {dropout node: (mask placeholder, assign op)}."""
    if dropout_masks not in ("library", "harness") or (dropout_masks == "harness" and not batch_size):
        raise ValueError(f"dropout_masks={dropout_masks!r}, batch_size={batch_size!r}: expected 'library', or "
                         f"'harness' with the batch size")
    tf, tflearn = library()
    graph = tf.Graph()
    with graph.as_default():
        if seed is not None:
            tf.set_random_seed(seed)
        tf.add_to_collection(tf.GraphKeys.GRAPH_CONFIG, _session_config(tf))  # read by tflearn.DNN's session
        net = _Network(tf, tflearn, spec, batch_size if dropout_masks == "harness" else None)
        module = sys.modules[__name__]
        x = tflearn.input_data(shape=[None, *layouts.native_shape(spec.input_shape)], name="input")
        values = interface.walk(spec, lambda node, inputs: interface.op_function(module, node)(net, node, *inputs), x)
        model = tflearn.DNN(values[spec.output().name])
        for var, value in net.loads:
            model.set_weights(var, value.astype(np.float32))
    model.spec_outputs = {node.name: values[node.name] for node in spec.layers}
    model.spec_params, model.harness_masks = net.params, net.masks
    return model


def layer_outputs(model, spec, x, **_options) -> dict:
    _, tflearn = library()
    with model.session.graph.as_default():
        tflearn.is_training(False, session=model.session)
        values = model.session.run([model.spec_outputs[node.name] for node in spec.layers],
                                   feed_dict={model.inputs[0]: layouts.nchw_to_nhwc(x)})
    return {node.name: layouts.to_canonical(v, source)
            for node, v, source in zip(spec.layers, values, layouts.flatten_sources(spec))}


def op_reduce(net, node, x):
    """tflearn has no reduction over chosen axes (global_avg_pool takes H and W only): tf.reduce_sum or
    tf.reduce_mean over the node's axes on NHWC, kept as 1, then reshaped to the node's shape."""
    _feature_map(net, node, "reduction")
    a, tf = node.attrs, net.tf
    reduce = tf.reduce_sum if a["mode"] == "sum" else tf.reduce_mean
    y = reduce(x, axis=layouts.nhwc_axes(a["axes"]), keepdims=True)
    return tf.reshape(y, [-1, *layouts.native_shape(node.output_shape)], name=layouts.safe_name(node.name))


def op_tile(net, node, x):
    """tflearn has no tiling layer: tf.tile on NHWC."""
    _feature_map(net, node, "tiling")
    return net.tf.tile(x, layouts.nhwc_repeats(node.attrs["repeats"]), name=layouts.safe_name(node.name))
