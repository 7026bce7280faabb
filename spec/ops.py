"""The op registry: per op kind, everything that is true of it independently of any library.

An entry holds the ONNX ops it is imported from, its parameter tensors and their canonical layout, how many
inputs it reads, its output shape, its FLOPs rule, and its float64 reference forward and backward (the
math `spec.reference64` runs; written from the op definitions, sharing no code with any library).
Adding an op is one entry here plus one method per library builder (`op_<kind>`); a builder without the
method raises `builders.Unsupported` naming the op.

Only numpy and the standard library: this module is imported in every worker environment.

Conventions (canonical = ONNX / PyTorch): activations NCHW, batch axis first; conv weight (out, in, kh, kw)
applied as cross-correlation; dense weight (in, out) with rows in the (C, H, W) flatten order; pads
(top, left, bottom, right).

FLOPs conventions (per image; stated so that % of peak can be checked by hand): a multiply-add is 2 FLOPs;
conv and dense count their multiply-adds plus one add per output for the bias; relu 1 per output element;
tanh 4 per element; max/avg pooling k*k-1 per output (comparisons or adds; avg adds 1 divide); softmax 5 per
element (max, subtract, exp, sum, divide); dropout, flatten 0. The backward pass of conv and dense costs twice
their forward multiply-adds (input and weight gradients; only the weights' when no earlier op has parameters,
so that the input gradient is never needed), every other op once its forward count.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class Param:
    name: str
    layout: str  # the canonical layout, for the reader
    # how a fresh model draws it: "glorot_uniform" with fans(shape) -> (fan_in, fan_out), or "zeros"
    init: str = "zeros"
    fans: Callable | None = None


def _conv_fans(shape):
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


@dataclass(frozen=True)
class Op:
    """forward(attrs, params, xs) -> (y, cache); backward(attrs, params, xs, y, cache, g) -> (dxs, dparams).
    shape(attrs, in_shapes) -> output shape (no batch axis). flops(attrs, in_shapes, out_shape, input_grad)
    -> (forward, backward) per image, input_grad telling whether the gradient of the input is needed."""
    kind: str
    onnx: tuple
    forward: Callable
    backward: Callable
    flops: Callable
    shape: Callable = None  # default: the shape of the first input
    params: tuple = ()
    arity: int = 1
    doc: str = ""

    def __post_init__(self):
        if self.shape is None:
            object.__setattr__(self, "shape", _same_shape)

    @property
    def param_names(self) -> tuple:
        return tuple(p.name for p in self.params)


def _same_shape(attrs, in_shapes):
    return tuple(in_shapes[0])


REGISTRY: dict = {}


def register(op: Op) -> Op:
    if op.kind in REGISTRY:
        raise ValueError(f"op kind {op.kind!r} registered twice")
    REGISTRY[op.kind] = op
    return op


def get(kind: str) -> Op:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown op kind {kind!r}; known: {', '.join(REGISTRY)}") from None


def has_params(kind: str) -> bool:
    return bool(get(kind).params)


def onnx_ops() -> dict:
    """ONNX op type -> op kind, for every op imported one-to-one (no attributes to translate)."""
    return {name: op.kind for op in REGISTRY.values() for name in op.onnx}


# --- window arithmetic -----------------------------------------------------------------------------------

def window_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    return (size + pad_before + pad_after - kernel) // stride + 1


def window_shape(channels: int, attrs: dict, in_shape: tuple) -> tuple:
    hw = in_shape[1:]
    k, s, p = attrs["kernel"], attrs["strides"], attrs["pads"]
    return (channels,) + tuple(window_output_size(hw[a], k[a], s[a], p[a], p[a + 2]) for a in (0, 1))


def _pad(x, pads, value=0.0):
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(xp, kernel, strides):
    """(N, C, oh, ow, kh, kw) view of the windows of padded input xp."""
    return sliding_window_view(xp, tuple(kernel), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]


def _scatter_windows(x_shape, values, attrs):
    """Add values (N, C, oh, ow, kh, kw) back to the input positions their windows came from; unpadded."""
    (kh, kw), (sh, sw), pads = attrs["kernel"], attrs["strides"], attrs["pads"]
    oh, ow = values.shape[2:4]
    top, left, bottom, right = pads
    dxp = np.zeros((x_shape[0], x_shape[1], x_shape[2] + top + bottom, x_shape[3] + left + right))
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += values[..., i, j]
    return dxp[:, :, top:dxp.shape[2] - bottom, left:dxp.shape[3] - right]


# --- ops with parameters ---------------------------------------------------------------------------------

def _conv_forward(attrs, params, xs):
    win = _windows(_pad(xs[0], attrs["pads"]), attrs["kernel"], attrs["strides"])
    y = np.einsum("nchwij,ocij->nohw", win, params["weight"], optimize=True)
    return y + params["bias"][None, :, None, None], win


def _conv_backward(attrs, params, xs, y, win, g):
    dparams = {"weight": np.einsum("nchwij,nohw->ocij", win, g, optimize=True), "bias": g.sum(axis=(0, 2, 3))}
    spread = np.einsum("nohw,ocij->nchwij", g, params["weight"], optimize=True)
    return [_scatter_windows(xs[0].shape, spread, attrs)], dparams


def _mac_flops(macs: int, outputs: int, input_grad: bool) -> tuple:
    return 2 * macs + outputs, (4 if input_grad else 2) * macs + outputs


register(Op(
    "conv", ("Conv",), _conv_forward, _conv_backward,
    flops=lambda a, ins, out, input_grad: _mac_flops(math.prod(out) * ins[0][0] * math.prod(a["kernel"]),
                                                     math.prod(out), input_grad),
    shape=lambda a, ins: window_shape(a["filters"], a, ins[0]),
    params=(Param("weight", "(out, in, kh, kw), cross-correlation", "glorot_uniform", _conv_fans),
            Param("bias", "(out,)")),
    doc="2-D convolution (group 1, dilation 1); attrs filters, kernel, strides, pads"))


def _dense_backward(attrs, params, xs, y, cache, g):
    return [g @ params["weight"].T], {"weight": xs[0].T @ g, "bias": g.sum(axis=0)}


register(Op(
    "dense", ("Gemm", "MatMul"), lambda a, p, xs: (xs[0] @ p["weight"] + p["bias"], None), _dense_backward,
    flops=lambda a, ins, out, input_grad: _mac_flops(ins[0][0] * a["units"], a["units"], input_grad),
    shape=lambda a, ins: (a["units"],),
    params=(Param("weight", "(in, out), rows in (C, H, W) flatten order", "glorot_uniform", lambda s: tuple(s)),
            Param("bias", "(out,)")),
    doc="fully connected layer on an [N, F] input; attrs units"))


# --- pooling ---------------------------------------------------------------------------------------------

def _maxpool_forward(attrs, params, xs):
    win = _windows(_pad(xs[0], attrs["pads"], -np.inf), attrs["kernel"], attrs["strides"])
    flat = win.reshape(*win.shape[:4], -1)
    first = flat.argmax(axis=-1)  # the gradient goes to the first maximum in row-major window order
    return np.take_along_axis(flat, first[..., None], -1)[..., 0], first


def _maxpool_backward(attrs, params, xs, y, first, g):
    kh, kw = attrs["kernel"]
    onehot = np.eye(kh * kw)[first].reshape(*g.shape, kh, kw)
    return [_scatter_windows(xs[0].shape, onehot * g[..., None, None], attrs)], {}


def _avg_count(attrs, x_shape):
    kh, kw = attrs["kernel"]
    if attrs["count_include_pad"]:
        return float(kh * kw)
    ones = _windows(_pad(np.ones((1, 1, *x_shape[2:])), attrs["pads"]), attrs["kernel"], attrs["strides"])
    return ones.sum(axis=(-1, -2))[0, 0]


def _avgpool_forward(attrs, params, xs):
    win = _windows(_pad(xs[0], attrs["pads"]), attrs["kernel"], attrs["strides"])
    count = _avg_count(attrs, xs[0].shape)
    return win.sum(axis=(-1, -2)) / count, count


def _avgpool_backward(attrs, params, xs, y, count, g):
    spread = np.broadcast_to((g / count)[..., None, None], (*g.shape, *attrs["kernel"]))
    return [_scatter_windows(xs[0].shape, spread, attrs)], {}


def _pool_flops(extra: int):
    def flops(a, ins, out, input_grad):
        per = math.prod(a["kernel"]) - 1 + extra
        return math.prod(out) * per, math.prod(out) * per
    return flops


register(Op("maxpool", ("MaxPool",), _maxpool_forward, _maxpool_backward, _pool_flops(0),
            shape=lambda a, ins: window_shape(ins[0][0], a, ins[0]),
            doc="max pooling, pads count as -inf; attrs kernel, strides, pads"))
register(Op("avgpool", ("AveragePool",), _avgpool_forward, _avgpool_backward, _pool_flops(1),
            shape=lambda a, ins: window_shape(ins[0][0], a, ins[0]),
            doc="average pooling; attrs kernel, strides, pads, count_include_pad"))


# --- shape and elementwise ops ---------------------------------------------------------------------------

def _per_element(n: int):
    return lambda a, ins, out, input_grad: (n * math.prod(out), n * math.prod(out))


def elementwise(kind: str, onnx: tuple, f: Callable, df: Callable, flops_per_element: int, doc: str) -> Op:
    """An op y = f(x) applied element by element; df(x, y) is dy/dx."""
    return register(Op(kind, onnx, lambda a, p, xs: (f(xs[0]), None),
                       lambda a, p, xs, y, cache, g: ([g * df(xs[0], y)], {}),
                       _per_element(flops_per_element), doc=doc))


elementwise("relu", ("Relu",), lambda x: np.maximum(x, 0.0), lambda x, y: (x > 0).astype(x.dtype), 1, "max(x, 0)")
elementwise("tanh", ("Tanh",), np.tanh, lambda x, y: 1.0 - y * y, 4, "hyperbolic tangent")
# dropout is the identity in the reference: steps are compared with dropout off or with harness masks
elementwise("dropout", (), lambda x: x, lambda x, y: np.ones_like(x), 0, "dropout; attrs rate (identity at inference)")


def _softmax_forward(attrs, params, xs):
    e = np.exp(xs[0] - xs[0].max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True), None


def _softmax_backward(attrs, params, xs, p, cache, g):
    return [p * (g - (g * p).sum(axis=1, keepdims=True))], {}


register(Op("softmax", ("Softmax",), _softmax_forward, _softmax_backward, _per_element(5),
            doc="softmax over the last axis of an [N, F] tensor"))
register(Op("flatten", ("Flatten",), lambda a, p, xs: (xs[0].reshape(len(xs[0]), -1), None),
            lambda a, p, xs, y, cache, g: ([g.reshape(xs[0].shape)], {}), _per_element(0),
            shape=lambda a, ins: (math.prod(ins[0]),),
            doc="[N, C, H, W] -> [N, C*H*W] in (C, H, W) order"))
