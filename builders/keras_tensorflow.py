"""Keras 3 on the TensorFlow backend: a keras.Sequential of Keras layers, channels_last (NHWC)."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import numpy as np

from builders import Unsupported
from spec import ir

NAME = "keras-tensorflow"


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> Keras (kh, kw, I, O); TensorFlow convolves by cross-correlation like ONNX."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """(in, out) with rows in (C, H, W) order -> rows in the (H, W, C) order Keras Flatten produces."""
    if flatten_from is None:
        return w
    c, h, wd = flatten_from
    return np.ascontiguousarray(w.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(c * h * wd, -1))


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


def _keras():
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO off, warnings and errors kept
    with _stderr_without(_NOISE):
        import keras
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"keras was already imported on the {keras.backend.backend()} backend")
    return keras


def versions() -> dict:
    keras = _keras()
    import tensorflow as tf
    return {"keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__}


def _nonnegative(spec, index: int) -> bool:
    """Whether the input of layer `index` is >= 0 everywhere (so zero padding equals -inf padding for max)."""
    for layer in reversed(spec.layers[:index]):
        if layer.kind in ("relu", "softmax"):
            return True
        if layer.kind != "dropout":
            return False
    return False


def _pairs(pads):
    top, left, bottom, right = pads
    return ((top, bottom), (left, right))


def build(spec):
    keras = _keras()
    L = keras.layers
    model = keras.Sequential([keras.Input(shape=_native_shape(spec.input_shape))])
    hwc = _hwc_flattened(spec)
    for i, layer in enumerate(spec.layers):
        a, in_shape = layer.attrs, spec.input_shape_of(i)
        in_hw = in_shape[1:]
        if layer.kind == "conv":
            mode = ir.padding_mode(in_hw, a["kernel"], a["strides"], a["pads"])
            if mode == "explicit":
                model.add(L.ZeroPadding2D(_pairs(a["pads"])))
            conv = L.Conv2D(a["filters"], a["kernel"], strides=a["strides"],
                            padding="same" if mode == "same" else "valid", name=layer.name)
            model.add(conv)
            conv.set_weights([conv_kernel(spec.weight(layer)), spec.bias(layer)])
        elif layer.kind in ("maxpool", "avgpool"):
            mode = ir.padding_mode(in_hw, a["kernel"], a["strides"], a["pads"])
            pool = L.MaxPooling2D if layer.kind == "maxpool" else L.AveragePooling2D
            padding = "valid"
            if mode != "valid" and layer.kind == "avgpool" and a["count_include_pad"]:
                model.add(L.ZeroPadding2D(_pairs(a["pads"])))
            elif mode == "same":
                padding = "same"  # TF SAME: max ignores the pad, average excludes it
            elif mode == "explicit" and layer.kind == "maxpool" and _nonnegative(spec, i):
                model.add(L.ZeroPadding2D(_pairs(a["pads"])))
            elif mode == "explicit":
                what = "max pooling of possibly negative input" if layer.kind == "maxpool" \
                    else "average pooling with count_include_pad=False"
                raise Unsupported(f"{layer.name}: Keras cannot express {what} with explicit pads {a['pads']}")
            model.add(pool(a["kernel"], strides=a["strides"], padding=padding, name=layer.name))
        elif layer.kind == "relu":
            model.add(L.ReLU(name=layer.name))
        elif layer.kind == "dropout":
            model.add(L.Dropout(a["rate"], name=layer.name))
        elif layer.kind == "flatten":
            model.add(L.Flatten(name=layer.name))
        elif layer.kind == "dense":
            dense = L.Dense(a["units"], name=layer.name)
            model.add(dense)
            flatten_from = hwc[i - 1] if i else None
            dense.set_weights([dense_kernel(spec.weight(layer), flatten_from), spec.bias(layer)])
        elif layer.kind == "softmax":
            model.add(L.Softmax(axis=-1, name=layer.name))
        else:
            raise Unsupported(f"{layer.name}: layer kind {layer.kind!r} has no Keras counterpart here")
    return model


def _native_shape(shape):
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)


def _hwc_flattened(spec) -> list:
    """Per layer: the (C, H, W) shape its flat output was flattened from while it is still in Keras's
    (H, W, C) order (from a flatten up to the first dense), else None."""
    result, source = [], None
    for i, layer in enumerate(spec.layers):
        if layer.kind == "flatten":
            in_shape = spec.input_shape_of(i)
            source = tuple(in_shape) if len(in_shape) == 3 else None
        elif layer.kind == "dense":
            source = None
        result.append(source)
    return result


def layer_outputs(model, spec, x):
    keras = _keras()
    probe = keras.Model(model.inputs[0], [model.get_layer(l.name).output for l in spec.layers])
    xin = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    ys = probe(xin, training=False)
    if not isinstance(ys, (list, tuple)):
        ys = [ys]
    out = {}
    for layer, y, flatten_from in zip(spec.layers, ys, _hwc_flattened(spec)):
        y = keras.ops.convert_to_numpy(y)
        if y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        elif flatten_from is not None:
            c, h, w = flatten_from
            y = y.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(len(y), -1)
        out[layer.name] = np.ascontiguousarray(y)
    return out
