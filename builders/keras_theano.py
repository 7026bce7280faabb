"""Keras 2.3.1 on Theano 1.0.5: a functional keras.models.Model of Keras layers, channels_first (Theano's own NCHW).

Per op kind one `op_<kind>(spec, node, inputs, **options) -> Keras tensor` (the layers it adds are named after the
node); `build` applies them through `interface.walk`. Options, the variants a trainer trains:
pool_gradient="single" gives max pooling whose gradient goes to one maximum per window (as TensorFlow and PyTorch;
Theano's own, "theano", goes to every tied maximum); dropout_masks="harness" with batch_size puts a
`HarnessDropout` in place of Dropout, multiplying by a mask variable the trainer sets each step."""
from __future__ import annotations

import collections
import collections.abc
import contextlib
import functools
import io
import logging
import os
import sys

import numpy as np

from builders import Unsupported, cache_dir, interface, layouts
from spec import ir, ops

NAME = "keras-theano"

_NOISE = ("Using Theano backend.",)


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> Keras (kh, kw, I, O), flipped in both spatial axes: Keras 2 on Theano performs
    true convolution (filter_flip), ONNX cross-correlation."""
    return np.ascontiguousarray(layouts.oihw_to_hwio(w)[::-1, ::-1, :, :])


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """(in, out) with rows in (C, H, W) order -> rows in the (H, W, C) order Keras Flatten produces
    (Keras 2 permutes channels_first input to channels_last before flattening)."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def to_native(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Kernels as conv_kernel and dense_kernel say; every other parameter (biases) as it is."""
    if (node.kind, param) == ("conv", "weight"):
        return conv_kernel(value)
    if (node.kind, param) == ("dense", "weight"):
        return dense_kernel(value, layouts.dense_input_order(spec, spec.index_of(node.name)))
    return np.ascontiguousarray(value)


def to_canonical(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Inverse of to_native: undo the spatial flip for Theano's true convolution, then HWIO -> OIHW; dense rows
    back from (H, W, C) to (C, H, W) order."""
    if (node.kind, param) == ("conv", "weight"):
        return layouts.hwio_to_oihw(value[::-1, ::-1, :, :])
    if (node.kind, param) == ("dense", "weight"):
        return layouts.hwc_rows_to_chw(value, layouts.dense_input_order(spec, spec.index_of(node.name)))
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


def _theano_same_matches(kind, in_hw, kernel, strides, pads) -> bool:
    """Whether Keras 2's padding='same' on Theano gives exactly these pads. It is not TensorFlow's SAME:
    it pads symmetrically (conv: k//2, Theano's 'half'; pooling: k-2 for odd k > 2, else k-1) and keeps
    ceil(size/stride) outputs (pooling always, conv only for even kernels)."""
    for size, k, s, before, after in zip(in_hw, kernel, strides, pads[:2], pads[2:]):
        p = k // 2 if kind == "conv" else (k - 2 if k > 2 and k % 2 else k - 1)
        n = (size + 2 * p - k) // s + 1
        if kind != "conv" or k % 2 == 0:
            n = min(n, -(-size // s))
        if before != p or n != ir.window_output_size(size, k, s, before, after):
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
    mode = ir.padding_mode(in_hw, a["kernel"], a["strides"], a["pads"])
    pads = ir.same_pads(in_hw, a["kernel"], a["strides"]) if mode == "same" else tuple(a["pads"])
    native_same = mode != "valid" and _theano_same_matches(node.kind, in_hw, a["kernel"], a["strides"], pads)
    return pads, mode, native_same


def _zero_pad(x, pads):
    top, left, bottom, right = pads
    return library().layers.ZeroPadding2D(((top, bottom), (left, right)), data_format=CF)(x)


def op_conv(spec, node, inputs, **_options):
    (x,), a = inputs, node.attrs
    pads, mode, native_same = _window_padding(spec, node)
    if mode != "valid" and not native_same:
        x = _zero_pad(x, pads)
    conv = library().layers.Conv2D(a["filters"], a["kernel"], strides=a["strides"],
                                   padding="same" if native_same else "valid", data_format=CF, name=node.name)
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
    else:
        what = "max pooling of possibly negative input" if node.kind == "maxpool" \
            else "average pooling with count_include_pad=False"
        raise Unsupported(f"{node.name}: Keras 2 on Theano cannot express {what} with pads {pads} "
                          f"(its padding='same' pads symmetrically)")
    return pool_class(a["kernel"], strides=a["strides"], padding=padding, data_format=CF, name=node.name)(x)


def op_maxpool(spec, node, inputs, pool_gradient="theano", **_options):
    keras = library()
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
    return library().layers.Softmax(axis=-1, name=node.name)(*inputs)


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
