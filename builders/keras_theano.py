"""Keras 2.3.1 on Theano 1.0.5: a functional keras.models.Model of Keras layers, channels_first (Theano's own NCHW).

Per op kind one `op_<kind>(spec, node, inputs, **options) -> Keras tensor` (the layers it adds are named after the
node); `build` applies them through `interface.walk`. Options, the variants a trainer trains:
pool_gradient="single" gives max pooling whose gradient goes to one maximum per window (as TensorFlow and PyTorch;
Theano's own, "theano", goes to every tied maximum); dropout_masks="harness" with batch_size puts a
`HarnessDropout` in place of Dropout, multiplying by a mask variable the trainer sets each step.

Where Keras 2.3.1 has no layer for an op, a subclass or Lambda built from Keras's backend and Theano's own ops
computes it: grouped convolution (Theano's num_groups), dilated max pooling (pool_2d over strided slices), batch norm
(ONNX's training mode, and epsilons below Theano's 1e-5 floor), instance norm, reflect / edge / non-zero constant
padding, transposed convolution with asymmetric pads (cropped), log-softmax, hard swish, and Selu / HardSigmoid /
Clip with other constants than Keras's."""
from __future__ import annotations

import collections
import collections.abc
import contextlib
import functools
import io
import logging
import math
import os
import sys

import numpy as np

from builders import Unsupported, cache_dir, interface, layouts
from spec import ir, ops
from spec.batchnorm import NativeBatchNorm

NAME = "keras-theano"
NATIVE_BATCHNORM = NativeBatchNorm("keras.layers.BatchNormalization (Keras 2.3.1)", "momentum=0.99, epsilon=1e-3",
                                   0.99, 1e-3, "keras2")
THEANO_MIN_EPSILON = 1.0001e-5  # Theano's batch_normalization_* refuse epsilon < 1e-5, float32(1e-5) included

_NOISE = ("Using Theano backend.",)


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> Keras (kh, kw, I, O), flipped in both spatial axes: Keras 2 on Theano performs
    true convolution (filter_flip), ONNX cross-correlation."""
    return np.ascontiguousarray(layouts.oihw_to_hwio(w)[::-1, ::-1, :, :])


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """(in, out) with rows in (C, H, W) order -> rows in the (H, W, C) order Keras Flatten produces
    (Keras 2 permutes channels_first input to channels_last before flattening)."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def depthwise_kernel(w: np.ndarray, channels: int) -> np.ndarray:
    """(C * m, 1, kh, kw) -> DepthwiseConv2D's (kh, kw, C, m); output channel c * m + j is (c, j) in both.
    Not flipped: Keras 2's Theano depthwise_conv2d flips the kernel itself before Theano's true convolution
    flips it back, so that layer cross-correlates as ONNX does."""
    return layouts.oihw_to_hwcm(w, channels)


def transposed_kernel(w: np.ndarray) -> np.ndarray:
    """ConvTranspose (in, out, kh, kw) -> Conv2DTranspose's (kh, kw, out, in), flipped in both spatial axes: Keras 2
    on Theano transposes a true convolution (filter_flip), ONNX a cross-correlation."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0)[::-1, ::-1, :, :])


def _depthwise_channels(spec, node) -> int | None:
    """The input channels of a depthwise conv node (group equal to its input channels, > 1), else None."""
    return spec.input_shapes(node)[0][0] if layouts.is_depthwise(spec, node) else None


def _flat_operand(spec, node, value):
    """The (C, H, W) a constant scale or shift operand's input was flattened from, where that input is in the
    (H, W, C) order of Keras's Flatten and the operand (F,) has one value per element; else None."""
    source = layouts.flatten_source_of(spec, node.inputs[0])
    return source if source is not None and value.shape == (int(np.prod(source)),) else None


# parameters with one value per element of their input: a flattened input's are in Flatten's (H, W, C) order
ELEMENTWISE_PARAMS = ("value", "slope")


def to_native(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Kernels as conv_kernel (grouped convs too: (O, I/G, kh, kw) like any other), depthwise_kernel,
    transposed_kernel and dense_kernel say; a constant operand or PReLU slope of a flattened vector in Flatten's
    (H, W, C) order; every other parameter (biases, batch-norm and instance-norm vectors, constant operands and
    slopes of maps: NCHW as the canonical) as it is."""
    if (node.kind, param) == ("conv", "weight"):
        channels = _depthwise_channels(spec, node)
        return depthwise_kernel(value, channels) if channels else conv_kernel(value)
    if (node.kind, param) == ("convtranspose", "weight"):
        return transposed_kernel(value)
    if (node.kind, param) == ("dense", "weight"):
        return dense_kernel(value, layouts.dense_input_order(spec, spec.index_of(node.name)))
    if param in ELEMENTWISE_PARAMS and (source := _flat_operand(spec, node, value)):
        return layouts.chw_rows_to_hwc(value.reshape(-1, 1), source).reshape(value.shape)
    return np.ascontiguousarray(value)


def to_canonical(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Inverse of to_native: depthwise (kh, kw, C, m) back to (C * m, 1, kh, kw); otherwise undo the spatial flip
    for Theano's true convolution, then HWIO -> OIHW (transposed: (kh, kw, out, in) -> (in, out, kh, kw)); dense rows
    and flat constant operands and slopes back from (H, W, C) to (C, H, W) order."""
    if (node.kind, param) == ("conv", "weight") and _depthwise_channels(spec, node):
        return layouts.hwcm_to_oihw(value)
    if (node.kind, param) == ("conv", "weight"):
        return layouts.hwio_to_oihw(value[::-1, ::-1, :, :])
    if (node.kind, param) == ("convtranspose", "weight"):
        return np.ascontiguousarray(value[::-1, ::-1, :, :].transpose(3, 2, 0, 1))
    if (node.kind, param) == ("dense", "weight"):
        return layouts.hwc_rows_to_chw(value, layouts.dense_input_order(spec, spec.index_of(node.name)))
    if param in ELEMENTWISE_PARAMS and (source := _flat_operand(spec, node, value)):
        return layouts.hwc_rows_to_chw(value.reshape(-1, 1), source).reshape(value.shape)
    return np.ascontiguousarray(value)


def library():
    """The keras module on the Theano backend, imported with the shims Python 3.11 needs."""
    if "keras" in sys.modules:
        keras = sys.modules["keras"]
        if keras.backend.backend() != "theano":
            raise RuntimeError(f"keras was already imported on the {keras.backend.backend()} backend")
        return keras
    # Python 3.10 moved these to collections.abc; Keras 2.3.1 still imports them from collections.
    for name in ("Iterable", "Mapping", "Sequence", "MutableMapping", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    # Empty blas.ldflags: Theano's BLAS lookup goes through numpy.distutils, which fails on Python 3.11;
    # Theano then uses NumPy's C-API BLAS. User flags come last so they win.
    flags = f"blas.ldflags=,base_compiledir={cache_dir('theano')},floatX=float32"
    os.environ["THEANO_FLAGS"] = ",".join(f for f in (flags, os.environ.get("THEANO_FLAGS")) if f)
    os.environ["KERAS_BACKEND"] = "theano"
    os.environ["KERAS_HOME"] = str(cache_dir("keras"))
    # That fallback is deliberate, so its warning is noise.
    logging.getLogger("theano.tensor.blas").setLevel(logging.ERROR)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import keras
    finally:
        for line in captured.getvalue().splitlines(keepends=True):
            if line.strip() not in _NOISE:
                sys.stderr.write(line)
    return keras


def versions(**_options) -> dict:
    keras = library()
    import theano
    return {"keras": keras.__version__, "theano": theano.__version__, "numpy": np.__version__}


def _theano_same_matches(kind, in_hw, kernel, strides, pads, dilations=(1, 1)) -> bool:
    """Whether Keras 2's padding='same' on Theano gives exactly these pads. It is not TensorFlow's SAME:
    it pads symmetrically (conv: e//2 for the dilated extent e, Theano's 'half'; pooling: k-2 for odd k > 2,
    else k-1) and keeps ceil(size/stride) outputs (pooling always, conv only for even undilated kernels)."""
    for size, k, s, d, before, after in zip(in_hw, kernel, strides, dilations, pads[:2], pads[2:]):
        e = d * (k - 1) + 1
        p = e // 2 if kind == "conv" else (k - 2 if k > 2 and k % 2 else k - 1)
        n = (size + 2 * p - e) // s + 1
        if kind != "conv" or k % 2 == 0:
            n = min(n, -(-size // s))
        if before != p or n != ir.window_output_size(size, e, s, before, after):
            return False
    return True


@functools.cache
def _single_max_pooling_2d(keras):
    """keras.layers.MaxPooling2D whose gradient goes to one maximum per window, the first in row-major window
    order, as in TensorFlow and PyTorch; Theano's own max-pool gradient goes to every tied maximum. Forward
    values are the same max. Only padding='valid' channels_first pooling is rewritten; the rest is stock."""
    import theano.tensor as T

    class SingleMaxPooling2D(keras.layers.MaxPooling2D):
        def _pooling_function(self, inputs, pool_size, strides, padding, data_format):
            if padding != "valid" or data_format != "channels_first":
                return super()._pooling_function(inputs, pool_size, strides, padding, data_format)
            (kh, kw), (sh, sw) = pool_size, strides
            oh, ow = (inputs.shape[2] - kh) // sh + 1, (inputs.shape[3] - kw) // sw + 1
            # the kh*kw elements of every window along a new leading axis, in row-major window order
            windows = T.stack([inputs[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                               for i in range(kh) for j in range(kw)])
            # one-hot of the first maximum (argmax picks the first); an integer mask, so no gradient through it
            first = T.eq(T.arange(kh * kw).reshape((-1, 1, 1, 1, 1)), T.argmax(windows, axis=0, keepdims=True))
            return (windows * first).sum(axis=0)

    return SingleMaxPooling2D


def _first_max(windows):
    """The maximum over axis 0 of stacked window slices, its gradient to the first maximum along that axis (argmax
    picks the first; an integer mask, so no gradient through it)."""
    import theano.tensor as T
    first = T.eq(T.arange(windows.shape[0]).reshape((-1, 1, 1, 1, 1)), T.argmax(windows, axis=0, keepdims=True))
    return T.switch(first, windows, 0).sum(axis=0)  # not windows * first: -inf * 0 is NaN


def _first_max_pool(x, pool_size, strides):
    """Undilated 'valid' max pooling of x whose gradient goes to each window's first maximum in row-major window
    order: the maximum over each row's kw column slices, then over the kh rows of those (the first row holding the
    window's maximum, in it the first column). kh + kw slices, not kh * kw."""
    import theano.tensor as T
    (kh, kw), (sh, sw) = pool_size, strides
    ow = (x.shape[3] - kw) // sw + 1
    rows = _first_max(T.stack([x[:, :, :, j:j + sw * (ow - 1) + 1:sw] for j in range(kw)]))
    oh = (x.shape[2] - kh) // sh + 1
    return _first_max(T.stack([rows[:, :, i:i + sh * (oh - 1) + 1:sh] for i in range(kh)]))


@functools.cache
def _dilated_max_pooling_2d(keras):
    """keras.layers.MaxPooling2D with a dilation rate and explicit pads of -inf, which neither Keras 2 nor Theano's
    pool_2d has. Along an axis, output o reads the rows o*s + i*d (i < k); the outputs o0 + t*q (q = d / gcd(s, d),
    o0 < q) read o0*s + (t*s/gcd + i)*d: an undilated pool of stride s/gcd over every d-th row from o0*s. So it is
    q_h * q_w undilated max pools of strided slices (one when the stride is a multiple of the dilation),
    interleaved. Each is Theano's pool_2d (K.pool2d), its gradient to every tied maximum; with first_max_gradient,
    _first_max_pool, its gradient to the first maximum in row-major window order (as SingleMaxPooling2D)."""
    import theano.tensor as T
    from keras import backend as K

    class DilatedMaxPooling2D(keras.layers.MaxPooling2D):
        def __init__(self, pool_size, strides, dilation_rate, pads, first_max_gradient, **kwargs):
            super().__init__(pool_size, strides=strides, padding="valid", data_format=CF, **kwargs)
            self.dilation_rate, self.pads, self.first_max_gradient = tuple(dilation_rate), tuple(pads), first_max_gradient

        def compute_output_shape(self, input_shape):
            n, c, h, w = input_shape
            (kh, kw), (sh, sw), (dh, dw), (top, left, bottom, right) = (self.pool_size, self.strides,
                                                                         self.dilation_rate, self.pads)
            return (n, c, ir.window_output_size(h, dh * (kh - 1) + 1, sh, top, bottom),
                    ir.window_output_size(w, dw * (kw - 1) + 1, sw, left, right))

        def _pooling_function(self, inputs, pool_size, strides, padding, data_format):
            (sh, sw), (dh, dw), (top, left, bottom, right) = strides, self.dilation_rate, self.pads
            oh, ow = self.compute_output_shape(K.int_shape(inputs))[2:]
            if any(self.pads):
                h, w = inputs.shape[2], inputs.shape[3]
                filled = T.alloc(np.float32(-np.inf), inputs.shape[0], inputs.shape[1], h + top + bottom, w + left + right)
                inputs = T.set_subtensor(filled[:, :, top:top + h, left:left + w], inputs)
            (gh, gw) = math.gcd(sh, dh), math.gcd(sw, dw)
            qh, qw = dh // gh, dw // gw
            parts = {(a, b): self._pool(inputs[:, :, a * sh::dh, b * sw::dw], pool_size, (sh // gh, sw // gw))
                     [:, :, :-(-(oh - a) // qh), :-(-(ow - b) // qw)]
                     for a in range(min(qh, oh)) for b in range(min(qw, ow))}
            if (qh, qw) == (1, 1):
                return parts[0, 0]
            y = T.zeros((inputs.shape[0], inputs.shape[1], oh, ow), dtype=inputs.dtype)
            for (a, b), part in parts.items():
                y = T.set_subtensor(y[:, :, a::qh, b::qw], part)
            return y

        def _pool(self, x, pool_size, strides):
            if self.first_max_gradient:
                return _first_max_pool(x, pool_size, strides)
            return K.pool2d(x, pool_size, strides, padding="valid", data_format=CF, pool_mode="max")

    return DilatedMaxPooling2D


@functools.cache
def _grouped_conv_2d(keras):
    """keras.layers.Conv2D of `groups` groups through Theano's own grouped convolution (conv2d's num_groups, which
    Keras 2's backend does not pass on): kernel (kh, kw, in / groups, filters), output channel o computed by group
    o // (filters / groups) as in ONNX. A true convolution like Conv2D on Theano, so conv_kernel flips it alike.
    padding='valid' only (op_conv pads before)."""
    import theano.tensor as T
    from keras import backend as K
    from keras.engine.base_layer import InputSpec

    class GroupedConv2D(keras.layers.Conv2D):
        def __init__(self, filters, kernel_size, groups, **kwargs):
            super().__init__(filters, kernel_size, **kwargs)
            if self.padding != "valid" or self.data_format != CF:
                raise ValueError("GroupedConv2D takes padding='valid' and channels_first only")
            self.groups = groups

        def build(self, input_shape):
            channels = input_shape[1]
            super().build((input_shape[0], channels // self.groups, *input_shape[2:]))  # kernel of in / groups
            self.input_spec = InputSpec(ndim=4, axes={1: channels})

        def call(self, inputs):
            y = T.nnet.conv2d(inputs, self.kernel.dimshuffle(3, 2, 0, 1), border_mode="valid", subsample=self.strides,
                              filter_dilation=self.dilation_rate, num_groups=self.groups)
            return K.bias_add(y, self.bias, data_format=CF)

        def get_config(self):
            return {**super().get_config(), "groups": self.groups}

    return GroupedConv2D


@functools.cache
def _onnx_batch_normalization(keras):
    """keras.layers.BatchNormalization with ONNX's training mode, written in keras.backend. Stock Keras 2.3.1 on
    Theano moves the moving variance by Theano's var + epsilon (1 / invstd**2) scaled by n / (n - (1 + epsilon)),
    an unbiased estimate, where ONNX moves it by the batch's biased variance; and Theano's batch_normalization_test
    and _train refuse an epsilon below 1e-5 in float32 (cuDNN's floor, enforced on the CPU too), which PyTorch's and
    ONNX's default float32(1e-5) is. Inference: (x - mean) * (gamma / sqrt(var + eps)) + beta with the moving
    statistics; training: the batch's mean and biased variance (the gradient flowing through both), the moving
    averages moved by momentum * moving + (1 - momentum) * batch."""
    from keras import backend as K

    class OnnxBatchNormalization(keras.layers.BatchNormalization):
        running_variance = "biased"

        def call(self, inputs, training=None):
            ndim = K.ndim(inputs)
            axes = [a for a in range(ndim) if a != self.axis % ndim]
            shape = [1] * ndim
            shape[self.axis] = K.int_shape(inputs)[self.axis]

            def normalize(mean, var):
                factor = K.reshape(self.gamma, shape) / K.sqrt(K.reshape(var, shape) + self.epsilon)
                return (inputs - K.reshape(mean, shape)) * factor + K.reshape(self.beta, shape)

            def inference():
                return normalize(self.moving_mean, self.moving_variance)

            if isinstance(training, int) and not training:  # a static test phase (0 or False), as stock Keras
                return inference()
            mean, var = K.mean(inputs, axis=axes), K.var(inputs, axis=axes)
            moved = var
            if self.running_variance == "keras2":  # stock Keras 2.3.1's rule, for epsilons Theano refuses
                spatial = float(np.prod([K.int_shape(inputs)[a] for a in axes[1:]]))
                n = K.cast(K.shape(inputs)[0], K.floatx()) * spatial
                moved = (var + self.epsilon) * (n / (n - (1.0 + self.epsilon)))
            self.add_update([K.moving_average_update(self.moving_mean, mean, self.momentum),
                             K.moving_average_update(self.moving_variance, moved, self.momentum)], inputs)
            return K.in_train_phase(normalize(mean, var), inference, training=training)

    return OnnxBatchNormalization


@functools.cache
def _harness_dropout(keras):
    from keras import backend as K

    class HarnessDropout(keras.layers.Layer):
        """Dropout by the harness's masks: in the train phase (K.in_train_phase, as Dropout) the input times the
        first n rows of `step_mask`, a non-trainable variable of the full batch size holding the step's mask
        (padded; the trainer sets it before each step); the identity otherwise."""

        def __init__(self, batch_size: int, **kwargs):
            super().__init__(**kwargs)
            self.batch_size = batch_size

        def build(self, input_shape):
            self.step_mask = self.add_weight(name="mask", shape=(self.batch_size, *input_shape[1:]),
                                             initializer="zeros", trainable=False)
            super().build(input_shape)

        def call(self, inputs, training=None):
            return K.in_train_phase(lambda: inputs * self.step_mask[:K.shape(inputs)[0]], inputs, training=training)

        def compute_output_shape(self, input_shape):
            return input_shape

    return HarnessDropout


# --- per-op layers: op_<kind>(spec, node, inputs, **options) -> the node's output tensor ----------------------

CF = "channels_first"


def _load(layer, spec, node) -> None:
    """The node's canonical parameters, in Keras's layout, into the (called, so built) layer: Keras lists a
    layer's weights in the registry's parameter order (kernel, bias)."""
    params = spec.params(node)
    if len(layer.weights) != len(params):
        raise RuntimeError(f"{node.name}: Keras layer has {len(layer.weights)} weights, the op {len(params)}")
    layer.set_weights([to_native(spec, node, p, v) for p, v in params.items()])


def _window_padding(spec, node) -> tuple:
    """(pads, padding mode, whether Keras's padding='same' on Theano gives exactly these pads)."""
    a, in_hw = node.attrs, spec.input_shapes(node)[0][1:]
    extent = ops.effective_kernel(a)
    mode = ir.padding_mode(in_hw, extent, a["strides"], a["pads"])
    pads = ir.same_pads(in_hw, extent, a["strides"]) if mode == "same" else tuple(a["pads"])
    native_same = mode != "valid" and _theano_same_matches(node.kind, in_hw, a["kernel"], a["strides"], pads,
                                                           ops.dilations(a))
    return pads, mode, native_same


def _zero_pad(x, pads):
    top, left, bottom, right = pads
    return library().layers.ZeroPadding2D(((top, bottom), (left, right)), data_format=CF)(x)


def op_conv(spec, node, inputs, **_options):
    """Conv2D; DepthwiseConv2D (depth multiplier filters / channels) when group equals the input channels; other
    groups a GroupedConv2D (Theano's own grouped convolution). Dilations as their dilation_rate."""
    (x,), a, keras = inputs, node.attrs, library()
    group = a.get("group", 1)
    grouped = group > 1 and not _depthwise_channels(spec, node)
    pads, mode, native_same = _window_padding(spec, node)
    native_same = native_same and not grouped
    if mode != "valid" and not native_same:
        x = _zero_pad(x, pads)
    common = {"strides": a["strides"], "padding": "same" if native_same else "valid",
              "dilation_rate": ops.dilations(a), "data_format": CF, "name": node.name}
    if grouped:
        conv = _grouped_conv_2d(keras)(a["filters"], a["kernel"], group, **common)
    elif group > 1:
        conv = keras.layers.DepthwiseConv2D(a["kernel"], depth_multiplier=a["filters"] // group, **common)
    else:
        conv = keras.layers.Conv2D(a["filters"], a["kernel"], **common)
    y = conv(x)
    _load(conv, spec, node)
    return y


def _pool(spec, node, inputs, pool_class):
    (x,), a = inputs, node.attrs
    pads, mode, native_same = _window_padding(spec, node)
    padding = "valid"
    if mode == "valid":
        pass
    elif node.kind == "avgpool" and a["count_include_pad"]:
        x = _zero_pad(x, pads)
    elif native_same:
        padding = "same"  # Theano's pooling pad: max ignores it, average excludes it
    elif node.kind == "maxpool" and layouts.nonnegative_input(spec, spec.index_of(node.name)):
        x = _zero_pad(x, pads)
    elif node.kind == "maxpool":  # -inf pads: the dilated pooling's composition, at dilation 1
        return _dilated_max_pooling_2d(library())(a["kernel"], a["strides"], (1, 1), a["pads"],
                                                  pool_class is not library().layers.MaxPooling2D, name=node.name)(x)
    else:  # Theano's average excludes symmetric pads only: zero pads, then divide by each window's share of cells
        return _excluding_pad_average(spec, node, _zero_pad(x, pads))
    return pool_class(a["kernel"], strides=a["strides"], padding=padding, data_format=CF, name=node.name)(x)


def _excluding_pad_average(spec, node, padded):
    keras, a = library(), node.attrs
    ones = np.ones((1, 1, *spec.input_shapes(node)[0][1:]))
    share = ops.get("avgpool").forward(dict(a, count_include_pad=True), {}, [ones])[0][0, 0]  # real cells / k*k
    pooled = keras.layers.AveragePooling2D(a["kernel"], strides=a["strides"], data_format=CF)(padded)
    inverse = (1.0 / share).astype(np.float32)
    return keras.layers.Lambda(lambda t: t * keras.backend.constant(inverse), name=node.name)(pooled)


def op_maxpool(spec, node, inputs, pool_gradient="theano", **_options):
    keras, a = library(), node.attrs
    if ops.dilations(a) != (1, 1):
        return _dilated_max_pooling_2d(keras)(a["kernel"], a["strides"], ops.dilations(a), a["pads"],
                                              pool_gradient == "single", name=node.name)(*inputs)
    pool = _single_max_pooling_2d(keras) if pool_gradient == "single" else keras.layers.MaxPooling2D
    return _pool(spec, node, inputs, pool)


def op_avgpool(spec, node, inputs, **_options):
    return _pool(spec, node, inputs, library().layers.AveragePooling2D)


def op_relu(spec, node, inputs, **_options):
    return library().layers.ReLU(name=node.name)(*inputs)


def op_tanh(spec, node, inputs, **_options):
    return library().layers.Activation("tanh", name=node.name)(*inputs)


def op_dropout(spec, node, inputs, dropout_masks="library", batch_size=None, **_options):
    keras, rate = library(), node.attrs["rate"]
    if dropout_masks == "harness" and rate > 0:
        return _harness_dropout(keras)(batch_size, name=node.name)(*inputs)
    return keras.layers.Dropout(rate, name=node.name)(*inputs)


def op_flatten(spec, node, inputs, **_options):
    """Keras's Flatten, which on channels_first flattens in (H, W, C) order: for the order HWC that is the canonical
    vector; for CHW, layouts.flatten_sources records the map it came from (dense rows and outputs are permuted)."""
    L = library().layers
    if len(spec.input_shapes(node)[0]) == 3:
        return L.Flatten(data_format=CF, name=node.name)(*inputs)
    # Keras 2 Flatten needs a spatial input; flattening a vector is the identity
    return L.Reshape(tuple(node.output_shape), name=node.name)(*inputs)


def op_dense(spec, node, inputs, **_options):
    dense = library().layers.Dense(node.attrs["units"], name=node.name)
    y = dense(*inputs)
    _load(dense, spec, node)
    return y


def op_softmax(spec, node, inputs, **_options):
    # channels_first: the canonical axis is Keras's
    return library().layers.Softmax(axis=node.attrs.get("axis", 1), name=node.name)(*inputs)


def op_logsoftmax(spec, node, inputs, **_options):
    # Keras 2 has no log-softmax layer or backend function: the shifted form, in keras.backend
    keras, axis = library(), node.attrs.get("axis", 1)
    K = keras.backend

    def log_softmax(x):
        shifted = x - K.max(x, axis=axis, keepdims=True)
        return shifted - K.log(K.sum(K.exp(shifted), axis=axis, keepdims=True))
    return _lambda(node, log_softmax, *inputs)


def op_sigmoid(spec, node, inputs, **_options):
    return library().layers.Activation("sigmoid", name=node.name)(*inputs)


def op_softplus(spec, node, inputs, **_options):
    return library().layers.Activation("softplus", name=node.name)(*inputs)


def op_leakyrelu(spec, node, inputs, **_options):
    return library().layers.LeakyReLU(node.attrs["alpha"], name=node.name)(*inputs)


def op_elu(spec, node, inputs, **_options):
    return library().layers.ELU(node.attrs["alpha"], name=node.name)(*inputs)


def _float32_equal(values, constants) -> bool:
    return all(np.float32(v) == np.float32(c) for v, c in zip(values, constants))


def _lambda(node, f, *inputs):
    """An elementwise Lambda layer named after the node."""
    return library().layers.Lambda(f, output_shape=lambda shape: shape, name=node.name)(*inputs)


# (alpha, scale) as keras.activations.selu (2.3.1) writes them, inside the function
KERAS_SELU = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


def op_selu(spec, node, inputs, **_options):
    """Keras's selu where its two constants are the node's (in float32), else the same formula with the node's."""
    keras, a = library(), node.attrs
    if _float32_equal((a["alpha"], a["gamma"]), KERAS_SELU):
        return keras.layers.Activation("selu", name=node.name)(*inputs)
    return _lambda(node, lambda x: a["gamma"] * keras.backend.elu(x, a["alpha"]), *inputs)


def op_hardsigmoid(spec, node, inputs, **_options):
    """Theano's hard_sigmoid (Keras's 'hard_sigmoid') where the node's slope and offset are its 0.2 and 0.5, else
    the same clip with the node's."""
    keras, a = library(), node.attrs
    if _float32_equal((a["alpha"], a["beta"]), (0.2, 0.5)):
        return keras.layers.Activation("hard_sigmoid", name=node.name)(*inputs)
    return _lambda(node, lambda x: keras.backend.clip(a["alpha"] * x + a["beta"], 0.0, 1.0), *inputs)


def op_hardswish(spec, node, inputs, **_options):
    # no such layer or activation in Keras 2: x * hard sigmoid of slope 1/6, in keras.backend
    K = library().backend
    return _lambda(node, lambda x: x * K.clip(x / 6.0 + 0.5, 0.0, 1.0), *inputs)


def op_clip(spec, node, inputs, **_options):
    """ReLU with max_value where min is 0 (ReLU6); otherwise min(max(x, min), max), which, as ONNX and unlike
    K.clip, gives max everywhere when min > max."""
    keras, lo, hi = library(), node.attrs["min"], node.attrs["max"]
    if lo == 0 and hi >= 0:
        return keras.layers.ReLU(max_value=None if np.isinf(hi) else hi, name=node.name)(*inputs)
    K = keras.backend
    return _lambda(node, lambda x: K.minimum(K.maximum(x, lo), hi), *inputs)


def op_add(spec, node, inputs, **_options):
    L = library().layers
    if len(inputs) == 1:  # Sum of one tensor; Keras's Add takes two or more
        return L.Activation("linear", name=node.name)(*inputs)
    return L.Add(name=node.name)(list(inputs))


def op_mul(spec, node, inputs, **_options):
    keras = library()
    first, second = spec.input_shapes(node)
    if first == second:
        return keras.layers.Multiply(name=node.name)(list(inputs))
    import theano.tensor as T

    # a (C, 1, 1) gate per image: Theano broadcasts only axes it is told are broadcastable
    return keras.layers.Lambda(lambda ts: ts[0] * T.addbroadcast(ts[1], 2, 3), name=node.name)(list(inputs))


def op_concat(spec, node, inputs, **_options):
    L = library().layers
    sources = [layouts.flatten_source_of(spec, t) for t in node.inputs]
    if any(s is not None for s in sources):
        raise Unsupported(f"{node.name}: concatenating flattened vectors: Keras's Flatten gives each in (H, W, C) "
                          f"order and the dense layer after the concatenation is permuted for one source only")
    if len(inputs) == 1:
        return L.Activation("linear", name=node.name)(*inputs)
    return L.Concatenate(axis=1, name=node.name)(list(inputs))


def op_globalavgpool(spec, node, inputs, **_options):
    """GlobalAveragePooling2D ([N, C]); with keepdims a Reshape to [N, C, 1, 1] after it carries the node's name."""
    L = library().layers
    if not node.attrs.get("keepdims", True):
        return L.GlobalAveragePooling2D(data_format=CF, name=node.name)(*inputs)
    y = L.GlobalAveragePooling2D(data_format=CF, name=f"{node.name}_pool")(*inputs)
    return L.Reshape(tuple(node.output_shape), name=node.name)(y)


def op_batchnorm(spec, node, inputs, **_options):
    """BatchNormalization on the channel axis with the node's epsilon (Keras's default is 1e-3), inference mode at
    predict. Momentum: Keras's moving = momentum * moving + (1 - momentum) * batch is ONNX's convention, so the node's
    momentum is Keras's as it is. Training and small epsilons: `_onnx_batch_normalization`."""
    keras, a = library(), node.attrs
    estimator = interface.running_variance(node, "biased", "keras2")
    if estimator == "keras2" and a["epsilon"] >= THEANO_MIN_EPSILON:  # native: the stock layer
        bn = keras.layers.BatchNormalization(axis=1, momentum=a["momentum"], epsilon=a["epsilon"], name=node.name)
    else:
        bn = _onnx_batch_normalization(keras)(axis=1, momentum=a["momentum"], epsilon=a["epsilon"], name=node.name)
        bn.running_variance = estimator
    y = bn(*inputs)
    _load(bn, spec, node)
    return y


def op_lrn(spec, node, inputs, **_options):
    """Keras 2 has no LRN layer: ONNX's LRN in keras.backend. The squares are zero-padded along the channel axis
    (temporal_padding of the (N, C, H * W) view) by the window's reach below and above, (size - 1) // 2 and the
    rest (asymmetric for even sizes, as ONNX defines it), and summed over `size` shifted slices; alpha is divided
    by size, as ONNX does."""
    K, a = library().backend, node.attrs
    size, channels, (height, width) = a["size"], spec.input_shapes(node)[0][0], spec.input_shapes(node)[0][1:]
    below = (size - 1) // 2

    def lrn(x):
        squares = K.reshape(K.square(x), (-1, channels, height * width))
        padded = K.temporal_padding(squares, (below, size - 1 - below))
        window_sums = K.reshape(sum(padded[:, i:i + channels] for i in range(size)), (-1, channels, height, width))
        return x / K.pow(a["bias"] + a["alpha"] / size * window_sums, a["beta"])
    return _lambda(node, lrn, *inputs)


@functools.cache
def _constant_operand(keras):
    """A layer holding a constant operand `value` of the registry's shape (the input's without the batch axis,
    broadcasting along its axes of size 1) as a weight, applied with Keras's elementwise multiply or add: Keras 2
    has Multiply and Add layers of two tensors only. The weight is reshaped with a leading 1, which makes Theano
    broadcast along every axis of size 1 (a shared variable's own axes never broadcast)."""
    from keras import backend as K

    class ConstantOperand(keras.layers.Layer):
        def __init__(self, shape, operation, **kwargs):
            super().__init__(**kwargs)
            self.shape, self.operation = tuple(shape), operation

        def build(self, input_shape):
            self.value = self.add_weight(name="value", shape=self.shape, initializer="zeros")
            super().build(input_shape)

        def call(self, inputs):
            value = K.reshape(self.value, (1, *self.shape))
            return inputs * value if self.operation == "multiply" else inputs + value

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "shape": self.shape, "operation": self.operation}

    return ConstantOperand


def _constant_operation(spec, node, inputs, operation):
    layer = _constant_operand(library())(spec.params(node)["value"].shape, operation, name=node.name)
    y = layer(*inputs)
    _load(layer, spec, node)
    return y


def op_scale(spec, node, inputs, **_options):
    return _constant_operation(spec, node, inputs, "multiply")


def op_shift(spec, node, inputs, **_options):
    return _constant_operation(spec, node, inputs, "add")


def op_channelshuffle(spec, node, inputs, **_options):
    """Keras's Reshape, Permute, Reshape, as ONNX writes it: the channels viewed as (groups, C / groups), those two
    axes swapped, flattened back."""
    L, groups = library().layers, node.attrs["groups"]
    channels, height, width = spec.input_shapes(node)[0]
    y = L.Reshape((groups, channels // groups, height, width), name=f"{node.name}_groups")(*inputs)
    y = L.Permute((2, 1, 3, 4), name=f"{node.name}_transpose")(y)
    return L.Reshape((channels, height, width), name=node.name)(y)


def _border_pad(x, axis: int, size: int, before: int, after: int, mode: str):
    """x padded along `axis` (of length size) in keras.backend: reflect mirrors the slices next to the border
    (K.reverse), edge repeats the border slice (K.repeat_elements); concatenated around x."""
    K = library().backend

    def part(start, stop):
        index = [slice(None)] * 4
        index[axis] = slice(start, stop)
        return x[tuple(index)]
    if mode == "reflect":
        head, tail = K.reverse(part(1, before + 1), axis), K.reverse(part(size - 1 - after, size - 1), axis)
    else:
        head, tail = K.repeat_elements(part(0, 1), before, axis), K.repeat_elements(part(size - 1, size), after, axis)
    return K.concatenate([t for t, n in ((head, before), (x, 1), (tail, after)) if n], axis=axis)


def op_pad(spec, node, inputs, **_options):
    """ZeroPadding2D for constant 0. Keras 2 has no other padding: a constant value fills a Theano tensor the input
    is set into; reflect and edge are _border_pad along H, then W (reflect: pads below the size only, one mirror)."""
    (x,), a = inputs, node.attrs
    top, left, bottom, right = a["pads"]
    mode, value = a["mode"], a.get("value", 0.0)
    _, height, width = spec.input_shapes(node)[0]
    if mode == "constant" and value == 0:
        return library().layers.ZeroPadding2D(((top, bottom), (left, right)), data_format=CF, name=node.name)(x)
    if mode == "constant":
        import theano.tensor as T

        def fill(x):
            filled = T.alloc(np.float32(value), x.shape[0], x.shape[1], height + top + bottom, width + left + right)
            return T.set_subtensor(filled[:, :, top:top + height, left:left + width], x)
        return library().layers.Lambda(fill, output_shape=tuple(node.output_shape), name=node.name)(x)
    if mode == "reflect" and (max(top, bottom) >= height or max(left, right) >= width):
        raise Unsupported(f"{node.name}: reflect pads {a['pads']} reach beyond the input ({height}x{width}): "
                          f"a mirror of the mirror, which these slices do not compose")

    def border(x):
        return _border_pad(_border_pad(x, 2, height, top, bottom, mode), 3, width, left, right, mode)
    return library().layers.Lambda(border, output_shape=tuple(node.output_shape), name=node.name)(x)


@functools.cache
def _cropped_conv_2d_transpose(keras):
    """keras.layers.Conv2DTranspose with padding='valid' (the full output, output_padding added), then ONNX's pads
    (top, left, bottom, right) cropped: Keras's padding='same' crops e // 2 on every side only."""

    class CroppedConv2DTranspose(keras.layers.Conv2DTranspose):
        def __init__(self, filters, kernel_size, pads, **kwargs):
            super().__init__(filters, kernel_size, padding="valid", **kwargs)
            self.pads = tuple(pads)

        def call(self, inputs):
            top, left, bottom, right = self.pads
            y = super().call(inputs)
            return y[:, :, top:y.shape[2] - bottom, left:y.shape[3] - right]

        def compute_output_shape(self, input_shape):
            n, c, h, w = super().compute_output_shape(input_shape)
            top, left, bottom, right = self.pads
            return n, c, h - top - bottom, w - left - right

        def get_config(self):
            return {**super().get_config(), "pads": self.pads}

    return CroppedConv2DTranspose


def op_convtranspose(spec, node, inputs, **_options):
    """Conv2DTranspose with the node's strides, output_padding and dilations; padding='same' where that is the
    node's pads (Theano: odd dilated extents e, pads e // 2 on every side), else CroppedConv2DTranspose."""
    keras, a = library(), node.attrs
    extent, pads = ops.effective_kernel(a), tuple(a["pads"])
    common = {"strides": a["strides"], "output_padding": tuple(a.get("output_padding", (0, 0))),
              "dilation_rate": ops.dilations(a), "data_format": CF, "name": node.name}
    if all(e % 2 for e in extent) and pads == (extent[0] // 2, extent[1] // 2) * 2:
        conv = keras.layers.Conv2DTranspose(a["filters"], a["kernel"], padding="same", **common)
    else:
        conv = _cropped_conv_2d_transpose(keras)(a["filters"], a["kernel"], pads, **common)
    y = conv(*inputs)
    _load(conv, spec, node)
    return y


def op_prelu(spec, node, inputs, **_options):
    """PReLU shared along the axes where the slope has size 1, so its alpha has the slope's shape."""
    shape = spec.params(node)["slope"].shape
    shared = [axis + 1 for axis, n in enumerate(shape) if n == 1]
    prelu = library().layers.PReLU(shared_axes=shared or None, name=node.name)
    y = prelu(*inputs)
    _load(prelu, spec, node)
    return y


@functools.cache
def _instance_normalization(keras):
    """Keras 2 has no instance normalisation: per image and channel (x - mean) / sqrt(var + epsilon) with the mean
    and biased variance over H and W, times scale plus bias per channel, in keras.backend."""
    from keras import backend as K

    class InstanceNormalization(keras.layers.Layer):
        def __init__(self, epsilon, **kwargs):
            super().__init__(**kwargs)
            self.epsilon = epsilon

        def build(self, input_shape):
            self.scale = self.add_weight(name="scale", shape=(input_shape[1],), initializer="ones")
            self.bias = self.add_weight(name="bias", shape=(input_shape[1],), initializer="zeros")
            super().build(input_shape)

        def call(self, inputs):
            mean = K.mean(inputs, axis=(2, 3), keepdims=True)
            var = K.var(inputs, axis=(2, 3), keepdims=True)
            shape = (1, -1, 1, 1)
            return (inputs - mean) / K.sqrt(var + self.epsilon) * K.reshape(self.scale, shape) + K.reshape(self.bias, shape)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "epsilon": self.epsilon}

    return InstanceNormalization


def op_instancenorm(spec, node, inputs, **_options):
    norm = _instance_normalization(library())(node.attrs["epsilon"], name=node.name)
    y = norm(*inputs)
    _load(norm, spec, node)
    return y


# Permute (1-based, no batch axis) of the (b, b, C', H, W) or (C', b, b, H, W) view to (C', H, b, W, b)
DEPTH_TO_SPACE = {"DCR": (3, 4, 1, 5, 2), "CRD": (1, 4, 2, 5, 3)}


def op_depthtospace(spec, node, inputs, **_options):
    """Keras's Reshape, Permute, Reshape, as ONNX defines it: the channels viewed as (b, b, C') in DCR mode or
    (C', b, b) in CRD mode, the block axes moved beside H and W, merged into them."""
    L, a = library().layers, node.attrs
    b, (channels, height, width) = a["blocksize"], spec.input_shapes(node)[0]
    blocks = (b, b, channels // b**2) if a["mode"] == "DCR" else (channels // b**2, b, b)
    y = L.Reshape((*blocks, height, width), name=f"{node.name}_blocks")(*inputs)
    y = L.Permute(DEPTH_TO_SPACE[a["mode"]], name=f"{node.name}_transpose")(y)
    return L.Reshape(tuple(node.output_shape), name=node.name)(y)


def op_unsqueeze(spec, node, inputs, **_options):
    """Reshape to (F, 1, 1); a vector still in Flatten's (H, W, C) order is put back in (C, H, W) order first
    (Reshape to the (H, W, C) map, Permute to (C, H, W))."""
    (x,), L = inputs, library().layers
    source = layouts.flatten_source_of(spec, node.inputs[0])
    if source is not None and source[1] * source[2] > 1:
        channels, height, width = source
        x = L.Reshape((height, width, channels), name=f"{node.name}_hwc")(x)
        x = L.Permute((3, 1, 2), name=f"{node.name}_chw")(x)
    return L.Reshape(tuple(node.output_shape), name=node.name)(x)

# --- the model ----------------------------------------------------------------------------------------------

POOL_GRADIENTS = ("theano", "single")
DROPOUT_MASKS = ("library", "harness")


def build(spec, pool_gradient: str = "theano", dropout_masks: str = "library", batch_size: int | None = None):
    """keras.models.Model(input, output) of the graph. pool_gradient: "theano" keeps Keras's MaxPooling2D
    (gradient to every tied maximum of a window), "single" uses SingleMaxPooling2D (to the first maximum only);
    forward outputs are the same. dropout_masks="harness" (needs batch_size, the training batch size): each
    Dropout that drops something becomes a HarnessDropout."""
    if pool_gradient not in POOL_GRADIENTS:
        raise ValueError(f"unknown pool_gradient {pool_gradient!r}; choose from {', '.join(POOL_GRADIENTS)}")
    if dropout_masks not in DROPOUT_MASKS:
        raise ValueError(f"unknown dropout_masks {dropout_masks!r}; choose from {', '.join(DROPOUT_MASKS)}")
    if dropout_masks == "harness" and not batch_size:
        raise ValueError("dropout_masks='harness' needs batch_size, the size of the mask variables")
    keras, this = library(), sys.modules[__name__]
    options = {"pool_gradient": pool_gradient, "dropout_masks": dropout_masks, "batch_size": batch_size}

    def apply(node, inputs):
        return interface.op_function(this, node, NAME)(spec, node, inputs, **options)

    x = keras.layers.Input(shape=tuple(spec.input_shape))
    values = interface.walk(spec, apply, x)
    return keras.models.Model(x, values[spec.output().name])


def native_parameters(model, node) -> dict:
    """{param name (the registry's): the Keras variable holding it} of a node with parameters."""
    return dict(zip(ops.get(node.kind).param_names, model.get_layer(node.name).weights))


def layer_outputs(model, spec, x, **_options):
    keras = library()
    probe = keras.models.Model(model.input, [model.get_layer(l.name).output for l in spec.layers])
    ys = probe.predict(x, batch_size=len(x))  # predict runs in the test phase: dropout inactive
    if len(spec.layers) == 1:
        ys = [ys]
    # channels_first: only the flattened vectors are in (H, W, C) order
    return {layer.name: layouts.to_canonical(y, source) if y.ndim == 2 else y
            for layer, y, source in zip(spec.layers, ys, layouts.flatten_sources(spec))}


def op_reduce(spec, node, inputs, **_options):
    """Keras 2.3.1 pools over H and W only: a Lambda of keras.backend's sum or mean over the node's axes (NCHW, as
    ONNX), kept as 1, then Reshape to the node's shape."""
    keras, a = library(), node.attrs
    K, axes = keras.backend, list(a["axes"])
    reduce = K.sum if a["mode"] == "sum" else K.mean
    kept = ops.reduced_map(a, spec.input_shapes(node)[0])
    y = keras.layers.Lambda(lambda t: reduce(t, axis=axes, keepdims=True), output_shape=kept,
                            name=f"{node.name}_reduce")(*inputs)
    return keras.layers.Reshape(tuple(node.output_shape), name=node.name)(y)


def op_tile(spec, node, inputs, **_options):
    """Keras 2.3.1 has no tiling layer: a Lambda of keras.backend.tile (Theano's tile)."""
    keras, repeats = library(), [1, *node.attrs["repeats"]]
    return keras.layers.Lambda(lambda t: keras.backend.tile(t, repeats), output_shape=tuple(node.output_shape),
                               name=node.name)(*inputs)
