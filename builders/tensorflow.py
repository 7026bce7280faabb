"""Raw TensorFlow 2: a tf.Module holding tf.Variables whose __call__ walks the graph, one function per op kind
(`op_<kind>`, in tf.nn ops), NHWC.

NHWC because TensorFlow on CPU implements Conv2D and MaxPool gradients only for NHWC.
Fast-path option (builders.FAST_PATHS): jit_compile has XLA compile the forward (and a trainer's steps: see
`function`).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from builders import Unsupported, cache_dir, interface, layouts
from spec import ir, ops
from spec.batchnorm import NativeBatchNorm

NAME = "tensorflow"
# raw TensorFlow has no BatchNorm layer of its own: a TF 2 script takes tf.keras's (Keras 3 since TF 2.16)
NATIVE_BATCHNORM = NativeBatchNorm("tf.keras.layers.BatchNormalization", "momentum=0.99, epsilon=1e-3", 0.99, 1e-3,
                                   "biased")


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """Canonical (out, in, kh, kw) -> tf.nn.conv2d's (kh, kw, in, out); both cross-correlate."""
    return layouts.oihw_to_hwio(w)


def depthwise_kernel(w: np.ndarray, channels: int) -> np.ndarray:
    """Canonical depthwise (C*M, 1, kh, kw) -> tf.nn.depthwise_conv2d's (kh, kw, C, M)."""
    return layouts.oihw_to_hwcm(w, channels)


def transposed_kernel(w: np.ndarray) -> np.ndarray:
    """Canonical transposed-conv (in, out, kh, kw) -> tf.nn.conv2d_transpose's (kh, kw, out, in): the kernel of the
    conv2d it is the input gradient of; neither flips it."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def transposed_kernel_to_canonical(w: np.ndarray) -> np.ndarray:
    """Inverse of transposed_kernel."""
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """Canonical (in, out), rows in (C, H, W) order -> rows in the (H, W, C) order an NHWC flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def constant_value(value: np.ndarray, flatten_from) -> np.ndarray:
    """A scale or shift node's canonical constant, e.g. (C, 1, 1) -> (1, 1, C), broadcasting over NHWC."""
    return layouts.chw_constant_to_hwc(value, flatten_from)


CONSTANT_KINDS = ("scale", "shift", "prelu")  # op kinds whose one parameter is a constant broadcasting over the input


def versions(**_options) -> dict:
    tf = library()
    return {"tensorflow": tf.__version__, "numpy": np.__version__}


def library():
    """tensorflow, imported with its info banner off and the project's XLA cache set."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's info banner off the worker's stderr
    # XLA-compiled functions (the tensorflow+xla fast path) are kept in the project's cache for later runs
    cache = f"--tf_xla_persistent_cache_directory={cache_dir('xla')}"
    if cache not in os.environ.get("TF_XLA_FLAGS", ""):
        os.environ["TF_XLA_FLAGS"] = f"{os.environ.get('TF_XLA_FLAGS', '')} {cache}".strip()
    import tensorflow as tf
    return tf


# --- parameters: canonical <-> tf.Variable ---------------------------------------------------------------

def to_native(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """A canonical parameter (or gradient) -> the layout its tf.Variable holds it in."""
    if param == "weight" and layouts.is_depthwise(spec, node):
        return depthwise_kernel(value, spec.shape_of(node.inputs[0])[0])
    if (node.kind, param) == ("convtranspose", "weight"):
        return transposed_kernel(value)
    if node.kind in CONSTANT_KINDS:
        return constant_value(value, layouts.flatten_source_of(spec, node.inputs[0]))
    return layouts.nhwc_parameter(spec, node, param, value, conv_kernel, dense_kernel)


def to_canonical(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Inverse of to_native."""
    if param == "weight" and layouts.is_depthwise(spec, node):
        return layouts.hwcm_to_oihw(value)
    if (node.kind, param) == ("convtranspose", "weight"):
        return transposed_kernel_to_canonical(value)
    if node.kind in CONSTANT_KINDS:
        return layouts.hwc_constant_to_chw(value, layouts.flatten_source_of(spec, node.inputs[0]))
    return layouts.canonical_parameter(spec, node, param, value)


def parameters(model, spec) -> dict:
    """{(node name, param): tf.Variable} of every trainable parameter of the registry, in graph order: what an
    optimizer updates. The running statistics (BatchNorm's mean and var) are variables with trainable=False in
    model.params."""
    return {(node.name, p.name): model.params[node.name][p.name]
            for node in spec.parametric() for p in ops.get(node.kind).params if p.trainable}


def state(model, spec) -> dict:
    """{(node name, param): tf.Variable} of every parameter no optimizer moves (BatchNorm's running statistics,
    which the training forward assigns)."""
    return {(node.name, p.name): model.params[node.name][p.name]
            for node in spec.parametric() for p in ops.get(node.kind).params if not p.trainable}


# --- the graph: one function per op kind -----------------------------------------------------------------
# op_<kind>(tf, spec, node, params) runs once, in build: it checks that TensorFlow can express the node and
# returns apply(inputs, training, masks) -> the node's output, which the module's __call__ runs per node
# (params: the node's tf.Variables by param name; masks: {dropout node name: the harness's mask}).

def _nhwc_pads(top, left, bottom, right):
    return [[0, 0], [top, bottom], [left, right], [0, 0]]


def _padder(tf, pads, fill: float = 0.0):
    """x -> x padded by `pads` (top, left, bottom, right) with `fill`; the identity for None."""
    if pads is None:
        return lambda x: x
    return lambda x: tf.pad(x, _nhwc_pads(*pads), constant_values=fill)


def _window(tf, spec, node) -> tuple:
    """(tf padding 'VALID'/'SAME', a function padding the input first) of a conv or pooling node."""
    a = node.attrs
    in_hw = tuple(spec.shape_of(node.inputs[0])[1:])
    mode = ir.padding_mode(in_hw, ops.effective_kernel(a), a["strides"], a["pads"])
    if mode == "explicit":
        # TF's own SAME max pool ignores padding; an explicit pad must never win
        return "VALID", _padder(tf, a["pads"], float("-inf") if node.kind == "maxpool" else 0.0)
    if mode == "same" and node.kind == "avgpool" and a["count_include_pad"]:
        # TF's SAME average pool divides by the in-bounds count; counting the zeros needs them padded in
        return "VALID", _padder(tf, ir.same_pads(in_hw, a["kernel"], a["strides"]))
    return mode.upper(), _padder(tf, None)


def _strided_after(tf, strides):
    """y -> y[:, ::sh, ::sw, :]: TensorFlow's dilated depthwise conv and dilated pooling take stride 1 only, and
    a strided window over explicitly padded input is the stride-1 one subsampled."""
    sh, sw = strides
    return lambda y: y[:, ::sh, ::sw, :]


def op_conv(tf, spec, node, params):
    """group 1 and 1 < group < channels: tf.nn.conv2d, which convolves in groups when the kernel's input depth is
    channels/group (kernel (kh, kw, C/G, O), output o in group o // (O/G), as ONNX; forward and gradient measured
    on CPU); depthwise: tf.nn.depthwise_conv2d."""
    a, weight, bias = node.attrs, params["weight"], params["bias"]
    strides, dilations = list(a["strides"]), list(ops.dilations(a))
    padding, pad = _window(tf, spec, node)
    if not layouts.is_depthwise(spec, node):
        return lambda xs, training, masks: tf.nn.conv2d(pad(xs[0]), weight, strides, padding,
                                                        dilations=dilations) + bias
    if dilations != [1, 1] and strides != [1, 1]:
        # measured: tf.nn.depthwise_conv2d with both gives outputs of the wrong shape
        pad, subsample = _padder(tf, a["pads"]), _strided_after(tf, strides)
        return lambda xs, training, masks: subsample(tf.nn.depthwise_conv2d(
            pad(xs[0]), weight, [1, 1, 1, 1], "VALID", dilations=dilations)) + bias
    return lambda xs, training, masks: tf.nn.depthwise_conv2d(pad(xs[0]), weight, [1, *strides, 1], padding,
                                                              dilations=dilations) + bias


def op_maxpool(tf, spec, node, params):
    a = node.attrs
    kernel, strides, dilations = list(a["kernel"]), list(a["strides"]), list(ops.dilations(a))
    if dilations != [1, 1]:  # tf.nn.max_pool2d has no dilations; tf.nn.pool has, at stride 1 only
        pad, subsample = _padder(tf, a["pads"], float("-inf")), _strided_after(tf, strides)
        return lambda xs, training, masks: subsample(tf.nn.pool(pad(xs[0]), kernel, "MAX", [1, 1], "VALID",
                                                                dilations=dilations))
    padding, pad = _window(tf, spec, node)
    return lambda xs, training, masks: tf.nn.max_pool2d(pad(xs[0]), kernel, strides, padding)


def op_avgpool(tf, spec, node, params):
    padding, pad = _window(tf, spec, node)
    a = node.attrs
    kernel, strides = list(a["kernel"]), list(a["strides"])
    if padding == "VALID" and not a["count_include_pad"] and any(a["pads"]):
        # tf.nn.avg_pool2d excludes padding from the average only for padding='SAME': explicit pads divide the
        # zero-padded window's mean by the share of the window in bounds, an average pool of padded ones
        ones = [1, *spec.shape_of(node.inputs[0])[1:], 1]
        return lambda xs, training, masks: (tf.nn.avg_pool2d(pad(xs[0]), kernel, strides, "VALID")
                                            / tf.nn.avg_pool2d(pad(tf.ones(ones)), kernel, strides, "VALID"))
    return lambda xs, training, masks: tf.nn.avg_pool2d(pad(xs[0]), kernel, strides, padding)


def op_relu(tf, spec, node, params):
    return lambda xs, training, masks: tf.nn.relu(xs[0])


def op_tanh(tf, spec, node, params):
    return lambda xs, training, masks: tf.math.tanh(xs[0])


def op_dropout(tf, spec, node, params):
    """training=True (a Python bool) multiplies by the harness's mask when the call was given one for this
    node, else drops at the node's rate; inference is the identity."""
    rate = float(node.attrs["rate"])

    def dropout(xs, training, masks):
        if training and node.name in masks:
            return xs[0] * masks[node.name]
        if training and rate > 0:
            return tf.nn.dropout(xs[0], rate=rate)
        return tf.identity(xs[0])
    return dropout


def op_flatten(tf, spec, node, params):
    """NHWC's plain reshape flattens in (H, W, C) order: order HWC as it is; the canonical CHW order is kept as
    that (H, W, C) vector, which the next dense layer's rows are permuted to read (layouts.flatten_sources)."""
    order = node.attrs.get("order", "CHW")
    if order not in ("CHW", "HWC"):
        raise Unsupported(f"{node.name}: flatten in {order!r} order")
    return lambda xs, training, masks: tf.reshape(xs[0], [tf.shape(xs[0])[0], -1])


def op_dense(tf, spec, node, params):
    weight, bias = params["weight"], params["bias"]
    return lambda xs, training, masks: tf.matmul(xs[0], weight) + bias


NHWC_AXIS = {1: 3, 2: 1, 3: 2}  # canonical NCHW axis -> NHWC axis


def _native_axis(spec, node) -> int:
    """The node's canonical axis (attr axis, default 1) on the NHWC (or flat) tensor TensorFlow holds."""
    axis, rank = node.attrs.get("axis", 1), len(spec.shape_of(node.inputs[0])) + 1
    if rank == 2 and axis == 1:
        return 1
    if rank == 4 and axis in NHWC_AXIS:
        return NHWC_AXIS[axis]
    raise Unsupported(f"{node.name}: {node.kind} over axis {axis} of a rank-{rank} tensor")


def op_softmax(tf, spec, node, params):
    axis = _native_axis(spec, node)
    return lambda xs, training, masks: tf.nn.softmax(xs[0], axis=axis)


def op_logsoftmax(tf, spec, node, params):
    axis = _native_axis(spec, node)
    return lambda xs, training, masks: tf.nn.log_softmax(xs[0], axis=axis)


def op_sigmoid(tf, spec, node, params):
    return lambda xs, training, masks: tf.math.sigmoid(xs[0])


def op_leakyrelu(tf, spec, node, params):
    alpha = node.attrs["alpha"]
    return lambda xs, training, masks: tf.nn.leaky_relu(xs[0], alpha)


def _scaled_elu(tf, x, alpha):
    """x if x > 0 else alpha * (exp(x) - 1): tf.nn.elu has alpha 1"""
    return tf.nn.elu(x) if alpha == 1.0 else tf.where(x > 0, x, alpha * tf.nn.elu(x))


def op_elu(tf, spec, node, params):
    alpha = node.attrs["alpha"]
    return lambda xs, training, masks: _scaled_elu(tf, xs[0], alpha)


SELU = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946)  # tf.nn.selu's alpha, gamma


def op_selu(tf, spec, node, params):
    alpha, gamma = node.attrs["alpha"], node.attrs["gamma"]
    if np.float32(alpha) == np.float32(SELU[0]) and np.float32(gamma) == np.float32(SELU[1]):
        return lambda xs, training, masks: tf.nn.selu(xs[0])
    return lambda xs, training, masks: gamma * _scaled_elu(tf, xs[0], alpha)


def op_softplus(tf, spec, node, params):
    return lambda xs, training, masks: tf.math.softplus(xs[0])


def op_hardsigmoid(tf, spec, node, params):
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    return lambda xs, training, masks: tf.clip_by_value(alpha * xs[0] + beta, 0.0, 1.0)


def op_hardswish(tf, spec, node, params):
    return lambda xs, training, masks: xs[0] * tf.clip_by_value(xs[0] / 6.0 + 0.5, 0.0, 1.0)


def op_clip(tf, spec, node, params):
    low, high = node.attrs["min"], node.attrs["max"]
    return lambda xs, training, masks: tf.clip_by_value(xs[0], low, high)


def _same_flat_order(spec, node) -> None:
    """Flat inputs of a node reading several tensors must share one element order (an NHWC flatten's (H, W, C)
    order, or the canonical one), or the node would mix them."""
    sources = {layouts.flatten_source_of(spec, t) for t in node.inputs}
    if len(sources) > 1 or (node.kind == "concat" and sources != {None}):
        raise Unsupported(f"{node.name}: {node.kind} of flat inputs in NHWC flatten order {sorted(map(str, sources))}")


def op_add(tf, spec, node, params):
    _same_flat_order(spec, node)
    return lambda xs, training, masks: tf.math.add_n(xs)


def op_mul(tf, spec, node, params):
    _same_flat_order(spec, node)
    return lambda xs, training, masks: tf.math.multiply(xs[0], xs[1])  # (1, 1, C) per image broadcasts over H, W


def op_concat(tf, spec, node, params):
    _same_flat_order(spec, node)
    return lambda xs, training, masks: tf.concat(xs, axis=-1)  # the channel axis of NHWC, the feature axis of flat


def op_globalavgpool(tf, spec, node, params):
    keepdims = node.attrs.get("keepdims", True)
    return lambda xs, training, masks: tf.reduce_mean(xs[0], axis=[1, 2], keepdims=keepdims)


def op_batchnorm(tf, spec, node, params):
    """tf.nn.batch_normalization with the running statistics (inference); in training (a Python bool) with the
    batch's mean and biased variance (tf.nn.moments), which also update the running ones the way ONNX defines
    momentum: running = momentum * running + (1 - momentum) * batch (raw TensorFlow keeps no statistics)."""
    if len(spec.shape_of(node.inputs[0])) != 3:
        raise Unsupported(f"{node.name}: batch normalisation of a {spec.shape_of(node.inputs[0])} input, not NCHW")
    epsilon, momentum = node.attrs["epsilon"], node.attrs["momentum"]
    interface.running_variance(node, "biased")
    scale, bias, running_mean, running_var = (params[p] for p in ("scale", "bias", "mean", "var"))

    def batchnorm(xs, training, masks):
        mean, var = running_mean, running_var
        if training:
            mean, var = tf.nn.moments(xs[0], axes=[0, 1, 2])
            running_mean.assign(momentum * running_mean + (1.0 - momentum) * mean)
            running_var.assign(momentum * running_var + (1.0 - momentum) * var)
        return tf.nn.batch_normalization(xs[0], mean, var, bias, scale, epsilon)
    return batchnorm


def _feature_map(spec, node, what: str) -> tuple:
    """The node's (C, H, W) input shape; Unsupported for a flat one."""
    shape = spec.shape_of(node.inputs[0])
    if len(shape) != 3:
        raise Unsupported(f"{node.name}: {what} of a {shape} input, not NCHW")
    return shape


def op_lrn(tf, spec, node, params):
    """tf.nn.local_response_normalization sums x^2 over 2r+1 channels and multiplies that sum by its alpha as it
    is: ONNX divides alpha by size. An even size reaches one channel further above than below, which depth_radius
    cannot say: that window's sum is composed of tf.pad and slices of x^2 over the channel axis."""
    _feature_map(spec, node, "local response normalisation")
    a = node.attrs
    size, bias, beta = a["size"], a["bias"], a["beta"]
    alpha = a["alpha"] / size
    if size % 2 == 1:
        return lambda xs, training, masks: tf.nn.local_response_normalization(xs[0], (size - 1) // 2, bias, alpha,
                                                                              beta)
    below, above = (size - 1) // 2, size - 1 - (size - 1) // 2
    channels = spec.shape_of(node.inputs[0])[0]

    def lrn(xs, training, masks):
        squares = tf.pad(tf.square(xs[0]), [[0, 0], [0, 0], [0, 0], [below, above]])
        window = tf.math.add_n([squares[..., k:k + channels] for k in range(size)])
        return xs[0] * tf.pow(bias + alpha * window, -beta)
    return lrn


def op_scale(tf, spec, node, params):
    value = params["value"]
    return lambda xs, training, masks: tf.math.multiply(xs[0], value)


def op_shift(tf, spec, node, params):
    value = params["value"]
    return lambda xs, training, masks: tf.math.add(xs[0], value)


def op_channelshuffle(tf, spec, node, params):
    """ONNX's (N, g, C/g, H, W) -> transpose (0, 2, 1, 3, 4) -> (N, C, H, W), in NHWC: (N, H, W, g, C/g) ->
    transpose (0, 1, 2, 4, 3) -> (N, H, W, C)."""
    channels, height, width = _feature_map(spec, node, "channel shuffle")
    groups = node.attrs["groups"]

    def shuffle(xs, training, masks):
        grouped = tf.reshape(xs[0], [-1, height, width, groups, channels // groups])
        return tf.reshape(tf.transpose(grouped, [0, 1, 2, 4, 3]), [-1, height, width, channels])
    return shuffle


def _edge_indices(size: int, before: int, after: int) -> np.ndarray:
    """For each position of an axis padded by repeating its border, the input index it copies."""
    return np.clip(np.arange(-before, size + after), 0, size - 1).astype(np.int32)


def op_pad(tf, spec, node, params):
    """constant and reflect: tf.pad (its REFLECT is ONNX's reflect, no border repeat); edge, which tf.pad lacks:
    tf.gather with clipped indices on H, then W (its gradient sums every copy back onto the border)."""
    _, height, width = _feature_map(spec, node, "padding")
    a = node.attrs
    top, left, bottom, right = a["pads"]
    if a["mode"] == "constant":
        value = float(a.get("value", 0.0))
        return lambda xs, training, masks: tf.pad(xs[0], _nhwc_pads(*a["pads"]), constant_values=value)
    if a["mode"] == "reflect":
        if max(top, bottom) >= height or max(left, right) >= width:
            raise Unsupported(f"{node.name}: reflect padding {a['pads']} reaches beyond the {height}x{width} input")
        return lambda xs, training, masks: tf.pad(xs[0], _nhwc_pads(*a["pads"]), mode="REFLECT")
    if a["mode"] != "edge":
        raise Unsupported(f"{node.name}: padding mode {a['mode']!r}")
    rows, cols = _edge_indices(height, top, bottom), _edge_indices(width, left, right)
    return lambda xs, training, masks: tf.gather(tf.gather(xs[0], rows, axis=1), cols, axis=2)


def op_convtranspose(tf, spec, node, params):
    """tf.nn.conv2d_transpose with padding VALID (its dilations work on CPU, forward and gradients, measured) to the
    full output plus output_padding (those rows and columns get no contribution, as in ONNX), then the pads cropped
    (ONNX's may be asymmetric, which SAME cannot say)."""
    _feature_map(spec, node, "transposed convolution")
    a, weight, bias = node.attrs, params["weight"], params["bias"]
    if a.get("group", 1) != 1:
        raise Unsupported(f"{node.name}: grouped transposed convolution")
    _, height, width = spec.shape_of(node.inputs[0])
    (kh, kw), (sh, sw) = ops.effective_kernel(a), a["strides"]
    oph, opw = a.get("output_padding", (0, 0))
    full = [sh * (height - 1) + kh + oph, sw * (width - 1) + kw + opw]
    top, left, bottom, right = a["pads"]
    strides, dilations = list(a["strides"]), list(ops.dilations(a))

    def convtranspose(xs, training, masks):
        y = tf.nn.conv2d_transpose(xs[0], weight, [tf.shape(xs[0])[0], *full, a["filters"]], strides, "VALID",
                                   dilations=dilations)
        return y[:, top:full[0] - bottom, left:full[1] - right, :] + bias
    return convtranspose


def op_prelu(tf, spec, node, params):
    """x if x > 0 else slope * x; the slope is held broadcasting over NHWC (constant_value)."""
    slope = params["slope"]
    return lambda xs, training, masks: tf.where(xs[0] > 0, xs[0], slope * xs[0])


def op_instancenorm(tf, spec, node, params):
    """tf.nn.moments over H and W of each image (biased variance), then tf.nn.batch_normalization with them."""
    _feature_map(spec, node, "instance normalisation")
    epsilon, scale, bias = node.attrs["epsilon"], params["scale"], params["bias"]

    def instancenorm(xs, training, masks):
        mean, var = tf.nn.moments(xs[0], axes=[1, 2], keepdims=True)
        return tf.nn.batch_normalization(xs[0], mean, var, bias, scale, epsilon)
    return instancenorm


def op_depthtospace(tf, spec, node, params):
    """tf.nn.depth_to_space on NHWC reads channel (i*b + j)*C' + c: ONNX's DCR. CRD (PixelShuffle's c*b*b + i*b + j)
    first permutes the channels into that order: (C', b*b) viewed, transposed to (b*b, C')."""
    channels, height, width = _feature_map(spec, node, "depth to space")
    block, mode = node.attrs["blocksize"], node.attrs["mode"]
    if mode == "DCR":
        return lambda xs, training, masks: tf.nn.depth_to_space(xs[0], block)
    if mode != "CRD":
        raise Unsupported(f"{node.name}: depth to space in mode {mode!r}")
    crd = [-1, height, width, channels // block**2, block**2]

    def depthtospace(xs, training, masks):
        dcr = tf.reshape(tf.transpose(tf.reshape(xs[0], crd), [0, 1, 2, 4, 3]), [-1, height, width, channels])
        return tf.nn.depth_to_space(dcr, block)
    return depthtospace


def op_unsqueeze(tf, spec, node, params):
    """[N, F] -> NHWC [N, 1, 1, F]."""
    source = layouts.flatten_source_of(spec, node.inputs[0])
    if source is not None:
        raise Unsupported(f"{node.name}: unsqueeze of a vector in an NHWC flatten's (H, W, C) order (from {source}), "
                          f"not the canonical one")
    features = spec.shape_of(node.inputs[0])[0]
    return lambda xs, training, masks: tf.reshape(xs[0], [-1, 1, 1, features])


def _graph_class():
    """The tf.Module subclass, defined on first use so that importing this file stays TensorFlow-free."""
    tf = library()
    module = sys.modules[__name__]

    class Graph(tf.Module):
        def __init__(self, spec):
            super().__init__(name="graph")
            self.spec = spec
            self.params = {node.name: {p.name: tf.Variable(to_native(spec, node, p.name, spec.params(node)[p.name]),
                                                           name=f"{layouts.safe_name(node.name)}_{p.name}",
                                                           trainable=p.trainable)
                                       for p in ops.get(node.kind).params}
                           for node in spec.parametric()}
            self.apply = {node.name: interface.op_function(module, node, NAME)(tf, spec, node,
                                                                                self.params.get(node.name, {}))
                          for node in spec.layers}

        @tf.function
        def __call__(self, x, training=False, masks=None):
            """x: NHWC (or (N, F)); returns every node's output in graph order, native layout.
            training=True (a Python bool) applies dropout at the node's rate; the default is inference.
            masks (training only): {dropout node name: mask in the node's native layout}; those nodes then
            multiply their input by the given mask instead of drawing one (dropout masks drawn by a harness)."""
            masks = masks or {}

            def apply(node, xs):
                # each node's ops named after it, so that an exported graph's nodes map back to the spec's
                with tf.name_scope(layouts.scope_name(node.name)):
                    return self.apply[node.name](xs, training, masks)

            values = interface.walk(self.spec, apply, x)
            return [values[node.name] for node in self.spec.layers]

    return Graph


def build(spec: ir.ModelSpec, jit_compile: bool = False):
    """The tf.Module; `jit_compile` concerns the functions that call it (see `function`)."""
    return _graph_class()(spec)


def function(python_function, jit_compile: bool = False):
    """tf.function of `python_function`, compiled by XLA when the fast path asks for it."""
    return library().function(python_function, jit_compile=jit_compile)


def layer_outputs(model, spec: ir.ModelSpec, x: np.ndarray, jit_compile: bool = False) -> dict:
    tf = library()
    forward = function(model.__call__, jit_compile) if jit_compile else model
    ys = forward(tf.constant(layouts.nchw_to_nhwc(np.asarray(x, dtype=np.float32))))
    return {node.name: layouts.to_canonical(y.numpy(), source)
            for node, y, source in zip(spec.layers, ys, layouts.flatten_sources(spec))}


def op_reduce(tf, spec, node, params):
    """tf.reduce_sum or tf.reduce_mean over the node's axes on NHWC, kept as 1, then the node's shape."""
    _feature_map(spec, node, "reduction")
    a, axes, shape = node.attrs, layouts.nhwc_axes(node.attrs["axes"]), [-1, *layouts.native_shape(node.output_shape)]
    reduce = tf.reduce_sum if a["mode"] == "sum" else tf.reduce_mean
    return lambda xs, training, masks: tf.reshape(reduce(xs[0], axis=axes, keepdims=True), shape)


def op_tile(tf, spec, node, params):
    _feature_map(spec, node, "tiling")
    multiples = layouts.nhwc_repeats(node.attrs["repeats"])
    return lambda xs, training, masks: tf.tile(xs[0], multiples)
