"""Keras 3 on the TensorFlow backend: a functional keras.Model of Keras layers, one function per op kind
(`op_<kind>`) walked over the graph, channels_last (NHWC).

Options: backend "jax" or "torch" (the fast paths, builders.FAST_PATHS) builds the same Keras model on that
Keras 3 backend instead (the process must not have imported keras on another backend before);
dropout_masks="harness" with batch_size is the identical-dropout training variant (see `build`)."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from typing import NamedTuple

import numpy as np

from builders import Unsupported, cache_dir, interface, layouts
from spec import ir, ops
from spec.batchnorm import NativeBatchNorm

NAME = "keras-tensorflow"
NATIVE_BATCHNORM = NativeBatchNorm("keras.layers.BatchNormalization (Keras 3)", "momentum=0.99, epsilon=1e-3", 0.99,
                                   1e-3, "biased")


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> Keras (kh, kw, I, O); TensorFlow convolves by cross-correlation like ONNX."""
    return layouts.oihw_to_hwio(w)


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """(in, out) with rows in (C, H, W) order -> rows in the (H, W, C) order Keras Flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def depthwise_kernel(w: np.ndarray, channels: int) -> np.ndarray:
    """Depthwise (C*M, 1, kh, kw), output channel c*M + m from input channel c -> DepthwiseConv2D's (kh, kw, C, M),
    whose output channel c*M + m is the same one."""
    return layouts.oihw_to_hwcm(w, channels)


def depthwise_to_canonical(w: np.ndarray) -> np.ndarray:
    """Inverse of depthwise_kernel."""
    return layouts.hwcm_to_oihw(w)


def convtranspose_kernel(w: np.ndarray) -> np.ndarray:
    """(in, out, kh, kw), the weight of the convolution it transposes -> Conv2DTranspose's (kh, kw, out, in), that
    convolution's Keras kernel: TensorFlow's transposed conv is its input gradient, no kernel flip."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def convtranspose_to_canonical(w: np.ndarray) -> np.ndarray:
    """Inverse of convtranspose_kernel."""
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


# TensorFlow's C++ start-up INFO lines; the oneDNN one is written before absl logging is initialised,
# so TF_CPP_MIN_LOG_LEVEL does not hold it back.
_NOISE = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on")


@contextlib.contextmanager
def _stderr_without(noise):
    """Capture file descriptor 2 (C++ logging writes there directly); re-emit every line but the noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(n in line for n in noise):
                    sys.stderr.write(line)


BACKEND_PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


def library(backend: str = "tensorflow"):
    """keras, imported on `backend` (the process must not have imported it on another)."""
    if backend not in BACKEND_PACKAGES:
        raise Unsupported(f"Keras backend {backend!r}; choose from {', '.join(BACKEND_PACKAGES)}")
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax":  # XLA executables kept in the project's cache for later runs
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir("jax")))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO off, warnings and errors kept
    with _stderr_without(_NOISE):
        import keras
    if keras.backend.backend() != backend:
        raise RuntimeError(f"keras was already imported on the {keras.backend.backend()} backend, not {backend}")
    return keras


def versions(backend: str = "tensorflow", **_options) -> dict:
    import importlib

    keras = library(backend)
    return {"keras": keras.__version__, "keras backend": keras.backend.backend(),
            **{p: importlib.import_module(p).__version__ for p in BACKEND_PACKAGES[keras.backend.backend()]},
            "numpy": np.__version__}


# --- parameters: canonical <-> Keras ---------------------------------------------------------------------

def depthwise(spec, node) -> bool:
    """A conv node with one group per input channel (any depth multiplier): a DepthwiseConv2D."""
    return layouts.is_depthwise(spec, node)


def constant_value(value: np.ndarray, flatten_from) -> np.ndarray:
    """A scale's or shift's canonical value -> the layout it broadcasts onto in Keras: (C, H, W)-style (C, 1, 1,
    (1, 1, 1), ...) -> (H, W, C)-style; a flat (F,) one that meets an (H, W, C)-ordered flatten (flatten_from, its
    (C, H, W) source) -> that order."""
    if value.ndim == 3:
        return np.ascontiguousarray(value.transpose(1, 2, 0))
    if flatten_from is not None and value.size > 1:
        return layouts.from_canonical(value[None], flatten_from)[0]
    return np.ascontiguousarray(value)


def constant_to_canonical(value: np.ndarray, flatten_from) -> np.ndarray:
    """Inverse of constant_value."""
    if value.ndim == 3:
        return np.ascontiguousarray(value.transpose(2, 0, 1))
    if flatten_from is not None and value.size > 1:
        return layouts.to_canonical(value[None], flatten_from)[0]
    return np.ascontiguousarray(value)


def to_native(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """A canonical parameter (or gradient) -> the layout the Keras layer holds it in. A grouped Conv2D's kernel is
    (kh, kw, in/group, out), which is oihw_to_hwio of the canonical (out, in/group, kh, kw); BatchNormalization's
    gamma, beta, moving mean and variance (and GroupNormalization's, for instance norm) are (C,) as in the
    registry; a scale's or shift's value and a PReLU slope as constant_value says."""
    if (node.kind, param) == ("conv", "weight") and depthwise(spec, node):
        return depthwise_kernel(value, node.attrs["group"])
    if (node.kind, param) == ("convtranspose", "weight"):
        return convtranspose_kernel(value)
    if node.kind in ("scale", "shift", "prelu"):
        return constant_value(value, layouts.flatten_source_of(spec, node.inputs[0]))
    return layouts.nhwc_parameter(spec, node, param, value, conv_kernel, dense_kernel)


def to_canonical(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Inverse of to_native."""
    if (node.kind, param) == ("conv", "weight") and depthwise(spec, node):
        return depthwise_to_canonical(value)
    if (node.kind, param) == ("convtranspose", "weight"):
        return convtranspose_to_canonical(value)
    if node.kind in ("scale", "shift", "prelu"):
        return constant_to_canonical(value, layouts.flatten_source_of(spec, node.inputs[0]))
    return layouts.canonical_parameter(spec, node, param, value)


def parameters(model, spec) -> dict:
    """{(node name, param): the Keras variable holding it} for every parameter of the registry."""
    return {(node.name, param): variable for node in spec.parametric()
            for param, variable in zip(ops.get(node.kind).param_names, model.get_layer(node.name).weights)}


# --- the graph: one function per op kind -----------------------------------------------------------------
# op_<kind>(graph, node, xs) -> the node's output: its Keras layer (named after the node, weights loaded)
# called on xs, the symbolic tensors of node.inputs; `build` walks the nodes with them.

class Graph(NamedTuple):
    """What every op_<kind> gets besides its node and inputs."""
    keras: object
    spec: ir.ModelSpec
    harness_rows: int  # > 0: dropout nodes apply the harness's masks held for this many rows (see build)


def _loaded(graph: Graph, layer, node, x):
    """Call `layer` on x (which builds it), then load the node's parameters into it in Keras's layout."""
    y = layer(x)
    layer.set_weights([to_native(graph.spec, node, p, v) for p, v in graph.spec.params(node).items()])
    return y


def _pairs(pads):
    top, left, bottom, right = pads
    return ((top, bottom), (left, right))


def _padding_mode(graph: Graph, node) -> str:
    """ir.padding_mode of the window the node covers (a dilated kernel's extent, as TensorFlow's SAME takes it)."""
    a = node.attrs
    return ir.padding_mode(graph.spec.shape_of(node.inputs[0])[1:], ops.effective_kernel(a), a["strides"], a["pads"])


@functools.cache
def _subsampled_class(base):
    """`base` (Conv2D or DepthwiseConv2D) at stride 1, then every stride-th output row and column: Keras refuses
    strides > 1 with dilation_rate > 1 (and TensorFlow's depthwise conv computes that combination wrong, silently),
    while a stride-1 conv over the same padded input has the strided conv's outputs at rows and columns 0, s, 2s..."""

    class Subsampled(base):
        def __init__(self, *args, subsample=(1, 1), **kwargs):
            super().__init__(*args, **kwargs)
            self.subsample = tuple(subsample)

        def call(self, inputs):
            sh, sw = self.subsample
            return super().call(inputs)[:, ::sh, ::sw, :]

        def compute_output_shape(self, input_shape):
            n, h, w, c = super().compute_output_shape(input_shape)
            sh, sw = self.subsample
            return n, None if h is None else -(-h // sh), None if w is None else -(-w // sw), c

        def get_config(self):
            return {**super().get_config(), "subsample": self.subsample}

    Subsampled.__name__ = f"Subsampled{base.__name__}"
    return Subsampled


def op_conv(graph: Graph, node, xs):
    L, a, x = graph.keras.layers, node.attrs, xs[0]
    dilations, strides = ops.dilations(a), tuple(a["strides"])
    subsample = dilations != (1, 1) and strides != (1, 1)
    mode = _padding_mode(graph, node)
    if mode == "explicit" or (subsample and mode == "same"):  # SAME at stride 1 would pad differently
        x = L.ZeroPadding2D(_pairs(a["pads"]))(x)
    window = {"strides": (1, 1) if subsample else strides, "padding": "same" if mode == "same" and not subsample
              else "valid", "dilation_rate": dilations, "name": node.name}
    if depthwise(graph.spec, node):
        cls, shape = L.DepthwiseConv2D, {"depth_multiplier": a["filters"] // a["group"]}
    else:
        cls, shape = L.Conv2D, {"filters": a["filters"], "groups": a.get("group", 1)}
    if subsample:
        cls, window["subsample"] = _subsampled_class(cls), strides
    return _loaded(graph, cls(kernel_size=a["kernel"], **shape, **window), node, x)


def _nonnegative_input(spec, node) -> bool:
    return layouts.nonnegative_input(spec, spec.index_of(node.name))


def _pool(graph: Graph, node, x, pool):
    L, a = graph.keras.layers, node.attrs
    mode = _padding_mode(graph, node)
    padding = "valid"
    counts_pad = node.kind == "avgpool" and a["count_include_pad"]
    if mode != "valid" and counts_pad:
        x = L.ZeroPadding2D(_pairs(a["pads"]))(x)
    elif mode == "same":
        padding = "same"  # TF SAME: max ignores the pad, average excludes it
    elif mode == "explicit" and node.kind == "maxpool":
        x = _maxpool_padding(graph, node, x)
    elif mode == "explicit":
        return _avgpool_excluding_pads(graph, node, x)
    return pool(a["kernel"], strides=a["strides"], padding=padding, name=node.name)(x)


def _constant_padding(graph: Graph, pads, value: float, name=None):
    """A layer padding H and W with `value` (keras.ops.pad; Keras's padding layers pad with zeros only)."""
    kops, width = graph.keras.ops, [[0, 0], *_pairs(pads), [0, 0]]
    return graph.keras.layers.Lambda(lambda t: kops.pad(t, width, constant_values=value), name=name)


def _maxpool_padding(graph: Graph, node, x):
    """ONNX max pooling pads with -inf (a padded cell never wins): ZeroPadding2D where the input is >= 0 (the same
    maxima), else padding with -inf."""
    pads = node.attrs["pads"]
    if _nonnegative_input(graph.spec, node):
        return graph.keras.layers.ZeroPadding2D(_pairs(pads))(x)
    return _constant_padding(graph, pads, -np.inf)(x)


def _avgpool_excluding_pads(graph: Graph, node, x):
    """AveragePooling2D excludes padding only from TensorFlow's SAME pads: other pads are zero padding, the average
    over kh * kw cells, times kh * kw / (the input cells in that window), a constant of the output position."""
    L, a, kops = graph.keras.layers, node.attrs, graph.keras.ops
    (kh, kw), (sh, sw) = a["kernel"], a["strides"]
    _, h, w = graph.spec.shape_of(node.inputs[0])
    real = np.pad(np.ones((h, w)), _pairs(a["pads"]))
    _, oh, ow = node.output_shape
    counts = np.array([[real[i * sh:i * sh + kh, j * sw:j * sw + kw].sum() for j in range(ow)] for i in range(oh)])
    factor = (kh * kw / counts)[:, :, None].astype(np.float32)
    pooled = L.AveragePooling2D(a["kernel"], strides=a["strides"])(L.ZeroPadding2D(_pairs(a["pads"]))(x))
    return L.Lambda(lambda t: kops.multiply(t, factor), name=node.name)(pooled)


def op_maxpool(graph: Graph, node, xs):
    if ops.effective_kernel(node.attrs) != tuple(node.attrs["kernel"]):
        return _dilated_maxpool(graph, node, xs[0])
    return _pool(graph, node, xs[0], graph.keras.layers.MaxPooling2D)


def _dilated_maxpool(graph: Graph, node, x):
    """MaxPooling2D has no dilation. A window's maximum is the maximum over its rows of each row's maximum, so the
    pool runs along H, then along W: per axis, the maximum (Maximum) of its k taps, each tap the input cropped
    (Cropping2D) to where that tap reads and subsampled by the stride (MaxPooling2D of size 1); kh + kw taps, not
    kh * kw."""
    a = node.attrs
    if _padding_mode(graph, node) != "valid":
        x = _maxpool_padding(graph, node, x)
    _, h, w = graph.spec.shape_of(node.inputs[0])
    top, left, bottom, right = a["pads"]
    _, oh, ow = node.output_shape
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["strides"], ops.dilations(a)
    x = _dilated_max_along(graph, x, 0, h + top + bottom, kh, sh, dh, oh)
    return _dilated_max_along(graph, x, 1, w + left + right, kw, sw, dw, ow, name=node.name)


def _dilated_max_along(graph: Graph, x, axis: int, size: int, k: int, s: int, d: int, out: int, name=None):
    """Axis 0 (H) or 1 (W) of x (`size` long) -> out positions, position o the maximum of x at o*s + t*d, t < k."""
    L = graph.keras.layers
    taps = []
    for t in range(k):
        crop = (t * d, size - t * d - s * (out - 1) - 1)
        tap = L.Cropping2D((crop, (0, 0)) if axis == 0 else ((0, 0), crop))(x)
        strides = (s, 1) if axis == 0 else (1, s)
        taps.append(L.MaxPooling2D(1, strides=strides)(tap) if s != 1 else tap)
    if len(taps) == 1:
        return L.Identity(name=name)(taps[0]) if name else taps[0]
    return L.Maximum(name=name)(taps)


def op_avgpool(graph: Graph, node, xs):
    return _pool(graph, node, xs[0], graph.keras.layers.AveragePooling2D)


def op_relu(graph: Graph, node, xs):
    return graph.keras.layers.ReLU(name=node.name)(xs[0])


def op_tanh(graph: Graph, node, xs):
    return graph.keras.layers.Activation("tanh", name=node.name)(xs[0])


def op_sigmoid(graph: Graph, node, xs):
    return graph.keras.layers.Activation("sigmoid", name=node.name)(xs[0])


def op_leakyrelu(graph: Graph, node, xs):
    return graph.keras.layers.LeakyReLU(negative_slope=node.attrs["alpha"], name=node.name)(xs[0])


def op_elu(graph: Graph, node, xs):
    return graph.keras.layers.ELU(alpha=node.attrs["alpha"], name=node.name)(xs[0])


def _is(value: float, constant: float) -> bool:
    """An ONNX float attribute (float32) is this constant of a Keras activation, as float32."""
    return np.float32(value) == np.float32(constant)


# the constants Keras's selu is fixed to (TensorFlow's tf.nn.selu)
SELU_ALPHA, SELU_GAMMA = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def op_selu(graph: Graph, node, xs):
    L, a = graph.keras.layers, node.attrs
    if _is(a["alpha"], SELU_ALPHA) and _is(a["gamma"], SELU_GAMMA):
        return L.Activation("selu", name=node.name)(xs[0])
    # Keras's selu has fixed constants: other ones are gamma * elu(x, alpha), two Keras layers
    return L.Rescaling(a["gamma"], name=node.name)(L.ELU(alpha=a["alpha"])(xs[0]))


def op_softplus(graph: Graph, node, xs):
    return graph.keras.layers.Activation("softplus", name=node.name)(xs[0])


def op_hardsigmoid(graph: Graph, node, xs):
    L, a = graph.keras.layers, node.attrs
    if _is(a["alpha"], 1 / 6) and _is(a["beta"], 0.5):
        return L.Activation("hard_sigmoid", name=node.name)(xs[0])  # Keras 3's: relu6(x + 3) / 6
    # another slope or offset: clip(alpha * x + beta, 0, 1) as Rescaling then a ReLU capped at 1
    return L.ReLU(max_value=1.0, name=node.name)(L.Rescaling(a["alpha"], offset=a["beta"])(xs[0]))


def op_hardswish(graph: Graph, node, xs):
    return graph.keras.layers.Activation("hard_swish", name=node.name)(xs[0])


def op_clip(graph: Graph, node, xs):
    L, low, high = graph.keras.layers, node.attrs["min"], node.attrs["max"]
    if low == 0.0:
        return L.ReLU(max_value=high, name=node.name)(xs[0])  # ReLU6 and its kin
    # no Keras layer clips below at another value than 0: keras.ops.clip in a Lambda layer
    clip = graph.keras.ops.clip
    return L.Lambda(lambda t: clip(t, low, high), name=node.name)(xs[0])


def _native_axis(graph: Graph, node) -> int:
    """The node's canonical axis (attr axis, default 1) on the Keras tensor: NCHW's 1, 2, 3 are NHWC's 3, 1, 2; an
    [N, F] tensor keeps axis 1 (a softmax over all features does not depend on their order)."""
    axis = node.attrs.get("axis", 1)
    return {1: 3, 2: 1, 3: 2}[axis] if len(graph.spec.shape_of(node.inputs[0])) == 3 else axis


def op_logsoftmax(graph: Graph, node, xs):
    keras = graph.keras
    log_softmax = functools.partial(keras.activations.log_softmax, axis=_native_axis(graph, node))
    return keras.layers.Activation(log_softmax, name=node.name)(xs[0])


def op_batchnorm(graph: Graph, node, xs):
    """BatchNormalization with the node's epsilon (Keras's default is 1e-3, ONNX's 1e-5); Keras's momentum weighs
    the old running value, as ONNX's does. Inference (training=False) normalises with the moving statistics."""
    a = node.attrs
    interface.running_variance(node, "biased")
    bn = graph.keras.layers.BatchNormalization(axis=-1, epsilon=a["epsilon"], momentum=a["momentum"], name=node.name)
    return _loaded(graph, bn, node, xs[0])


def op_globalavgpool(graph: Graph, node, xs):
    keepdims = node.attrs.get("keepdims", True)
    return graph.keras.layers.GlobalAveragePooling2D(keepdims=keepdims, name=node.name)(xs[0])



def _lrn(kops, x, size: int, alpha: float, beta: float, bias: float):
    """ONNX's LRN in keras.ops on NHWC: x / (bias + alpha / size * window sum of x^2)^beta, the window of channel c
    from c - (size - 1) // 2 to c + size // 2 (zero-padded squares, summed as `size` shifted slices)."""
    below = (size - 1) // 2
    channels = x.shape[-1]
    squares = kops.pad(x * x, [[0, 0], [0, 0], [0, 0], [below, size - 1 - below]])
    window = squares[..., :channels]
    for k in range(1, size):
        window = window + squares[..., k:k + channels]
    return x * kops.power(bias + (alpha / size) * window, -beta)


def op_lrn(graph: Graph, node, xs):
    """Keras 3 has no LRN layer, and tf.nn.local_response_normalization would tie the model to the TensorFlow
    backend (this builder also serves JAX and PyTorch) and can express odd sizes only: a Lambda of keras.ops."""
    a, kops = node.attrs, graph.keras.ops
    return graph.keras.layers.Lambda(lambda t: _lrn(kops, t, a["size"], a["alpha"], a["beta"], a["bias"]),
                                     name=node.name)(xs[0])


@functools.cache
def _constant_class(keras):
    """A layer holding a constant operand as its weight `value` (NHWC-broadcasting, see constant_value) and
    multiplying its input by it (`adds`: adding it); Keras has no layer for an elementwise op with a weight."""

    class ConstantOperand(keras.layers.Layer):
        def __init__(self, value_shape, adds: bool, **kwargs):
            super().__init__(**kwargs)
            self.value_shape, self.adds = tuple(value_shape), adds

        def build(self, input_shape):
            self.value = self.add_weight(shape=self.value_shape, initializer="zeros" if self.adds else "ones",
                                         name="value")

        def call(self, inputs):
            return inputs + self.value if self.adds else inputs * self.value

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "value_shape": self.value_shape, "adds": self.adds}

    return ConstantOperand


def _constant(graph: Graph, node, xs, adds: bool):
    shape = to_native(graph.spec, node, "value", graph.spec.params(node)["value"]).shape
    return _loaded(graph, _constant_class(graph.keras)(shape, adds, name=node.name), node, xs[0])


def op_scale(graph: Graph, node, xs):
    return _constant(graph, node, xs, adds=False)


def op_shift(graph: Graph, node, xs):
    return _constant(graph, node, xs, adds=True)


def op_channelshuffle(graph: Graph, node, xs):
    """ShuffleNet's shuffle in NHWC: channels viewed as (groups, C / groups), the two axes swapped, flattened."""
    L, groups = graph.keras.layers, node.attrs["groups"]
    c, h, w = node.output_shape
    x = L.Reshape((h, w, groups, c // groups))(xs[0])
    x = L.Permute((1, 2, 4, 3))(x)
    return L.Reshape((h, w, c), name=node.name)(x)

def op_pad(graph: Graph, node, xs):
    """ZeroPadding2D for zeros; keras.ops.pad for another constant and for reflect (ONNX's reflect is TensorFlow's
    REFLECT: no border repeat); edge, which TensorFlow's pad lacks, as keras.ops.take of row and column indices
    clipped into the input (each padded cell a copy of the nearest border cell)."""
    L, kops, a = graph.keras.layers, graph.keras.ops, node.attrs
    mode, pads, value = a["mode"], a["pads"], a.get("value", 0.0)
    if mode == "constant" and value == 0.0:
        return L.ZeroPadding2D(_pairs(pads), name=node.name)(xs[0])
    if mode == "constant":
        return _constant_padding(graph, pads, value, name=node.name)(xs[0])
    if mode == "reflect":
        width = [[0, 0], *_pairs(pads), [0, 0]]
        return L.Lambda(lambda t: kops.pad(t, width, mode="reflect"), name=node.name)(xs[0])
    if mode == "edge":
        (top, bottom), (left, right) = _pairs(pads)
        _, h, w = graph.spec.shape_of(node.inputs[0])
        rows, cols = np.clip(np.arange(-top, h + bottom), 0, h - 1), np.clip(np.arange(-left, w + right), 0, w - 1)
        return L.Lambda(lambda t: kops.take(kops.take(t, rows, axis=1), cols, axis=2), name=node.name)(xs[0])
    raise Unsupported(f"{node.name}: pad mode {mode!r}")


@functools.cache
def _transposed_class(keras):
    """Conv2DTranspose (padding "valid": the full output) followed by cropping `crop` (top, left, bottom, right),
    ONNX's pads, which may be asymmetric. upsample (sh, sw) > 1: Keras refuses strides > 1 with dilation_rate > 1,
    so the layer runs at stride 1 on the input with sh - 1 zero rows (sw - 1 columns) inserted between its rows
    (columns) and `output_padding` zero rows and columns appended: the same sums a strided transposed conv forms."""
    kops = keras.ops

    class CroppedConv2DTranspose(keras.layers.Conv2DTranspose):
        def __init__(self, *args, crop=(0, 0, 0, 0), upsample=(1, 1), extra=(0, 0), **kwargs):
            super().__init__(*args, **kwargs)
            self.crop, self.upsample, self.extra = tuple(crop), tuple(upsample), tuple(extra)

        def _spread(self, x):
            for axis, (s, extra) in enumerate(zip(self.upsample, self.extra), start=1):
                if s > 1:  # (..., n, ...) -> (..., n, s, ...) with zeros at 1..s-1 -> (..., n*s, ...), then cut
                    size, rest = x.shape[axis], x.shape[axis + 1:]
                    x = kops.stack([x] + [kops.zeros_like(x)] * (s - 1), axis=axis + 1)
                    x = kops.reshape(x, (-1, *x.shape[1:axis], size * s, *rest))
                    x = x[(slice(None),) * axis + (slice(0, (size - 1) * s + 1 + extra),)]
            return x

        def call(self, inputs):
            top, left, bottom, right = self.crop
            y = super().call(self._spread(inputs))
            return y[:, top:y.shape[1] - bottom, left:y.shape[2] - right, :]

        def _spread_shape(self, input_shape):
            n, h, w, c = input_shape
            (sh, sw), (eh, ew) = self.upsample, self.extra
            return n, (h - 1) * sh + 1 + eh, (w - 1) * sw + 1 + ew, c

        def compute_output_shape(self, input_shape):
            n, h, w, c = super().compute_output_shape(self._spread_shape(input_shape))
            top, left, bottom, right = self.crop
            return n, h - top - bottom, w - left - right, c

        def get_config(self):
            return {**super().get_config(), "crop": self.crop, "upsample": self.upsample, "extra": self.extra}

    return CroppedConv2DTranspose


def op_convtranspose(graph: Graph, node, xs):
    a = node.attrs
    strides, dilations, output_padding = tuple(a["strides"]), ops.dilations(a), tuple(a.get("output_padding", (0, 0)))
    window = {"strides": strides, "output_padding": output_padding, "upsample": (1, 1), "extra": (0, 0)}
    if strides != (1, 1) and dilations != (1, 1):
        window = {"strides": (1, 1), "output_padding": (0, 0), "upsample": strides, "extra": output_padding}
    layer = _transposed_class(graph.keras)(a["filters"], a["kernel"], padding="valid", dilation_rate=dilations,
                                           crop=a["pads"], name=node.name, **window)
    return _loaded(graph, layer, node, xs[0])


def op_prelu(graph: Graph, node, xs):
    """PReLU with its slope shared along the axes where the slope (in Keras's layout) has size 1."""
    shape = to_native(graph.spec, node, "slope", graph.spec.params(node)["slope"]).shape
    shared = [axis for axis, n in enumerate(shape, start=1) if n == 1] or None
    return _loaded(graph, graph.keras.layers.PReLU(shared_axes=shared, name=node.name), node, xs[0])


def op_instancenorm(graph: Graph, node, xs):
    """GroupNormalization with one group per channel: each image's channel normalised by its mean and biased
    variance over H and W, then gamma and beta per channel."""
    channels = node.output_shape[0]
    norm = graph.keras.layers.GroupNormalization(groups=channels, axis=-1, epsilon=node.attrs["epsilon"],
                                                 name=node.name)
    return _loaded(graph, norm, node, xs[0])


def op_depthtospace(graph: Graph, node, xs):
    """In NHWC: channels viewed as (b, b, C') (DCR: channel (i*b + j)*C' + c) or (C', b, b) (CRD: c*b*b + i*b + j),
    the block axes moved beside H and W (Permute), then merged into them."""
    L, b = graph.keras.layers, node.attrs["blocksize"]
    c, h, w = node.output_shape
    h, w = h // b, w // b
    if node.attrs["mode"] == "DCR":
        x, order = L.Reshape((h, w, b, b, c))(xs[0]), (1, 3, 2, 4, 5)
    else:
        x, order = L.Reshape((h, w, c, b, b))(xs[0]), (1, 4, 2, 5, 3)
    return L.Reshape((h * b, w * b, c), name=node.name)(L.Permute(order)(x))


def _flatten_orders(graph: Graph, node) -> set:
    """The flatten sources (layouts.flatten_sources) of the node's inputs."""
    return {layouts.flatten_source_of(graph.spec, t) for t in node.inputs}


def op_add(graph: Graph, node, xs):
    if len(_flatten_orders(graph, node)) > 1:
        raise Unsupported(f"{node.name}: adds flat vectors in different element orders (Keras flattens in "
                          f"(H, W, C) order, not in ONNX's (C, H, W))")
    return graph.keras.layers.Add(name=node.name)(xs)


def op_mul(graph: Graph, node, xs):
    """Multiply; a second input of one value per channel, (1, 1, C) in NHWC, broadcasts over H and W."""
    if len(_flatten_orders(graph, node)) > 1:
        raise Unsupported(f"{node.name}: multiplies flat vectors in different element orders (Keras flattens in "
                          f"(H, W, C) order, not in ONNX's (C, H, W))")
    return graph.keras.layers.Multiply(name=node.name)(xs)


def op_concat(graph: Graph, node, xs):
    if _flatten_orders(graph, node) != {None}:
        raise Unsupported(f"{node.name}: concatenates flattened tensors: Keras flattens in (H, W, C) order and the next dense "
                          f"layer's rows are reordered for one flatten, not input by input")
    return graph.keras.layers.Concatenate(axis=-1, name=node.name)(xs)


def op_dropout(graph: Graph, node, xs):
    if graph.harness_rows and node.attrs["rate"] > 0:
        return _harness_dropout_class(graph.keras)(graph.harness_rows, name=node.name)(xs[0])
    return graph.keras.layers.Dropout(node.attrs["rate"], name=node.name)(xs[0])


def op_flatten(graph: Graph, node, xs):
    """Flatten gives (H, W, C) order: canonical for order "HWC", reordered for "CHW" where layouts.flatten_sources
    says so."""
    return graph.keras.layers.Flatten(name=node.name)(xs[0])


def op_unsqueeze(graph: Graph, node, xs):
    if layouts.flatten_source_of(graph.spec, node.inputs[0]) is not None:
        raise Unsupported(f"{node.name}: makes a 1x1 map of a flat vector in Keras's (H, W, C) flatten order, not "
                          f"the canonical (C, H, W) order its channels must have")
    return graph.keras.layers.Reshape((1, 1, node.output_shape[0]), name=node.name)(xs[0])


def op_dense(graph: Graph, node, xs):
    return _loaded(graph, graph.keras.layers.Dense(node.attrs["units"], name=node.name), node, xs[0])


def op_softmax(graph: Graph, node, xs):
    return graph.keras.layers.Softmax(axis=_native_axis(graph, node), name=node.name)(xs[0])


def _harness_dropout_class(keras):
    """A dropout layer whose mask the harness sets: in training it multiplies its input by the first n rows of
    a non-trainable variable `step_mask` (rows: the batch size; `set_dropout_masks` assigns each step's mask,
    padded, before the step); outside training it is the identity, like Dropout."""
    ops_ = keras.ops

    class HarnessDropout(keras.layers.Layer):
        def __init__(self, rows: int, **kwargs):
            super().__init__(**kwargs)
            self.rows = rows

        def build(self, input_shape):
            self.step_mask = self.add_weight(shape=(self.rows, *input_shape[1:]), initializer="zeros",
                                             trainable=False, name="mask")

        def call(self, inputs, training=None):
            if not training:
                return inputs
            return inputs * self.step_mask[:ops_.shape(inputs)[0]]

        def compute_output_shape(self, input_shape):
            return input_shape

    return HarnessDropout


def set_dropout_masks(model, spec, step_masks: dict) -> None:
    """Hand the harness dropout layers of a dropout_masks="harness" model the masks of the next training step:
    {dropout node name: (n, ...) mask in the canonical layout}, n at most the batch size it was built for."""
    sources = dict(zip((node.name for node in spec.layers), layouts.flatten_sources(spec)))
    for name, mask in step_masks.items():
        holder = model.get_layer(name)
        rows = holder.step_mask.shape[0]
        native = layouts.from_canonical(mask, sources[name])
        holder.step_mask.assign(np.concatenate([native, np.zeros((rows - len(native), *native.shape[1:]),
                                                                 native.dtype)]))


def build(spec, backend: str = "tensorflow", dropout_masks: str = "library", batch_size: int = 0):
    """keras.Model(input, output) of the graph, weights loaded. dropout_masks="harness" (the identical-dropout
    training variant) builds every dropout node as a layer that applies the mask the trainer assigns to its
    `step_mask` variable (batch_size rows) instead of drawing one; identical to Dropout at inference."""
    if dropout_masks not in ("library", "harness") or (dropout_masks == "harness" and batch_size < 1):
        raise ValueError(f"dropout_masks={dropout_masks!r}, batch_size={batch_size!r}: want 'library', or "
                         f"'harness' with the batch size")
    keras = library(backend)
    graph = Graph(keras, spec, batch_size if dropout_masks == "harness" else 0)
    module = sys.modules[__name__]
    x = keras.Input(shape=layouts.native_shape(spec.input_shape))
    values = interface.walk(spec, lambda node, xs: interface.op_function(module, node, NAME)(graph, node, xs), x)
    return keras.Model(x, values[spec.output().name])


def layer_outputs(model, spec, x, backend: str = "tensorflow", **_options):
    keras = library(backend)
    probe = keras.Model(model.inputs, [model.get_layer(node.name).output for node in spec.layers])
    ys = probe(layouts.nchw_to_nhwc(x), training=False)
    if not isinstance(ys, (list, tuple)):
        ys = [ys]
    return {node.name: layouts.to_canonical(keras.ops.convert_to_numpy(y), source)
            for node, y, source in zip(spec.layers, ys, layouts.flatten_sources(spec))}


def op_reduce(graph: Graph, node, xs):
    """Keras pools over H and W only: a Lambda of keras.ops.sum or keras.ops.mean over the node's axes on NHWC,
    kept as 1, then Reshape to the node's shape."""
    L, kops, a = graph.keras.layers, graph.keras.ops, node.attrs
    reduce, axes = kops.sum if a["mode"] == "sum" else kops.mean, tuple(layouts.nhwc_axes(a["axes"]))
    y = L.Lambda(lambda t: reduce(t, axis=axes, keepdims=True), name=f"{node.name}_reduce")(xs[0])
    return L.Reshape(layouts.native_shape(node.output_shape), name=node.name)(y)


def op_tile(graph: Graph, node, xs):
    """Keras has no tiling layer: a Lambda of keras.ops.tile on NHWC."""
    kops, multiples = graph.keras.ops, layouts.nhwc_repeats(node.attrs["repeats"])
    return graph.keras.layers.Lambda(lambda t: kops.tile(t, multiples), name=node.name)(xs[0])
