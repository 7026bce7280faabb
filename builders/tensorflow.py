"""Raw TensorFlow 2: a tf.Module holding tf.Variables, forward pass in tf.nn ops, NHWC.

NHWC because TensorFlow on CPU implements Conv2D and MaxPool gradients only for NHWC.
Fast-path option (builders.FAST_PATHS): jit_compile has XLA compile the forward (and a trainer's steps: see
`function`).
"""
from __future__ import annotations

import os

import numpy as np

from builders import Unsupported, cache_dir, layouts
from spec import ir

NAME = "tensorflow"


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """Canonical (out, in, kh, kw) -> tf.nn.conv2d's (kh, kw, in, out); both cross-correlate."""
    return layouts.oihw_to_hwio(w)


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """Canonical (in, out), rows in (C, H, W) order -> rows in the (H, W, C) order an NHWC flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def versions(**_options) -> dict:
    tf = import_tf()
    return {"tensorflow": tf.__version__, "numpy": np.__version__}


def import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's info banner off the worker's stderr
    # XLA-compiled functions (the tensorflow+xla fast path) are kept in the project's cache for later runs
    cache = f"--tf_xla_persistent_cache_directory={cache_dir('xla')}"
    if cache not in os.environ.get("TF_XLA_FLAGS", ""):
        os.environ["TF_XLA_FLAGS"] = f"{os.environ.get('TF_XLA_FLAGS', '')} {cache}".strip()
    import tensorflow as tf
    return tf


def _nhwc_pads(top, left, bottom, right):
    return [[0, 0], [top, bottom], [left, right], [0, 0]]


def _plan(layer, in_shape):
    """How one spec layer runs: (kind, settings) for _CNN.__call__."""
    a, kind = layer.attrs, layer.kind
    if kind == "dropout":
        return kind, {"rate": float(a["rate"])}  # used only by training=True
    if kind not in ("conv", "maxpool", "avgpool"):
        return kind, {}
    kernel, strides = list(a["kernel"]), list(a["strides"])
    mode = ir.padding_mode(tuple(in_shape[1:]), a["kernel"], a["strides"], a["pads"])
    padding, pad, fill = mode.upper(), None, 0.0
    if mode == "explicit":
        padding, pad = "VALID", _nhwc_pads(*a["pads"])
        if kind == "maxpool":
            fill = float("-inf")  # TF's own SAME max pool ignores padding; an explicit pad must never win
        elif kind == "avgpool" and not a["count_include_pad"]:
            raise Unsupported(f"{layer.name}: tf.nn.avg_pool2d excludes padding from the average only for "
                              f"padding='SAME', not explicit pads {tuple(a['pads'])}")
    elif mode == "same" and kind == "avgpool" and a["count_include_pad"]:
        # TF's SAME average pool divides by the in-bounds count; counting the zeros needs them padded in
        padding, pad = "VALID", _nhwc_pads(*ir.same_pads(tuple(in_shape[1:]), a["kernel"], a["strides"]))
    return kind, {"kernel": kernel, "strides": strides, "padding": padding, "pad": pad, "fill": fill}


def _cnn_class():
    """The tf.Module subclass, defined on first use so that importing this file stays TensorFlow-free."""
    tf = import_tf()

    class CNN(tf.Module):
        def __init__(self, spec):
            super().__init__(name="cnn")
            self.plan = []  # (layer name, kind, settings)
            self.kernels, self.biases = {}, {}
            for i, layer in enumerate(spec.layers):
                kind, settings = _plan(layer, spec.input_shape_of(i))
                if kind == "conv":
                    self.kernels[layer.name] = tf.Variable(conv_kernel(spec.weight(layer)), name=layouts.safe_name(layer.name) + "_kernel")
                elif kind == "dense":
                    kernel = dense_kernel(spec.weight(layer), layouts.dense_input_order(spec, i))
                    self.kernels[layer.name] = tf.Variable(kernel, name=layouts.safe_name(layer.name) + "_kernel")
                if kind in ("conv", "dense"):
                    self.biases[layer.name] = tf.Variable(spec.bias(layer), name=layouts.safe_name(layer.name) + "_bias")
                self.plan.append((layer.name, kind, settings))

        @tf.function
        def __call__(self, x, training=False, masks=None):
            """x: NHWC (or (N, F)); returns every layer's output, native layout.
            training=True (a Python bool) applies dropout at the layer's rate; the default is inference.
            masks (training only): {dropout layer name: mask in the layer's native layout}; those layers then
            multiply their input by the given mask instead of drawing one (dropout masks drawn by a harness)."""
            outputs = []
            for name, kind, s in self.plan:
                if s.get("pad") is not None:
                    x = tf.pad(x, s["pad"], constant_values=s["fill"])
                if kind == "conv":
                    x = tf.nn.conv2d(x, self.kernels[name], s["strides"], s["padding"]) + self.biases[name]
                elif kind == "maxpool":
                    x = tf.nn.max_pool2d(x, s["kernel"], s["strides"], s["padding"])
                elif kind == "avgpool":
                    x = tf.nn.avg_pool2d(x, s["kernel"], s["strides"], s["padding"])
                elif kind == "relu":
                    x = tf.nn.relu(x)
                elif kind == "dropout" and training and masks is not None and name in masks:
                    x = x * masks[name]
                elif kind == "dropout" and training and s["rate"] > 0:
                    x = tf.nn.dropout(x, rate=s["rate"])
                elif kind == "dropout":
                    x = tf.identity(x)  # inference: dropout is the identity
                elif kind == "flatten":
                    x = tf.reshape(x, [tf.shape(x)[0], -1])
                elif kind == "dense":
                    x = tf.matmul(x, self.kernels[name]) + self.biases[name]
                elif kind == "softmax":
                    x = tf.nn.softmax(x, axis=-1)
                else:
                    raise Unsupported(f"{name}: layer kind {kind!r} has no TensorFlow op here")
                outputs.append(x)
            return outputs

    return CNN


def build(spec: ir.ModelSpec, jit_compile: bool = False):
    """The tf.Module; `jit_compile` concerns the functions that call it (see `function`)."""
    return _cnn_class()(spec)


def function(python_function, jit_compile: bool = False):
    """tf.function of `python_function`, compiled by XLA when the fast path asks for it."""
    return import_tf().function(python_function, jit_compile=jit_compile)


def layer_outputs(model, spec: ir.ModelSpec, x: np.ndarray, jit_compile: bool = False) -> dict:
    tf = import_tf()
    forward = function(model.__call__, jit_compile) if jit_compile else model
    ys = forward(tf.constant(layouts.nchw_to_nhwc(np.asarray(x, dtype=np.float32))))
    return {layer.name: layouts.to_canonical(y.numpy(), source)
            for layer, y, source in zip(spec.layers, ys, layouts.flatten_sources(spec))}
