"""Graph-op bugs planted in the tflearn builder (see tests/planted/bugs.py)."""
import importlib

import numpy as np


def _depthwise_mapping():
    # the classic depthwise channel-mapping bug: canonical output o = c*M + m read as o = m*C + c, i.e. the depth
    # multiplier and input-channel axes swapped on the way to tflearn's (kh, kw, C, M) kernel; same shape
    module = importlib.import_module("builders.tflearn")

    def depthwise_kernel(w, channels):
        out, _, kh, kw = w.shape
        return np.ascontiguousarray(w.reshape(out // channels, channels, kh, kw).transpose(2, 3, 1, 0))
    module.depthwise_kernel = depthwise_kernel


def _scale_not_per_channel():
    # a scale node's canonical (C, H, W)-style constant, broadcast to the full (C, H, W), reshaped to NHWC's (H, W, C)
    # where a transpose was due: a valid shape, but each channel's factor spread along the rows of the map
    module = importlib.import_module("builders.tflearn")
    to_native = module.to_native

    def planted(spec, node, param, value):
        if node.kind != "scale" or value.ndim != 3:
            return to_native(spec, node, param, value)
        c, h, w = spec.shape_of(node.inputs[0])
        return np.ascontiguousarray(np.broadcast_to(value, (c, h, w)).reshape(h, w, c))
    module.to_native = planted


def _pixel_shuffle_as_dcr():
    # PyTorch's PixelShuffle (DepthToSpace CRD: channel c*b*b + i*b + j) ported as tf.nn.depth_to_space as it is,
    # whose NHWC order is DCR ((i*b + j)*C' + c): the channel permutation into DCR order left out; same shape
    module = importlib.import_module("builders.tflearn")
    module.dcr_channels = lambda channels, block, mode: np.arange(channels)


def _reduce_axes_not_moved():
    # ONNX's NCHW axes handed to tf.reduce_* on NHWC as they are: ReduceSum over H (axis 2) sums over W there; the
    # reshape to the node's shape still fits, the values are another axis's sums
    module = importlib.import_module("builders.tflearn")
    module.layouts = _Layouts(module.layouts)


class _Layouts:
    def __init__(self, layouts):
        self._layouts = layouts

    def __getattr__(self, name):
        return getattr(self._layouts, name)

    @staticmethod
    def nhwc_axes(axes):
        return list(axes)


BUGS = {"depthwise-mapping": _depthwise_mapping, "scale-not-per-channel": _scale_not_per_channel,
        "pixel-shuffle-as-dcr": _pixel_shuffle_as_dcr, "reduce-axes-not-moved": _reduce_axes_not_moved}
