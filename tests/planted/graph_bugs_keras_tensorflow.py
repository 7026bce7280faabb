"""Graph-op bugs planted into the Keras 3 builder (collected by tests/planted/bugs.py)."""
import dataclasses
import importlib


def _bn_epsilon():
    # BatchNormalization built with Keras's default epsilon 1e-3 instead of the node's (ONNX's default 1e-5)
    module = importlib.import_module("builders.keras_tensorflow")

    def op_batchnorm(graph, node, xs):
        bn = graph.keras.layers.BatchNormalization(axis=-1, momentum=node.attrs["momentum"], name=node.name)
        return module._loaded(graph, bn, node, xs[0])
    module.op_batchnorm = op_batchnorm


def _channel_shuffle_transposed_wrong():
    # the NHWC port of the shuffle reshaped to (H, W, C/g, g) instead of (H, W, g, C/g): the transpose then
    # applies the inverse permutation of the channels
    module = importlib.import_module("builders.keras_tensorflow")

    def op_channelshuffle(graph, node, xs):
        L, groups = graph.keras.layers, node.attrs["groups"]
        c, h, w = node.output_shape
        x = L.Reshape((h, w, c // groups, groups))(xs[0])
        x = L.Permute((1, 2, 4, 3))(x)
        return L.Reshape((h, w, c), name=node.name)(x)
    module.op_channelshuffle = op_channelshuffle


def _depth_to_space_modes_swapped():
    # DCR (ONNX's default, TensorFlow's depth_to_space) and CRD (PyTorch's PixelShuffle) confused: the channels
    # viewed as (C', b, b) where the node says (b, b, C'), and the other way round; same shape, moved pixels
    module = importlib.import_module("builders.keras_tensorflow")
    original = module.op_depthtospace

    def op_depthtospace(graph, node, xs):
        swapped = {"DCR": "CRD", "CRD": "DCR"}[node.attrs["mode"]]
        return original(graph, dataclasses.replace(node, attrs={**node.attrs, "mode": swapped}), xs)
    module.op_depthtospace = op_depthtospace


BUGS = {"bn-epsilon": _bn_epsilon, "channel-shuffle-transposed-wrong": _channel_shuffle_transposed_wrong,
        "depth-to-space-modes-swapped": _depth_to_space_modes_swapped}
