"""tensorlayer 2.2.5 (on TensorFlow 2, eager): ModelSpec -> a static tl.models.Model of tensorlayer layers, NHWC.

The model is tensorlayer's functional API: the graph is walked node by node (`interface.walk`), each node's
`op_<kind>` calling a tensorlayer layer on the outputs of the nodes it reads, and tl.models.Model(inputs=...,
outputs=...) takes every node's output (last node first, see `_model_class`) and returns them in spec order,
so one forward pass yields them all.
tensorlayer has no activation layer and no -inf padding, so those are Lambda layers: of tensorlayer's own
activation functions (tl.act.leaky_relu, tl.act.ramp) where it has one, else of tf.nn's.
Its Conv2d and MaxPool2d default to padding 'SAME' (MaxPool2d also to a 3x3 window), GroupConv2d to strides 2,
Dropout takes the KEEP probability and BatchNorm's gamma starts random, so every argument is passed explicitly.
Where a tensorlayer layer's forward cannot express an op faithfully (DeConv2dLayer, PRelu, InstanceNorm2d) it is
subclassed, its weights kept and its forward replaced by TensorFlow ops; each subclass says why.

Build options (`trainers.tensorlayer.build_options`): dropout_masks="harness", the identical-dropout variant
(see `harness_dropout`).
"""
from __future__ import annotations

import functools
import os
import sys

import numpy as np

from builders import Unsupported, interface, layouts
from spec import ir, ops
from spec.batchnorm import NativeBatchNorm

NAME = "tensorlayer"
NATIVE_BATCHNORM = NativeBatchNorm("tensorlayer.layers.BatchNorm2d", "decay=0.9, epsilon=1e-5", 0.9, 1e-5, "biased")


def conv_kernel(w):
    """Canonical (O, I, kh, kw) -> TensorFlow (kh, kw, I, O)."""
    return layouts.oihw_to_hwio(w)


def dense_kernel(w, flatten_from):
    """Canonical (in, out), rows in (C, H, W) order -> rows in the (H, W, C) order an NHWC flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def deconv_kernel(w):
    """Canonical transposed-conv (in, out, kh, kw) -> DeConv2dLayer's (kh, kw, out, in): the (O, I, kh, kw) kernel of the
    convolution it transposes, as that convolution's (kh, kw, I, O); tf.nn.conv2d_transpose flips nothing."""
    return layouts.oihw_to_hwio(w)


def depthwise_kernel(w, channels: int):
    """Canonical (C*M, 1, kh, kw), output channel c*M + m reading input channel c of `channels` C ->
    DepthwiseConv2d's (kh, kw, C, M): tf.nn.depthwise_conv2d's output channel c*M + m is the same."""
    return layouts.oihw_to_hwcm(w, channels)


def depthwise_kernel_to_canonical(w):
    """Inverse of depthwise_kernel: (kh, kw, C, M) -> (C*M, 1, kh, kw)."""
    return layouts.hwcm_to_oihw(w)


CONSTANT_KINDS = ("scale", "shift")  # nodes whose one parameter is a constant tensor broadcast against their input


def constant_value(spec, node, value):
    """A scale / shift constant, canonical (the input's rank without the batch axis) -> the layout of the NHWC
    tensor it meets: one number -> (1,), the shape of tensorlayer's Scale weight; (C, H, W)-style -> (H, W, C);
    per-feature (F,) over a flat input still in an NHWC flatten's (H, W, C) order -> that order."""
    if value.size == 1:
        return value.reshape(1)
    if value.ndim == 3:
        return np.ascontiguousarray(value.transpose(1, 2, 0))
    return layouts.chw_rows_to_hwc(value.reshape(-1, 1), layouts.flatten_source_of(spec, node.inputs[0])).reshape(-1)


def constant_value_to_canonical(spec, node, param: str, value):
    """Inverse of constant_value."""
    shape = spec.weights[f"{node.name}.{param}"].shape
    if value.size == 1:
        return value.reshape(shape)
    if value.ndim == 3:
        return np.ascontiguousarray(value.transpose(2, 0, 1))
    return layouts.hwc_rows_to_chw(value.reshape(-1, 1), layouts.flatten_source_of(spec, node.inputs[0])).reshape(-1)


def prelu_slope(spec, node, value):
    """Canonical slope -> PRelu's alpha (C,) over NHWC's last axis: (C, 1, 1) -> (C,), one shared -> (1,), a
    per-feature (F,) over a flat input still in an NHWC flatten's (H, W, C) order -> that order."""
    flat = value.reshape(-1)
    if value.ndim != 1 or flat.size == 1:
        return np.ascontiguousarray(flat)
    return layouts.chw_rows_to_hwc(flat.reshape(-1, 1), layouts.flatten_source_of(spec, node.inputs[0])).reshape(-1)


def prelu_slope_to_canonical(spec, node, value):
    """Inverse of prelu_slope."""
    shape = spec.weights[f"{node.name}.slope"].shape
    if len(shape) != 1 or value.size == 1:
        return np.ascontiguousarray(value.reshape(shape))
    return layouts.hwc_rows_to_chw(value.reshape(-1, 1), layouts.flatten_source_of(spec, node.inputs[0])).reshape(-1)


def to_native(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """A canonical parameter (or gradient) -> the layout tensorlayer's weight holds it in."""
    if (node.kind, param) == ("conv", "weight") and conv_layer(spec, node) == "depthwise":
        return depthwise_kernel(value, spec.input_shapes(node)[0][0])
    if node.kind in CONSTANT_KINDS:
        return constant_value(spec, node, value)
    if (node.kind, param) == ("convtranspose", "weight"):
        return deconv_kernel(value)
    if node.kind == "prelu":
        return prelu_slope(spec, node, value)
    if node.kind == "instancenorm":  # InstanceNorm2d's gamma and beta: (1, 1, 1, C)
        return np.ascontiguousarray(value.reshape(1, 1, 1, -1))
    return layouts.nhwc_parameter(spec, node, param, value, conv_kernel, dense_kernel)


def to_canonical(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Inverse of to_native."""
    if (node.kind, param) == ("conv", "weight") and conv_layer(spec, node) == "depthwise":
        return depthwise_kernel_to_canonical(value)
    if node.kind in CONSTANT_KINDS:
        return constant_value_to_canonical(spec, node, param, value)
    if (node.kind, param) == ("convtranspose", "weight"):
        return layouts.hwio_to_oihw(value)
    if node.kind == "prelu":
        return prelu_slope_to_canonical(spec, node, value)
    if node.kind == "instancenorm":
        return np.ascontiguousarray(value.reshape(-1))
    return layouts.canonical_parameter(spec, node, param, value)


def library():
    """(tensorflow, tensorlayer)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's info banner off the worker's stderr
    import tensorflow as tf
    import tensorlayer as tl
    return tf, tl


def versions(**_options) -> dict:
    tf, tl = library()
    return {"tensorlayer": tl.__version__, "tensorflow": tf.__version__, "numpy": np.__version__}


class _Network:
    """What the op functions share while one model is built: the libraries, the spec, the options, and what
    the builder loads or hands out afterwards."""

    def __init__(self, tf, tl, spec, harness_masks: bool):
        self.tf, self.tl, self.L, self.spec, self.harness_masks = tf, tl, tl.layers, spec, harness_masks
        self.params = {}  # "<node>.<param>" -> tensorlayer's weight
        self.loads = []  # (weight, its value in tensorlayer's layout), assigned once the model exists
        self.masks = {}  # dropout node -> its mask variable

    def hold(self, node, **variables) -> None:
        """Record the weights holding node's parameters (the registry's names, all of them)."""
        if sorted(variables) != sorted(ops.get(node.kind).param_names):
            raise RuntimeError(f"{node.name}: weights {sorted(variables)} for {ops.get(node.kind).param_names}")
        for param, var in variables.items():
            self.params[f"{node.name}.{param}"] = var
            self.loads.append((var, to_native(self.spec, node, param, self.spec.weights[f"{node.name}.{param}"])))


def _pad(net, x, pads, name, value=0.0):
    top, left, bottom, right = pads
    if value == 0.0:
        return net.L.ZeroPad2d(((top, bottom), (left, right)), name=name)(x)
    paddings = [[0, 0], [top, bottom], [left, right], [0, 0]]
    return net.L.Lambda(lambda t: net.tf.pad(t, paddings, constant_values=value), name=name)(x)


def _window_mode(net, node) -> str:
    a = node.attrs
    return ir.padding_mode(net.spec.input_shapes(node)[0][1:], ops.effective_kernel(a), a["strides"], a["pads"])


def _flat_input(net, node, what: str) -> int:
    shape = net.spec.input_shapes(node)[0]
    if len(shape) != 1:
        raise Unsupported(f"{node.name}: {what} on an unflattened {shape} input")
    return shape[0]


def conv_layer(spec, node) -> str:
    """The tensorlayer layer a conv node is built with: "conv" (Conv2d), "depthwise" (DepthwiseConv2d: one group
    per input channel, depth multiplier filters/group) or "group" (GroupConv2d: tf.split, tf.nn.conv2d per group,
    tf.concat). A depthwise conv that is both strided and dilated is built as GroupConv2d: TensorFlow 2.21's
    tf.nn.depthwise_conv2d, under DepthwiseConv2d, only warns that it needs strides 1 with dilations > 1 and
    returns the right shape with wrong values."""
    group, channels = node.attrs.get("group", 1), spec.input_shapes(node)[0][0]
    if group == 1:
        return "conv"
    strided_and_dilated = max(node.attrs["strides"]) > 1 and max(ops.dilations(node.attrs)) > 1
    return "depthwise" if group == channels and not strided_and_dilated else "group"


def op_conv(net, node, x):
    a, mode, name = node.attrs, _window_mode(net, node), layouts.safe_name(node.name)
    if mode == "explicit":
        x, mode = _pad(net, x, a["pads"], name + "_pad"), "valid"
    window = {"filter_size": tuple(a["kernel"]), "strides": tuple(a["strides"]), "act": None,
              "padding": mode.upper(), "dilation_rate": ops.dilations(a),
              "in_channels": net.spec.input_shapes(node)[0][0], "name": name}
    layer = conv_layer(net.spec, node)
    if layer == "depthwise":
        conv = net.L.DepthwiseConv2d(depth_multiplier=a["filters"] // a["group"], **window)
        net.hold(node, weight=conv.W, bias=conv.b)
    elif layer == "group":
        conv = net.L.GroupConv2d(a["filters"], n_group=a["group"], **window)
        net.hold(node, weight=conv.We, bias=conv.b)
    else:
        conv = net.L.Conv2d(a["filters"], **window)
        net.hold(node, weight=conv.W, bias=conv.b)
    return conv(x)


def op_dense(net, node, x):
    dense = net.L.Dense(node.attrs["units"], act=None, in_channels=_flat_input(net, node, "dense layer"),
                        name=layouts.safe_name(node.name))
    net.hold(node, weight=dense.W, bias=dense.b)
    return dense(x)


def op_maxpool(net, node, x):
    a, name = node.attrs, layouts.safe_name(node.name)
    if ops.dilations(a) != (1, 1):
        return _dilated_maxpool(net, node, x)
    mode = _window_mode(net, node)
    if mode == "explicit":
        x, mode = _pad(net, x, a["pads"], name + "_pad", -np.inf), "valid"
    return net.L.MaxPool2d(tuple(a["kernel"]), tuple(a["strides"]), padding=mode.upper(), name=name)(x)


def _dilated_maxpool(net, node, x):
    """tensorlayer's MaxPool2d has no dilations: a Lambda of tf.nn.pool, which takes dilations only with
    strides 1, so the strided windows are every stride-th of the stride-1 ones (the same windows)."""
    a, name, tf = node.attrs, layouts.safe_name(node.name), net.tf
    if any(a["pads"]):
        x = _pad(net, x, a["pads"], name + "_pad", -np.inf)
    (sh, sw), kernel, rate = a["strides"], tuple(a["kernel"]), ops.dilations(a)
    return net.L.Lambda(lambda t: tf.nn.pool(t, kernel, "MAX", strides=(1, 1), padding="VALID",
                                             dilations=rate)[:, ::sh, ::sw, :], name=name)(x)


def op_avgpool(net, node, x):
    a, mode, name = node.attrs, _window_mode(net, node), layouts.safe_name(node.name)
    if mode != "valid" and a["count_include_pad"]:
        x, mode = _pad(net, x, a["pads"], name + "_pad"), "valid"  # TF 'SAME' would exclude the padding
    elif mode == "explicit":
        return _avgpool_excluding_pads(net, node, x)
    return net.L.MeanPool2d(tuple(a["kernel"]), tuple(a["strides"]), padding=mode.upper(), name=name)(x)


def _cells_inside(n: int, k: int, s: int, before: int, after: int) -> np.ndarray:
    """Per output position along one axis: how many of its window's k cells lie inside the input, not the padding."""
    starts = np.arange((n + before + after - k) // s + 1) * s - before
    return np.minimum(starts + k, n) - np.maximum(starts, 0)


def _avgpool_excluding_pads(net, node, x):
    """tensorlayer's MeanPool2d leaves padding out of the mean only with TF's 'SAME' pads: other pads are the mean
    over the zero-padded input (MeanPool2d, 'VALID'), times kh*kw / the number of the window's cells inside the
    input, a constant map (a Lambda of a product, tensorlayer having no layer for it)."""
    a, name = node.attrs, layouts.safe_name(node.name)
    (h, w), (kh, kw), (sh, sw) = net.spec.input_shapes(node)[0][1:], a["kernel"], a["strides"]
    top, left, bottom, right = a["pads"]
    cells = np.outer(_cells_inside(h, kh, sh, top, bottom), _cells_inside(w, kw, sw, left, right))
    if cells.min() <= 0:
        raise Unsupported(f"{node.name}: a window of pads {a['pads']} holds no input cell")
    factor = (kh * kw / cells).astype(np.float32)[None, :, :, None]
    y = net.L.MeanPool2d((kh, kw), (sh, sw), padding="VALID", name=name + "_mean")(_pad(net, x, a["pads"], name + "_pad"))
    return net.L.Lambda(lambda t: t * factor, name=name)(y)


def _act(net, node, f):
    """An activation: tensorlayer has no activation layers, so a Lambda of f."""
    return net.L.Lambda(f, name=layouts.safe_name(node.name))


def op_relu(net, node, x):
    return _act(net, node, net.tf.nn.relu)(x)


def op_tanh(net, node, x):
    return _act(net, node, net.tf.nn.tanh)(x)


def _nhwc_axis(net, node) -> int:
    """The NHWC axis of the canonical `axis` attr (default 1: the features of [N, F], the channels of a map)."""
    rank = len(net.spec.input_shapes(node)[0]) + 1
    axis = node.attrs.get("axis", 1) % rank
    if axis == 0:
        raise Unsupported(f"{node.name}: {node.kind} over the batch axis")
    return {1: 3, 2: 1, 3: 2}[axis] if rank == 4 else axis  # [N, F]: the features whatever their order


def op_softmax(net, node, x):
    axis = _nhwc_axis(net, node)
    return _act(net, node, lambda t: net.tf.nn.softmax(t, axis=axis))(x)


def op_sigmoid(net, node, x):
    return _act(net, node, net.tf.nn.sigmoid)(x)


def op_leakyrelu(net, node, x):
    alpha = node.attrs["alpha"]
    if 0 < alpha <= 1:  # tensorlayer's leaky_relu is max(x, alpha * x): right only for these alphas, and refuses others
        return _act(net, node, lambda t: net.tl.act.leaky_relu(t, alpha=alpha))(x)
    return _act(net, node, lambda t: net.tf.nn.leaky_relu(t, alpha=alpha))(x)


def _elu(tf, x, alpha):
    """x if x > 0 else alpha * (exp(x) - 1): tf.nn.elu is alpha 1 only, and scaling all of it would scale x > 0."""
    return tf.nn.elu(x) if alpha == 1.0 else tf.where(x > 0, x, alpha * tf.nn.elu(x))


def op_elu(net, node, x):
    return _act(net, node, lambda t: _elu(net.tf, t, node.attrs["alpha"]))(x)


# tf.nn.selu's constants as float32, which ONNX Selu's defaults are
_SELU = {"alpha": float(np.float32(1.6732632423543772)), "gamma": float(np.float32(1.0507009873554805))}


def op_selu(net, node, x):
    a, tf = node.attrs, net.tf
    if {k: float(np.float32(a[k])) for k in _SELU} == _SELU:
        return _act(net, node, tf.nn.selu)(x)
    return _act(net, node, lambda t: a["gamma"] * _elu(tf, t, a["alpha"]))(x)


def op_softplus(net, node, x):
    return _act(net, node, net.tf.nn.softplus)(x)


def op_hardsigmoid(net, node, x):
    a, ramp = node.attrs, net.tl.act.ramp  # tensorlayer's clip
    return _act(net, node, lambda t: ramp(a["alpha"] * t + a["beta"], 0.0, 1.0))(x)


def op_hardswish(net, node, x):
    ramp = net.tl.act.ramp
    return _act(net, node, lambda t: t * ramp(t / 6.0 + 0.5, 0.0, 1.0))(x)


def op_clip(net, node, x):
    low, high = node.attrs["min"], node.attrs["max"]
    return _act(net, node, lambda t: net.tl.act.ramp(t, low, high))(x)


def op_logsoftmax(net, node, x):
    axis = _nhwc_axis(net, node)
    return _act(net, node, lambda t: net.tf.nn.log_softmax(t, axis=axis))(x)


def _flat_inputs_in_one_order(net, node) -> None:
    """Flat inputs still in an NHWC flatten's (H, W, C) order: adding them is right only when they share
    that order, concatenating them never (the result is in no single (C, H, W) order)."""
    sources = {layouts.flatten_source_of(net.spec, t) for t in node.inputs}
    if sources != {None} and (node.kind == "concat" or len(sources) > 1):
        raise Unsupported(f"{node.name}: {node.kind} of flat inputs still in NHWC flatten order (of {sources}): "
                          "the result would be in no single (C, H, W) order")


def op_add(net, node, *xs):
    _flat_inputs_in_one_order(net, node)
    return net.L.Elementwise(combine_fn=net.tf.add, act=None, name=layouts.safe_name(node.name))(list(xs))


def op_mul(net, node, a, b):
    _flat_inputs_in_one_order(net, node)
    # a (1, 1, C) gate per image broadcasts over H and W in tf.multiply
    return net.L.Elementwise(combine_fn=net.tf.multiply, act=None, name=layouts.safe_name(node.name))([a, b])


def op_concat(net, node, *xs):
    _flat_inputs_in_one_order(net, node)
    return net.L.Concat(concat_dim=-1, name=layouts.safe_name(node.name))(list(xs))  # NHWC's channel axis


def op_globalavgpool(net, node, x):
    name = layouts.safe_name(node.name)
    y = net.L.GlobalMeanPool2d(data_format="channels_last", name=name + "_pool")(x)
    if not node.attrs.get("keepdims", True):
        return y
    return net.L.Reshape([-1, 1, 1, net.spec.input_shapes(node)[0][0]], name=name)(y)  # [N, C] -> NHWC [N, 1, 1, C]


def op_batchnorm(net, node, x):
    """tensorlayer's BatchNorm2d: in inference mode (model.eval()) (x - moving_mean) * rsqrt(moving_var + epsilon) *
    gamma + beta; its decay weighs the old running value, as ONNX's momentum does: decay = momentum. Its training
    forward cannot run in TensorFlow 2 (`_batchnorm_class`)."""
    a = node.attrs
    interface.running_variance(node, "biased")
    if len(net.spec.input_shapes(node)[0]) != 3:
        raise Unsupported(f"{node.name}: batch norm of a {net.spec.input_shapes(node)[0]} input, not [C, H, W]")
    bn = _batchnorm_class(net.tf, net.tl)(decay=a["momentum"], epsilon=a["epsilon"], act=None,
                                          data_format="channels_last", num_features=net.spec.input_shapes(node)[0][0],
                                          name=layouts.safe_name(node.name))
    net.hold(node, scale=bn.gamma, bias=bn.beta, mean=bn.moving_mean, var=bn.moving_var)
    return bn(x)


@functools.cache
def _batchnorm_class(tf, tl):
    class AssigningBatchNorm2d(tl.layers.BatchNorm2d):
        """tensorlayer's BatchNorm2d whose training forward keeps its moving statistics: tensorlayer's own replaces
        the moving_mean / moving_var variables by what assign_moving_average returns, which inside a tf.function is
        no tensor ("Can not convert a NoneType"). Here the variables are assigned ONNX's update, momentum * running
        + (1 - momentum) * the batch's mean and biased variance (tf.nn.moments), as tensorlayer meant to."""

        def forward(self, inputs):
            if not self.is_train:
                return super().forward(inputs)
            mean, var = tf.nn.moments(inputs, [0, 1, 2])
            self.moving_mean.assign(self.decay * self.moving_mean + (1.0 - self.decay) * mean)
            self.moving_var.assign(self.decay * self.moving_var + (1.0 - self.decay) * var)
            return tf.nn.batch_normalization(inputs, mean, var, self.beta, self.gamma, self.epsilon)

    return AssigningBatchNorm2d


def _image_input(net, node, what: str) -> int:
    """The channels of node's [C, H, W] input; Unsupported for another rank."""
    shape = net.spec.input_shapes(node)[0]
    if len(shape) != 3:
        raise Unsupported(f"{node.name}: {what} of a {shape} input, not [C, H, W]")
    return shape[0]


def op_lrn(net, node, x):
    """ONNX LRN: x / (bias + alpha/size * sum of x^2 over `size` channels)^beta. tensorlayer's LocalResponseNorm
    (tf.nn.local_response_normalization) sums over 2*depth_radius + 1 channels and does not divide alpha by the
    window: for odd sizes it takes alpha/size and depth_radius (size-1)//2. An even size's window reaches one channel
    further above than below, which depth_radius cannot express: a Lambda of tf ops, tensorlayer having no other
    LRN (`_lrn_composed`)."""
    a, name = node.attrs, layouts.safe_name(node.name)
    _image_input(net, node, "local response normalisation")
    if a["size"] % 2:
        return net.L.LocalResponseNorm(depth_radius=(a["size"] - 1) // 2, bias=a["bias"], alpha=a["alpha"] / a["size"],
                                       beta=a["beta"], name=name)(x)
    return net.L.Lambda(lambda t: _lrn_composed(net.tf, t, a["size"], a["alpha"], a["beta"], a["bias"]), name=name)(x)


def _lrn_composed(tf, x, size: int, alpha: float, beta: float, bias: float):
    """ONNX LRN over NHWC's last axis: the window of channel c is c - (size-1)//2 .. c + size-1 - (size-1)//2, the
    squares zero-padded at both ends and summed over the window's `size` shifted slices."""
    below, channels = (size - 1) // 2, x.shape[-1]
    squares = tf.pad(x * x, [[0, 0], [0, 0], [0, 0], [below, size - 1 - below]])
    window = tf.add_n([squares[..., k:k + channels] for k in range(size)])
    return x * tf.pow(bias + alpha / size * window, -beta)


def op_scale(net, node, x):
    """A product with a constant: tensorlayer's Scale layer where the constant is one number (Scale's weight is a
    single number); else a Lambda of tf.multiply holding the constant as its weight (fn_weights, tensorlayer's way
    for a function with a weight), tensorlayer having no layer that multiplies by a tensor."""
    if net.spec.weights[f"{node.name}.value"].size == 1:
        scale = net.L.Scale(init_scale=1.0, name=layouts.safe_name(node.name))
        net.hold(node, value=scale.scale)
        return scale(x)
    return _with_constant(net, node, x, net.tf.multiply)


def op_shift(net, node, x):
    """A sum with a constant: a Lambda of tf.add holding the constant as its weight, tensorlayer having no layer
    that adds a tensor of its own (its biases belong to the Dense and Conv layers)."""
    return _with_constant(net, node, x, net.tf.add)


def _with_constant(net, node, x, combine):
    """A Lambda layer computing combine(x, value), value a weight of the Lambda in `constant_value`'s layout."""
    name, tf = layouts.safe_name(node.name), net.tf
    shape = constant_value(net.spec, node, net.spec.weights[f"{node.name}.value"]).shape
    value = tf.Variable(tf.zeros(shape), name=name + "_value")
    net.hold(node, value=value)
    return net.L.Lambda(lambda t: combine(t, value), fn_weights=[value], name=name)(x)


def op_channelshuffle(net, node, x):
    """tensorlayer's Shuffle(group=k) views the channels as (C/k, k) before it transposes them, ONNX's (ShuffleNet's)
    Reshape views them as (groups, C/groups): the same shuffle for k = C/groups."""
    channels, groups = _image_input(net, node, "channel shuffle"), node.attrs["groups"]
    if channels % groups:
        raise Unsupported(f"{node.name}: {channels} channels in {groups} groups")
    return net.L.Shuffle(group=channels // groups, name=layouts.safe_name(node.name))(x)


def op_pad(net, node, x):
    """Constant: ZeroPad2d, or for another value a Lambda of tf.pad (PadLayer passes no constant_values). Reflect:
    PadLayer's REFLECT, ONNX's reflect (no border repeat). Edge: `_edge_pad`."""
    a, name = node.attrs, layouts.safe_name(node.name)
    if a["mode"] == "constant":
        return _pad(net, x, a["pads"], name, a.get("value", 0.0))
    if a["mode"] == "edge":
        return _edge_pad(net, x, a["pads"], name)
    _image_input(net, node, "padding")
    top, left, bottom, right = a["pads"]
    h, w = net.spec.input_shapes(node)[0][1:]
    if max(top, bottom) >= h or max(left, right) >= w:
        raise Unsupported(f"{node.name}: reflect padding {a['pads']} reaches beyond the {h}x{w} input")
    return net.L.PadLayer([[0, 0], [top, bottom], [left, right], [0, 0]], "REFLECT", name=name)(x)


def _edge_pad(net, x, pads, name):
    """Edge padding (the border repeated), which tensorlayer and TensorFlow lack: PadLayer's SYMMETRIC (a mirror
    that repeats the border) by at most one row or column a side repeats the border once, so max(pads) of them
    in a row repeat it as often as each side asks."""
    steps = max(1, *pads)
    for k in range(steps):
        top, left, bottom, right = (min(1, max(p - k, 0)) for p in pads)
        x = net.L.PadLayer([[0, 0], [top, bottom], [left, right], [0, 0]], "SYMMETRIC",
                           name=name if k == steps - 1 else f"{name}_{k}")(x)
    return x


def _placement(k: int, rate: int) -> np.ndarray:
    """(rate*(k-1)+1, k) zeros with a 1 at (i*rate, i): a kernel axis times it is that axis dilated with zeros."""
    p = np.zeros((rate * (k - 1) + 1, k), np.float32)
    p[np.arange(k) * rate, np.arange(k)] = 1.0
    return p


@functools.cache
def _deconv_class(tf, tl):
    class DeConv2dOpenBatch(tl.layers.DeConv2dLayer):
        """tensorlayer's DeConv2dLayer (tf.nn.conv2d_transpose, kernel (kh, kw, out, in), then the bias) with two
        things its forward cannot express: outputs_shape is fixed batch size included, here the batch is read from
        the input; and TensorFlow's CPU kernel refuses dilations > 1, so the kernel is dilated with zeros here (a
        product with 0/1 placement matrices, the weight keeping its (kh, kw) shape and gradient). Explicit
        [[0, 0], [top, bottom], [left, right], [0, 0]] padding crops those rows and columns off the full output,
        asymmetric pads included; an output one to stride-1 rows taller adds ONNX's output_padding at the bottom."""

        def forward(self, inputs):
            (kh, kw), (dh, dw) = self.shape[:2], self.dilation_rate[1:3]
            kernel = tf.einsum("ai,bj,ijoc->aboc", _placement(kh, dh), _placement(kw, dw), self.W)
            shape = tf.stack([tf.shape(inputs)[0], *self.outputs_shape[1:]])
            y = tf.nn.conv2d_transpose(inputs, kernel, shape, strides=self.strides, padding=self.padding,
                                       data_format="NHWC")
            return tf.nn.bias_add(y, self.b)

    return DeConv2dOpenBatch


def op_convtranspose(net, node, x):
    a = node.attrs
    channels = _image_input(net, node, "transposed convolution")
    if a.get("group", 1) != 1:
        raise Unsupported(f"{node.name}: transposed convolution in {a['group']} groups")
    if not all(0 <= p < s for p, s in zip(a.get("output_padding", (0, 0)), a["strides"])):
        raise Unsupported(f"{node.name}: output_padding {a['output_padding']} not below the strides {a['strides']}")
    top, left, bottom, right = a["pads"]
    deconv = _deconv_class(net.tf, net.tl)(
        shape=(*a["kernel"], a["filters"], channels), outputs_shape=(None, *layouts.native_shape(node.output_shape)),
        strides=(1, *a["strides"], 1), padding=[[0, 0], [top, bottom], [left, right], [0, 0]],
        dilation_rate=(1, *ops.dilations(a), 1), name=layouts.safe_name(node.name))
    net.hold(node, weight=deconv.W, bias=deconv.b)
    return deconv(x)


@functools.cache
def _prelu_class(tf, tl):
    class LinearPRelu(tl.layers.PRelu):
        """tensorlayer's PRelu with its alpha as the slope itself: tensorlayer's forward takes sigmoid(alpha), a
        slope confined to (0, 1) that no other slope can be loaded into and that trains a different parameter.
        tf.where, not relu(x) - a * relu(-x): at x = 0 the gradient is the slope's, as ONNX's."""

        def forward(self, inputs):
            return tf.where(inputs > 0, inputs, self.alpha_var * inputs)

    return LinearPRelu


def op_prelu(net, node, x):
    shape, slope = net.spec.input_shapes(node)[0], net.spec.weights[f"{node.name}.slope"]
    shared = slope.size == 1
    prelu = _prelu_class(net.tf, net.tl)(channel_shared=shared, in_channels=None if shared else shape[0],
                                         name=layouts.safe_name(node.name))
    net.hold(node, slope=prelu.alpha_var)
    return prelu(x)


@functools.cache
def _instancenorm_class(tf, tl):
    class InstanceNorm2dPerImage(tl.layers.InstanceNorm2d):
        """tensorlayer's InstanceNorm2d with its moments kept per image: its forward takes tf.nn.moments over H and W
        (the biased variance) per image and channel, as ONNX does, but then its batch_normalization helper
        reshapes that [N, 1, 1, C] mean and variance to [1, 1, 1, N*C], which fails for any batch but 1.
        tf.nn.batch_normalization broadcasts them as they are: (x - mean) * rsqrt(var + epsilon) * gamma + beta."""

        def forward(self, inputs):
            mean, var = tf.nn.moments(inputs, self.axes, keepdims=True)
            return tf.nn.batch_normalization(inputs, mean, var, self.beta, self.gamma, self.epsilon)

    return InstanceNorm2dPerImage


def op_instancenorm(net, node, x):
    channels = _image_input(net, node, "instance normalisation")
    norm = _instancenorm_class(net.tf, net.tl)(act=None, epsilon=node.attrs["epsilon"], num_features=channels,
                                               data_format="channels_last", name=layouts.safe_name(node.name))
    net.hold(node, scale=norm.gamma, bias=norm.beta)
    return norm(x)


def op_depthtospace(net, node, x):
    """SubpixelConv2d: tf.depth_to_space, which in NHWC reads channel (i*b + j)*C' + c (DCR). CRD's channel
    c*b*b + i*b + j is first moved there by tensorlayer's Shuffle(group=b*b), which views the channels as
    (C', b*b) and transposes them."""
    block, name = node.attrs["blocksize"], layouts.safe_name(node.name)
    channels = _image_input(net, node, "depth to space")
    if node.attrs["mode"] == "CRD":
        x = net.L.Shuffle(group=block * block, name=name + "_dcr")(x)
    return net.L.SubpixelConv2d(scale=block, act=None, in_channels=channels, name=name)(x)


def op_unsqueeze(net, node, x):
    """[N, F] -> NHWC [N, 1, 1, F]."""
    source = layouts.flatten_source_of(net.spec, node.inputs[0])
    if source is not None:
        raise Unsupported(f"{node.name}: unsqueeze of features still in an NHWC flatten's (H, W, C) order (of {source})")
    features = _flat_input(net, node, "unsqueeze")
    return net.L.Reshape([-1, 1, 1, features], name=layouts.safe_name(node.name))(x)


def op_flatten(net, node, x):
    """Flatten of NHWC is in (H, W, C) order: order "HWC" as it is, the canonical (C, H, W) order by the reordering
    of whatever reads it (layouts.flatten_sources)."""
    return net.L.Flatten(name=layouts.safe_name(node.name))(x)


def op_dropout(net, node, x):
    if net.harness_masks and node.attrs["rate"] > 0:
        return harness_dropout(net, node, x)
    return net.L.Dropout(keep=1.0 - node.attrs["rate"], name=layouts.safe_name(node.name))(x)


@functools.cache
def _harness_dropout_layer(tl):
    class HarnessDropout(tl.layers.Layer):
        """In training mode its input times the mask variable; in evaluation mode the identity, as tl's Dropout."""

        def __init__(self, mask, name=None):
            super().__init__(name)
            self.mask = mask
            self.build()
            self._built = True

        def build(self, inputs_shape=None):
            pass

        def forward(self, inputs):
            return inputs * self.mask if self.is_train else inputs

    return HarnessDropout


def harness_dropout(net, node, x):
    """The dropout layer of the identical-dropout variant: a tensorlayer layer multiplying its input, in training
    mode, by a mask variable of open batch size that the trainer assigns the step's masks to before the forward
    pass (through model.harness_masks); the identity in evaluation mode. The mask starts at zero (batch 1, while
    tl.layers.Input forwards a batch of 1 through the static model): a step without its masks drops all."""
    shape = layouts.native_shape(node.output_shape)
    mask = net.tf.Variable(net.tf.zeros((1, *shape)), shape=net.tf.TensorShape([None, *shape]), trainable=False,
                           name=layouts.safe_name(node.name) + "_mask")
    net.masks[node.name] = mask
    return _harness_dropout_layer(net.tl)(mask, name=layouts.safe_name(node.name))(x)


@functools.cache
def _model_class(tl):
    class SpecOrderModel(tl.models.Model):
        """A static tl.models.Model given its outputs last node first, returning them in spec order.
        tensorlayer 2.2.5 builds a static model's graph by a search from each output in turn that visits a
        node once per output it is an ancestor of, listing its edges again each time; a node reading two
        inputs (Add, Concat) can then be scheduled before its second input exists (KeyError at the first
        call). Given the last node first, no search reaches a node an earlier one started from (a node is no
        ancestor of what precedes it in graph order), so each node is searched once, each edge listed once."""

        def forward(self, inputs, **kwargs):
            return super().forward(inputs, **kwargs)[::-1]

    return SpecOrderModel


def build(spec, dropout_masks="library"):
    """The static tl.models.Model whose outputs are every node's output, in spec order, with the spec's weights.
    dropout_masks="harness" builds `harness_dropout` at every dropout node that drops something. The model
    carries spec_params {"<node>.<param>": weight} and harness_masks {dropout node: mask variable}."""
    if dropout_masks not in ("library", "harness"):
        raise ValueError(f"dropout_masks={dropout_masks!r}: expected 'library' or 'harness'")
    tf, tl = library()
    net = _Network(tf, tl, spec, dropout_masks == "harness")
    module = sys.modules[__name__]
    shape = layouts.native_shape(spec.input_shape)
    inputs = tl.layers.Input([None, *shape], name="input")
    values = interface.walk(spec, lambda node, xs: interface.op_function(module, node)(net, node, *xs), inputs)
    model = _model_class(tl)(inputs=inputs, outputs=[values[node.name] for node in reversed(spec.layers)])
    for var, value in net.loads:
        var.assign(value.astype(np.float32))
    model.spec_params, model.harness_masks = net.params, net.masks
    return model


def layer_outputs(model, spec, x, **_options) -> dict:
    library()
    model.eval()
    values = model(layouts.nchw_to_nhwc(x))
    return {node.name: layouts.to_canonical(v.numpy(), source)
            for node, v, source in zip(spec.layers, values, layouts.flatten_sources(spec))}


def op_reduce(net, node, x):
    """tensorlayer reduces over H and W only (GlobalMeanPool2d): a Lambda of tf.reduce_sum or tf.reduce_mean over
    the node's axes on NHWC, kept as 1, then Reshape to the node's shape."""
    _image_input(net, node, "reduction")
    a, tf, name = node.attrs, net.tf, layouts.safe_name(node.name)
    reduce, axes = tf.reduce_sum if a["mode"] == "sum" else tf.reduce_mean, layouts.nhwc_axes(a["axes"])
    y = net.L.Lambda(lambda t: reduce(t, axis=axes, keepdims=True), name=name + "_reduce")(x)
    return net.L.Reshape([-1, *layouts.native_shape(node.output_shape)], name=name)(y)


def op_tile(net, node, x):
    _image_input(net, node, "tiling")
    return net.L.Tile(multiples=layouts.nhwc_repeats(node.attrs["repeats"]), name=layouts.safe_name(node.name))(x)
