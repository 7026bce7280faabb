"""Keras 2.3.1 on Theano 1.0.5: a keras.models.Sequential of Keras layers, channels_first (Theano's own NCHW)."""
from __future__ import annotations

import collections
import collections.abc
import contextlib
import io
import logging
import os
import sys

import numpy as np

from builders import Unsupported, cache_dir, layouts
from spec import ir

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


def import_keras():
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


def versions() -> dict:
    keras = import_keras()
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


def build(spec, pool_gradient="theano"):
    """pool_gradient: "theano" keeps Keras's MaxPooling2D (gradient to every tied maximum of a window);
    "single" uses SingleMaxPooling2D (gradient to the first maximum only). Forward outputs are the same."""
    keras = import_keras()
    L = keras.layers
    if pool_gradient not in ("theano", "single"):
        raise ValueError(f"unknown pool_gradient {pool_gradient!r}")
    max_pool = _single_max_pooling_2d(keras) if pool_gradient == "single" else L.MaxPooling2D
    cf = "channels_first"
    model = keras.models.Sequential([L.InputLayer(input_shape=tuple(spec.input_shape))])

    def zero_pad(pads):
        top, left, bottom, right = pads
        model.add(L.ZeroPadding2D(((top, bottom), (left, right)), data_format=cf))

    for i, layer in enumerate(spec.layers):
        a, in_shape = layer.attrs, spec.input_shape_of(i)
        if layer.kind in ("conv", "maxpool", "avgpool"):
            in_hw = in_shape[1:]
            mode = ir.padding_mode(in_hw, a["kernel"], a["strides"], a["pads"])
            pads = ir.same_pads(in_hw, a["kernel"], a["strides"]) if mode == "same" else tuple(a["pads"])
            native_same = mode != "valid" and _theano_same_matches(layer.kind, in_hw, a["kernel"],
                                                                   a["strides"], pads)
        if layer.kind == "conv":
            if mode != "valid" and not native_same:
                zero_pad(pads)
            conv = L.Conv2D(a["filters"], a["kernel"], strides=a["strides"],
                            padding="same" if native_same else "valid", data_format=cf, name=layer.name)
            model.add(conv)
            conv.set_weights([conv_kernel(spec.weight(layer)), spec.bias(layer)])
        elif layer.kind in ("maxpool", "avgpool"):
            padding = "valid"
            if mode == "valid":
                pass
            elif layer.kind == "avgpool" and a["count_include_pad"]:
                zero_pad(pads)
            elif native_same:
                padding = "same"  # Theano's pooling pad: max ignores it, average excludes it
            elif layer.kind == "maxpool" and layouts.nonnegative_input(spec, i):
                zero_pad(pads)
            else:
                what = "max pooling of possibly negative input" if layer.kind == "maxpool" \
                    else "average pooling with count_include_pad=False"
                raise Unsupported(f"{layer.name}: Keras 2 on Theano cannot express {what} with pads {pads} "
                                  f"(its padding='same' pads symmetrically)")
            pool = max_pool if layer.kind == "maxpool" else L.AveragePooling2D
            model.add(pool(a["kernel"], strides=a["strides"], padding=padding, data_format=cf, name=layer.name))
        elif layer.kind == "relu":
            model.add(L.ReLU(name=layer.name))
        elif layer.kind == "dropout":
            model.add(L.Dropout(a["rate"], name=layer.name))
        elif layer.kind == "flatten":
            if len(in_shape) == 3:
                model.add(L.Flatten(data_format=cf, name=layer.name))
            else:  # Keras 2 Flatten needs a spatial input; flattening a vector is the identity
                model.add(L.Reshape(tuple(layer.output_shape), name=layer.name))
        elif layer.kind == "dense":
            dense = L.Dense(a["units"], name=layer.name)
            model.add(dense)
            dense.set_weights([dense_kernel(spec.weight(layer), layouts.dense_input_order(spec, i)),
                               spec.bias(layer)])
        elif layer.kind == "softmax":
            model.add(L.Softmax(axis=-1, name=layer.name))
        else:
            raise Unsupported(f"{layer.name}: layer kind {layer.kind!r} has no Keras counterpart here")
    return model


def layer_outputs(model, spec, x):
    keras = import_keras()
    probe = keras.models.Model(model.input, [model.get_layer(l.name).output for l in spec.layers])
    ys = probe.predict(x, batch_size=len(x))  # predict runs in the test phase: dropout inactive
    if len(spec.layers) == 1:
        ys = [ys]
    # channels_first: only the flattened vectors are in (H, W, C) order
    return {layer.name: layouts.to_canonical(y, source) if y.ndim == 2 else y
            for layer, y, source in zip(spec.layers, ys, layouts.flatten_sources(spec))}
