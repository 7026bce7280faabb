"""tflearn 0.5.0 (TF1 graph mode on TensorFlow 2): ModelSpec -> tflearn layers wrapped in a tflearn.DNN, NHWC.

tflearn has no zero-padding layer, so explicit pads are tf.pad on the layer tensors (tflearn layers are plain
TF tensors). Its pooling defaults to padding 'same' and its dropout takes the KEEP probability.
"""
from __future__ import annotations

import os

import numpy as np

from builders import Unsupported, layouts
from spec import ir

NAME = "tflearn"


def conv_kernel(w):
    """Canonical (O, I, kh, kw) -> TensorFlow (kh, kw, I, O)."""
    return layouts.oihw_to_hwio(w)


def dense_kernel(w, flatten_from):
    """Canonical (in, out), rows in (C, H, W) order -> rows in the (H, W, C) order an NHWC flatten produces."""
    return layouts.chw_rows_to_hwc(w, flatten_from)


def import_tflearn():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's info banner off the worker's stderr
    from tensorflow.python.util import nest
    nest.is_sequence = nest.is_nested  # removed from TF; tflearn 0.5.0 still calls it
    import PIL.Image
    if not hasattr(PIL.Image, "ANTIALIAS"):
        PIL.Image.ANTIALIAS = PIL.Image.LANCZOS  # removed in Pillow 10
    import tensorflow.compat.v1 as tf
    tf.get_logger().setLevel("ERROR")  # tflearn's import and each of its TF1 calls log a deprecation notice
    import tflearn
    return tf, tflearn


def versions() -> dict:
    tf, tflearn = import_tflearn()
    import importlib.metadata as md
    return {"tflearn": md.version("tflearn"), "tensorflow": tf.__version__, "numpy": np.__version__}


def _pad(tf, x, pads, value=0.0):
    top, left, bottom, right = pads
    return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)


def build(spec, dropout=None):
    """dropout: None (tflearn.dropout at each dropout layer's rate), or a callable (spec index, spec layer, input
    tensor) -> output tensor that builds the dropout layers instead, in the network's graph (a trainer applying
    given masks)."""
    tf, tflearn = import_tflearn()
    graph = tf.Graph()
    with graph.as_default():
        net = tflearn.input_data(shape=[None, *layouts.native_shape(spec.input_shape)], name="input")
        outputs, params = {}, []  # params: (variable, value) to load once the session exists
        for i, layer in enumerate(spec.layers):
            in_shape = spec.input_shape_of(i)
            a, name = layer.attrs, layouts.safe_name(layer.name)
            if layer.kind in ("conv", "maxpool", "avgpool"):
                mode = ir.padding_mode(in_shape[1:], a["kernel"], a["strides"], a["pads"])
            if layer.kind == "conv":
                if mode == "explicit":
                    net, mode = _pad(tf, net, a["pads"]), "valid"
                net = tflearn.conv_2d(net, a["filters"], list(a["kernel"]), list(a["strides"]), padding=mode,
                                      activation="linear", name=name)
                params += [(net.W, conv_kernel(spec.weight(layer))), (net.b, spec.bias(layer))]
            elif layer.kind == "maxpool":
                if mode == "explicit":
                    net, mode = _pad(tf, net, a["pads"], -np.inf), "valid"
                net = tflearn.max_pool_2d(net, list(a["kernel"]), list(a["strides"]), padding=mode, name=name)
            elif layer.kind == "avgpool":
                if mode != "valid" and a["count_include_pad"]:
                    net, mode = _pad(tf, net, a["pads"]), "valid"  # TF 'same' would exclude the padding
                elif mode == "explicit":
                    raise Unsupported(f"{layer.name}: average pooling that excludes padding is only 'same' "
                                      f"in tflearn, pads {a['pads']} are not")
                net = tflearn.avg_pool_2d(net, list(a["kernel"]), list(a["strides"]), padding=mode, name=name)
            elif layer.kind == "relu":
                net = tflearn.activation(net, "relu", name=name)
            elif layer.kind == "softmax":
                if len(in_shape) != 1:
                    raise Unsupported(f"{layer.name}: softmax over a spatial tensor's W axis")
                net = tflearn.activation(net, "softmax", name=name)
            elif layer.kind == "dropout" and dropout is not None:
                net = dropout(i, layer, net)
            elif layer.kind == "dropout":
                net = tflearn.dropout(net, 1.0 - a["rate"], name=name)
            elif layer.kind == "flatten":
                net = tflearn.flatten(net, name=name)
            elif layer.kind == "dense":
                if len(in_shape) != 1:
                    raise Unsupported(f"{layer.name}: dense layer on an unflattened {in_shape} input")
                net = tflearn.fully_connected(net, a["units"], activation="linear", name=name)
                params += [(net.W, dense_kernel(spec.weight(layer), layouts.dense_input_order(spec, i))),
                           (net.b, spec.bias(layer))]
            outputs[layer.name] = net
        model = tflearn.DNN(net)
        for var, value in params:
            model.set_weights(var, value.astype(np.float32))
    model.spec_outputs = outputs  # each spec layer's tensor, for layer_outputs
    return model


def layer_outputs(model, spec, x) -> dict:
    tf, tflearn = import_tflearn()
    with model.session.graph.as_default():
        tflearn.is_training(False, session=model.session)
        values = model.session.run([model.spec_outputs[l.name] for l in spec.layers],
                                   feed_dict={model.inputs[0]: layouts.nchw_to_nhwc(x)})
    return {layer.name: layouts.to_canonical(v, source)
            for layer, v, source in zip(spec.layers, values, layouts.flatten_sources(spec))}
