"""tensorlayer 2.2.5 (on TensorFlow 2, eager): ModelSpec -> a static tl.models.Model of tensorlayer layers, NHWC.

The model is tensorlayer's functional API: the graph is walked node by node (`interface.walk`), each node's
`op_<kind>` calling a tensorlayer layer on the outputs of the nodes it reads, and tl.models.Model(inputs=...,
outputs=...) takes every node's output, in spec order, so one forward pass yields them all.
tensorlayer has no activation layer (relu/tanh/softmax) and no -inf padding, so those are Lambda layers.
Its Conv2d and MaxPool2d default to padding 'SAME' (MaxPool2d also to a 3x3 window) and Dropout takes
the KEEP probability, so every argument is passed explicitly.

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

NAME = "tensorlayer"


def conv_kernel(w):
    """Canonical (O, I, kh, kw) -> TensorFlow (kh, kw, I, O)."""
    return layouts.oihw_to_hwio(w)


def dense_kernel(w, flatten_from):
    """Canonical (in, out), rows in (C, H, W) order -> rows in the (H, W, C) order an NHWC flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def to_native(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """A canonical parameter (or gradient) -> the layout tensorlayer's weight holds it in."""
    return layouts.nhwc_parameter(spec, node, param, value, conv_kernel, dense_kernel)


def to_canonical(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Inverse of to_native."""
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
    return ir.padding_mode(net.spec.input_shapes(node)[0][1:], a["kernel"], a["strides"], a["pads"])


def _flat_input(net, node, what: str) -> int:
    shape = net.spec.input_shapes(node)[0]
    if len(shape) != 1:
        raise Unsupported(f"{node.name}: {what} on an unflattened {shape} input")
    return shape[0]


def op_conv(net, node, x):
    a, mode, name = node.attrs, _window_mode(net, node), layouts.safe_name(node.name)
    if mode == "explicit":
        x, mode = _pad(net, x, a["pads"], name + "_pad"), "valid"
    conv = net.L.Conv2d(a["filters"], tuple(a["kernel"]), tuple(a["strides"]), act=None, padding=mode.upper(),
                        in_channels=net.spec.input_shapes(node)[0][0], name=name)
    net.hold(node, weight=conv.W, bias=conv.b)
    return conv(x)


def op_dense(net, node, x):
    dense = net.L.Dense(node.attrs["units"], act=None, in_channels=_flat_input(net, node, "dense layer"),
                        name=layouts.safe_name(node.name))
    net.hold(node, weight=dense.W, bias=dense.b)
    return dense(x)


def op_maxpool(net, node, x):
    a, mode, name = node.attrs, _window_mode(net, node), layouts.safe_name(node.name)
    if mode == "explicit":
        x, mode = _pad(net, x, a["pads"], name + "_pad", -np.inf), "valid"
    return net.L.MaxPool2d(tuple(a["kernel"]), tuple(a["strides"]), padding=mode.upper(), name=name)(x)


def op_avgpool(net, node, x):
    a, mode, name = node.attrs, _window_mode(net, node), layouts.safe_name(node.name)
    if mode != "valid" and a["count_include_pad"]:
        x, mode = _pad(net, x, a["pads"], name + "_pad"), "valid"  # TF 'SAME' would exclude the padding
    elif mode == "explicit":
        raise Unsupported(f"{node.name}: average pooling that excludes padding is only 'SAME' in tensorlayer, "
                          f"pads {a['pads']} are not")
    return net.L.MeanPool2d(tuple(a["kernel"]), tuple(a["strides"]), padding=mode.upper(), name=name)(x)


def op_relu(net, node, x):
    return net.L.Lambda(net.tf.nn.relu, name=layouts.safe_name(node.name))(x)


def op_tanh(net, node, x):
    return net.L.Lambda(net.tf.nn.tanh, name=layouts.safe_name(node.name))(x)


def op_softmax(net, node, x):
    _flat_input(net, node, "softmax (over the last axis)")
    return net.L.Lambda(net.tf.nn.softmax, name=layouts.safe_name(node.name))(x)


def op_flatten(net, node, x):
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
    model = tl.models.Model(inputs=inputs, outputs=[values[node.name] for node in spec.layers])
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
