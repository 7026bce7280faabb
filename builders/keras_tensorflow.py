"""Keras 3 on the TensorFlow backend: a keras.Sequential of Keras layers, channels_last (NHWC).

Fast-path option (builders.FAST_PATHS): backend "jax" or "torch" builds the same Keras model on that Keras 3
backend instead; the process must not have imported keras on another backend before."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import numpy as np

from builders import Unsupported, cache_dir, layouts
from spec import ir

NAME = "keras-tensorflow"


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> Keras (kh, kw, I, O); TensorFlow convolves by cross-correlation like ONNX."""
    return layouts.oihw_to_hwio(w)


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """(in, out) with rows in (C, H, W) order -> rows in the (H, W, C) order Keras Flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


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


def import_keras(backend: str = "tensorflow"):
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


def versions(backend: str = "tensorflow") -> dict:
    import importlib

    keras = import_keras(backend)
    return {"keras": keras.__version__, "keras backend": keras.backend.backend(),
            **{p: importlib.import_module(p).__version__ for p in BACKEND_PACKAGES[keras.backend.backend()]},
            "numpy": np.__version__}


def _pairs(pads):
    top, left, bottom, right = pads
    return ((top, bottom), (left, right))


def build(spec, backend: str = "tensorflow"):
    keras = import_keras(backend)
    L = keras.layers
    model = keras.Sequential([keras.Input(shape=layouts.native_shape(spec.input_shape))])
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
            elif mode == "explicit" and layer.kind == "maxpool" and layouts.nonnegative_input(spec, i):
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
            dense.set_weights([dense_kernel(spec.weight(layer), layouts.dense_input_order(spec, i)),
                               spec.bias(layer)])
        elif layer.kind == "softmax":
            model.add(L.Softmax(axis=-1, name=layer.name))
        else:
            raise Unsupported(f"{layer.name}: layer kind {layer.kind!r} has no Keras counterpart here")
    return model


def layer_outputs(model, spec, x, backend: str = "tensorflow"):
    keras = import_keras(backend)
    probe = keras.Model(model.inputs[0], [model.get_layer(l.name).output for l in spec.layers])
    ys = probe(layouts.nchw_to_nhwc(x), training=False)
    if not isinstance(ys, (list, tuple)):
        ys = [ys]
    return {layer.name: layouts.to_canonical(keras.ops.convert_to_numpy(y), source)
            for layer, y, source in zip(spec.layers, ys, layouts.flatten_sources(spec))}
