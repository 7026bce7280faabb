"""tensorlayer 2.2.5 (on TensorFlow 2, eager): ModelSpec -> a static tl.models.Model of tensorlayer layers, NHWC.

The model's outputs are every spec layer's output, in spec order, so one forward pass yields them all.
tensorlayer has no activation layer (relu/softmax) and no -inf padding, so those are Lambda layers.
Its Conv2d and MaxPool2d default to padding 'SAME' (MaxPool2d also to a 3x3 window) and Dropout takes
the KEEP probability, so every argument is passed explicitly.
"""
from __future__ import annotations

import os

import numpy as np

from builders import Unsupported, layouts
from spec import ir

NAME = "tensorlayer"


def conv_kernel(w):
    """Canonical (O, I, kh, kw) -> TensorFlow (kh, kw, I, O)."""
    return layouts.oihw_to_hwio(w)


def dense_kernel(w, flatten_from):
    """Canonical (in, out), rows in (C, H, W) order -> rows in the (H, W, C) order an NHWC flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def import_tensorlayer():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's info banner off the worker's stderr
    import tensorflow as tf
    import tensorlayer as tl
    return tf, tl


def versions() -> dict:
    tf, tl = import_tensorlayer()
    return {"tensorlayer": tl.__version__, "tensorflow": tf.__version__, "numpy": np.__version__}


def build(spec, dropout=None):
    """dropout: None (tl.layers.Dropout at each dropout layer's rate), or a callable (spec index, spec layer,
    input node) -> output node that builds the dropout layers instead (a trainer applying given masks)."""
    tf, tl = import_tensorlayer()
    L = tl.layers

    def pad(net, pads, name, value=0.0):
        top, left, bottom, right = pads
        if value == 0.0:
            return L.ZeroPad2d(((top, bottom), (left, right)), name=name)(net)
        paddings = [[0, 0], [top, bottom], [left, right], [0, 0]]
        return L.Lambda(lambda t: tf.pad(t, paddings, constant_values=value), name=name)(net)

    shape = spec.input_shape
    inputs = L.Input([None, shape[1], shape[2], shape[0]] if len(shape) == 3 else [None, *shape], name="input")
    net = inputs
    outputs, loads = [], []  # loads: (layer, kernel, bias) assigned once the layers are built
    for i, layer in enumerate(spec.layers):
        in_shape = spec.input_shape_of(i)
        a, name = layer.attrs, layouts.safe_name(layer.name)
        if layer.kind in ("conv", "maxpool", "avgpool"):
            mode = ir.padding_mode(in_shape[1:], a["kernel"], a["strides"], a["pads"])
        if layer.kind == "conv":
            if mode == "explicit":
                net, mode = pad(net, a["pads"], name + "_pad"), "valid"
            conv = L.Conv2d(a["filters"], tuple(a["kernel"]), tuple(a["strides"]), act=None,
                            padding=mode.upper(), in_channels=in_shape[0], name=name)
            net = conv(net)
            loads.append((conv, conv_kernel(spec.weight(layer)), spec.bias(layer)))
        elif layer.kind == "maxpool":
            if mode == "explicit":
                net, mode = pad(net, a["pads"], name + "_pad", -np.inf), "valid"
            net = L.MaxPool2d(tuple(a["kernel"]), tuple(a["strides"]), padding=mode.upper(), name=name)(net)
        elif layer.kind == "avgpool":
            if mode != "valid" and a["count_include_pad"]:
                net, mode = pad(net, a["pads"], name + "_pad"), "valid"  # TF 'SAME' would exclude the padding
            elif mode == "explicit":
                raise Unsupported(f"{layer.name}: average pooling that excludes padding is only 'SAME' "
                                  f"in tensorlayer, pads {a['pads']} are not")
            net = L.MeanPool2d(tuple(a["kernel"]), tuple(a["strides"]), padding=mode.upper(), name=name)(net)
        elif layer.kind == "relu":
            net = L.Lambda(tf.nn.relu, name=name)(net)
        elif layer.kind == "softmax":
            if len(in_shape) != 1:
                raise Unsupported(f"{layer.name}: softmax over a spatial tensor's W axis")
            net = L.Lambda(tf.nn.softmax, name=name)(net)
        elif layer.kind == "dropout" and dropout is not None:
            net = dropout(i, layer, net)
        elif layer.kind == "dropout":
            net = L.Dropout(keep=1.0 - a["rate"], name=name)(net)
        elif layer.kind == "flatten":
            net = L.Flatten(name=name)(net)
        elif layer.kind == "dense":
            if len(in_shape) != 1:
                raise Unsupported(f"{layer.name}: dense layer on an unflattened {in_shape} input")
            dense = L.Dense(a["units"], act=None, in_channels=in_shape[0], name=name)
            net = dense(net)
            loads.append((dense, dense_kernel(spec.weight(layer), layouts.dense_input_order(spec, i)),
                          spec.bias(layer)))
        outputs.append(net)
    model = tl.models.Model(inputs=inputs, outputs=outputs)
    for lyr, kernel, bias in loads:
        lyr.W.assign(kernel.astype(np.float32))
        lyr.b.assign(bias.astype(np.float32))
    return model


def layer_outputs(model, spec, x) -> dict:
    import_tensorlayer()
    model.eval()
    values = model(layouts.nchw_to_nhwc(x))
    return {layer.name: layouts.to_canonical(v.numpy(), source)
            for layer, v, source in zip(spec.layers, values, layouts.flatten_sources(spec))}
