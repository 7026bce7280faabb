"""Layout arithmetic shared by the builders of NHWC libraries (TensorFlow, Keras, tflearn, tensorlayer).

Pure numpy. Each builder still owns its `conv_kernel` / `dense_kernel`, the names tests patch to
plant bugs; these are the conversions those functions are made of.
"""
from __future__ import annotations

import re

import numpy as np


def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """Canonical (out, in, kh, kw) -> (kh, kw, in, out), the kernel layout of TensorFlow and Keras."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def is_depthwise(spec, node) -> bool:
    """A conv node with one group per input channel (a depth multiplier filters/group >= 1)."""
    group = node.attrs.get("group", 1)
    return node.kind == "conv" and group > 1 and group == spec.shape_of(node.inputs[0])[0]


def oihw_to_hwcm(w: np.ndarray, channels: int) -> np.ndarray:
    """Canonical depthwise (C*M, 1, kh, kw), output o = c*M + m (group o // M) -> (kh, kw, C, M), the layout of
    TensorFlow's depthwise kernels, whose output channel c*M + m is the same one."""
    out, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(channels, out // channels, kh, kw).transpose(2, 3, 0, 1))


def hwcm_to_oihw(w: np.ndarray) -> np.ndarray:
    """Inverse of oihw_to_hwcm."""
    kh, kw, c, m = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw))


def chw_rows_to_hwc(w: np.ndarray, flatten_from) -> np.ndarray:
    """Dense (in, out) weight whose rows follow a (C, H, W) flatten -> rows in the (H, W, C) order an
    NHWC flatten produces. flatten_from is that (C, H, W) shape, or None when no reordering is due."""
    if flatten_from is None:
        return np.ascontiguousarray(w)
    c, h, wd = flatten_from
    return np.ascontiguousarray(w.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(c * h * wd, -1))


def hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    """Inverse of oihw_to_hwio."""
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def hwc_rows_to_chw(w: np.ndarray, flatten_from) -> np.ndarray:
    """Inverse of chw_rows_to_hwc: rows (or a gradient's rows) back to the canonical (C, H, W) order."""
    if flatten_from is None:
        return np.ascontiguousarray(w)
    c, h, wd = flatten_from
    return np.ascontiguousarray(w.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(c * h * wd, -1))


def chw_constant_to_hwc(value: np.ndarray, flatten_from) -> np.ndarray:
    """A constant broadcasting over one sample (a scale or shift node's value), canonical -> NHWC: rank 3
    (C, H, W)-style -> (H, W, C)-style, e.g. (C, 1, 1) -> (1, 1, C); a flat (F,) one read against an NHWC
    flatten's (H, W, C)-ordered vector (flatten_from = its (C, H, W) source) -> that order; a (1,) one as it is."""
    if value.ndim == 3:
        return np.ascontiguousarray(value.transpose(1, 2, 0))
    if value.ndim == 1 and value.size > 1:
        return chw_rows_to_hwc(value.reshape(-1, 1), flatten_from).reshape(-1)
    return np.ascontiguousarray(value)


def hwc_constant_to_chw(value: np.ndarray, flatten_from) -> np.ndarray:
    """Inverse of chw_constant_to_hwc."""
    if value.ndim == 3:
        return np.ascontiguousarray(value.transpose(2, 0, 1))
    if value.ndim == 1 and value.size > 1:
        return hwc_rows_to_chw(value.reshape(-1, 1), flatten_from).reshape(-1)
    return np.ascontiguousarray(value)


def kernel_to_canonical(spec, index: int, kernel: np.ndarray) -> np.ndarray:
    """A conv or dense node's kernel (or its gradient) in an NHWC library's layout -> canonical layout."""
    if spec.layers[index].kind == "conv":
        return hwio_to_oihw(kernel)
    return hwc_rows_to_chw(kernel, dense_input_order(spec, index))


def nhwc_parameter(spec, node, param: str, value: np.ndarray, conv_kernel, dense_kernel) -> np.ndarray:
    """A canonical parameter (or gradient) -> an NHWC library's layout: conv weights through the builder's
    `conv_kernel`, dense weights through its `dense_kernel` with the rows of the flatten they read; the rest as
    they are. The builder passes its own two functions (the names tests patch to plant layout bugs)."""
    if (node.kind, param) == ("conv", "weight"):
        return conv_kernel(value)
    if (node.kind, param) == ("dense", "weight"):
        return dense_kernel(value, flatten_source_of(spec, node.inputs[0]))
    return np.ascontiguousarray(value)


def canonical_parameter(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Inverse of nhwc_parameter with oihw_to_hwio and chw_rows_to_hwc as the builder's two functions."""
    if (node.kind, param) == ("conv", "weight"):
        return hwio_to_oihw(value)
    if (node.kind, param) == ("dense", "weight"):
        return hwc_rows_to_chw(value, flatten_source_of(spec, node.inputs[0]))
    return np.ascontiguousarray(value)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def native_shape(shape: tuple) -> tuple:
    """Canonical per-sample shape (C, H, W) or (F,) -> NHWC's (H, W, C) or (F,)."""
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)


NHWC_AXIS = {1: 3, 2: 1, 3: 2}  # an ONNX (NCHW) axis of a map -> the axis an NHWC library holds it on


def nhwc_axes(axes) -> list:
    return sorted(NHWC_AXIS[a] for a in axes)


def nhwc_repeats(repeats) -> list:
    """A tile's (C, H, W) repeats -> NHWC's multiples, the batch's 1 first."""
    c, h, w = repeats
    return [1, h, w, c]


def to_canonical(y: np.ndarray, flatten_from) -> np.ndarray:
    """An NHWC library's layer output -> canonical layout: NHWC -> NCHW, and an (H, W, C)-ordered
    flat vector (flatten_from = its (C, H, W) source) -> (C, H, W) order."""
    if y.ndim == 4:
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))
    if flatten_from is not None:
        c, h, w = flatten_from
        return np.ascontiguousarray(y.reshape(len(y), h, w, c).transpose(0, 3, 1, 2).reshape(len(y), -1))
    return y


def from_canonical(y: np.ndarray, flatten_from) -> np.ndarray:
    """Inverse of to_canonical: a canonical activation (or a dropout mask) -> the NHWC library's layout."""
    if y.ndim == 4:
        return np.ascontiguousarray(y.transpose(0, 2, 3, 1))
    if flatten_from is not None:
        c, h, w = flatten_from
        return np.ascontiguousarray(y.reshape(len(y), c, h, w).transpose(0, 2, 3, 1).reshape(len(y), -1))
    return y


def flatten_sources(spec) -> list:
    """Per node: the (C, H, W) shape its output was flattened from while that output is still in an
    NHWC flatten's (H, W, C) order (from a flatten, through ops that keep the order, up to the next dense
    node), else None. A flattened 1x1 map, and a flatten in (H, W, C) order, are in canonical order already."""
    sources = {spec.input_name: None}
    for node in spec.layers:
        if node.kind == "flatten":
            shape = tuple(spec.shape_of(node.inputs[0]))
            canonical = len(shape) != 3 or shape[1:] == (1, 1) or node.attrs.get("order", "CHW") == "HWC"
            sources[node.name] = None if canonical else shape
        elif node.kind in ("dense", "unsqueeze"):  # unsqueeze: a map again (its builder orders the features)
            sources[node.name] = None
        else:
            sources[node.name] = sources[node.inputs[0]]
    return [sources[node.name] for node in spec.layers]


def flatten_source_of(spec, tensor: str):
    """flatten_from of a tensor (a node's name or the graph input)."""
    if tensor == spec.input_name:
        return None
    return flatten_sources(spec)[spec.index_of(tensor)]


def dense_input_order(spec, index: int):
    """flatten_from for dense node `index`: the source of the flat vector it reads, or None."""
    return flatten_source_of(spec, spec.layers[index].inputs[0])


NONNEGATIVE = ("relu", "softmax")  # op kinds whose outputs are >= 0
ORDER_KEEPING = ("dropout",)  # op kinds that pass their input's values through at inference


def nonnegative_input(spec, index: int) -> bool:
    """Whether node `index` reads values >= 0 only, so zero padding equals -inf padding for max pooling."""
    node = spec.layers[index]
    while node.inputs[0] != spec.input_name:
        node = spec.node(node.inputs[0])
        if node.kind in NONNEGATIVE:
            return True
        if node.kind not in ORDER_KEEPING:
            return False
    return False


def safe_name(name: str) -> str:
    """A layer name every TensorFlow-based library accepts as a variable / scope name."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def scope_name(name: str) -> str:
    """A node name as a TensorFlow name scope (safe_name, not starting with '_' or '-', which a scope may not)."""
    return safe_name(name).lstrip("_-") or "node"
