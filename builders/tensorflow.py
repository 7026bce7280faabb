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

NAME = "tensorflow"


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """Canonical (out, in, kh, kw) -> tf.nn.conv2d's (kh, kw, in, out); both cross-correlate."""
    return layouts.oihw_to_hwio(w)


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """Canonical (in, out), rows in (C, H, W) order -> rows in the (H, W, C) order an NHWC flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


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
    return layouts.nhwc_parameter(spec, node, param, value, conv_kernel, dense_kernel)


def to_canonical(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Inverse of to_native."""
    return layouts.canonical_parameter(spec, node, param, value)


def parameters(model, spec) -> dict:
    """{(node name, param): tf.Variable} for every parameter of the registry, in graph order."""
    return {(node.name, param): model.params[node.name][param]
            for node in spec.parametric() for param in ops.get(node.kind).param_names}


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
    mode = ir.padding_mode(in_hw, a["kernel"], a["strides"], a["pads"])
    if mode == "explicit" and node.kind == "avgpool" and not a["count_include_pad"]:
        raise Unsupported(f"{node.name}: tf.nn.avg_pool2d excludes padding from the average only for "
                          f"padding='SAME', not explicit pads {tuple(a['pads'])}")
    if mode == "explicit":
        # TF's own SAME max pool ignores padding; an explicit pad must never win
        return "VALID", _padder(tf, a["pads"], float("-inf") if node.kind == "maxpool" else 0.0)
    if mode == "same" and node.kind == "avgpool" and a["count_include_pad"]:
        # TF's SAME average pool divides by the in-bounds count; counting the zeros needs them padded in
        return "VALID", _padder(tf, ir.same_pads(in_hw, a["kernel"], a["strides"]))
    return mode.upper(), _padder(tf, None)


def op_conv(tf, spec, node, params):
    padding, pad = _window(tf, spec, node)
    strides, weight, bias = list(node.attrs["strides"]), params["weight"], params["bias"]
    return lambda xs, training, masks: tf.nn.conv2d(pad(xs[0]), weight, strides, padding) + bias


def op_maxpool(tf, spec, node, params):
    padding, pad = _window(tf, spec, node)
    kernel, strides = list(node.attrs["kernel"]), list(node.attrs["strides"])
    return lambda xs, training, masks: tf.nn.max_pool2d(pad(xs[0]), kernel, strides, padding)


def op_avgpool(tf, spec, node, params):
    padding, pad = _window(tf, spec, node)
    kernel, strides = list(node.attrs["kernel"]), list(node.attrs["strides"])
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
    return lambda xs, training, masks: tf.reshape(xs[0], [tf.shape(xs[0])[0], -1])


def op_dense(tf, spec, node, params):
    weight, bias = params["weight"], params["bias"]
    return lambda xs, training, masks: tf.matmul(xs[0], weight) + bias


def op_softmax(tf, spec, node, params):
    return lambda xs, training, masks: tf.nn.softmax(xs[0], axis=-1)


def _graph_class():
    """The tf.Module subclass, defined on first use so that importing this file stays TensorFlow-free."""
    tf = library()
    module = sys.modules[__name__]

    class Graph(tf.Module):
        def __init__(self, spec):
            super().__init__(name="graph")
            self.spec = spec
            self.params = {node.name: {param: tf.Variable(to_native(spec, node, param, value),
                                                          name=f"{layouts.safe_name(node.name)}_{param}")
                                       for param, value in spec.params(node).items()}
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
            values = interface.walk(self.spec, lambda node, xs: self.apply[node.name](xs, training, masks), x)
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
