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


BUGS = {"depthwise-mapping": _depthwise_mapping}
