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
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class Param:
    name: str
    layout: str  # the canonical layout, for the reader
    # how a fresh model draws it: "glorot_uniform" with fans(shape) -> (fan_in, fan_out), "zeros" or "ones"
    init: str = "zeros"
    fans: Callable | None = None
    trainable: bool = True  # False: a statistic the layer keeps (BatchNorm's running mean and variance)


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
    arity: int | None = 1  # None: any number of inputs (Add, Concat)
    doc: str = ""
    attrs: dict = field(default_factory=dict)  # ONNX attribute -> default, read one-to-one by the importer
    # state(attrs, params, xs, cache) -> {param: new value}: the non-trainable parameters after a forward in training
    # mode (attrs["training"] True), e.g. BatchNorm's running statistics; None for ops without such state
    state: Callable | None = None

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


def trainable(kind: str, param: str) -> bool:
    """Whether an optimizer moves this parameter of this op kind (BatchNorm's running statistics it does not)."""
    return any(p.name == param and p.trainable for p in get(kind).params)


def has_params(kind: str) -> bool:
    return bool(get(kind).params)


def onnx_ops() -> dict:
    """ONNX op type -> op kind, for every op imported one-to-one (no attributes to translate)."""
    return {name: op.kind for op in REGISTRY.values() for name in op.onnx}


# --- window arithmetic -----------------------------------------------------------------------------------

def window_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    return (size + pad_before + pad_after - kernel) // stride + 1


def dilations(attrs: dict) -> tuple:
    return tuple(attrs.get("dilations", (1, 1)))


def effective_kernel(attrs: dict) -> tuple:
    """The extent a dilated kernel covers: d * (k - 1) + 1 per axis."""
    return tuple(d * (k - 1) + 1 for k, d in zip(attrs["kernel"], dilations(attrs)))


def window_shape(channels: int, attrs: dict, in_shape: tuple) -> tuple:
    hw = in_shape[1:]
    k, s, p = effective_kernel(attrs), attrs["strides"], attrs["pads"]
    return (channels,) + tuple(window_output_size(hw[a], k[a], s[a], p[a], p[a + 2]) for a in (0, 1))


def _pad(x, pads, value=0.0):
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(xp, attrs):
    """(N, C, oh, ow, kh, kw) view of the (dilated) windows of padded input xp."""
    (dh, dw), (sh, sw) = dilations(attrs), attrs["strides"]
    view = sliding_window_view(xp, effective_kernel(attrs), axis=(2, 3))
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


def _scatter_windows(x_shape, values, attrs):
    """Add values (N, C, oh, ow, kh, kw) back to the input positions their windows came from; unpadded."""
    (kh, kw), (sh, sw), pads, (dh, dw) = attrs["kernel"], attrs["strides"], attrs["pads"], dilations(attrs)
    oh, ow = values.shape[2:4]
    top, left, bottom, right = pads
    dxp = np.zeros((x_shape[0], x_shape[1], x_shape[2] + top + bottom, x_shape[3] + left + right), values.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += values[..., i, j]
    return dxp[:, :, top:dxp.shape[2] - bottom, left:dxp.shape[3] - right]


# --- ops with parameters ---------------------------------------------------------------------------------

def _grouped(attrs, win, w):
    """Windows (N, G, C/G, oh, ow, kh, kw) and weight (G, O/G, C/G, kh, kw) of `group` groups."""
    group = attrs.get("group", 1)
    return (win.reshape(win.shape[0], group, -1, *win.shape[2:]),
            w.reshape(group, -1, *w.shape[1:]))


def _conv_forward(attrs, params, xs):
    win = _windows(_pad(xs[0], attrs["pads"]), attrs)
    gwin, gw = _grouped(attrs, win, params["weight"])
    y = np.einsum("ngchwij,gocij->ngohw", gwin, gw, optimize=True)
    return y.reshape(len(y), -1, *y.shape[3:]) + params["bias"][None, :, None, None], win


def _conv_backward(attrs, params, xs, y, win, g):
    gwin, gw = _grouped(attrs, win, params["weight"])
    gg = g.reshape(len(g), gw.shape[0], gw.shape[1], *g.shape[2:])
    dw = np.einsum("ngchwij,ngohw->gocij", gwin, gg, optimize=True)
    spread = np.einsum("ngohw,gocij->ngchwij", gg, gw, optimize=True)
    dparams = {"weight": dw.reshape(params["weight"].shape), "bias": g.sum(axis=(0, 2, 3))}
    return [_scatter_windows(xs[0].shape, spread.reshape(win.shape), attrs)], dparams


def _mac_flops(macs: int, outputs: int, input_grad: bool) -> tuple:
    return 2 * macs + outputs, (4 if input_grad else 2) * macs + outputs


register(Op(
    "conv", ("Conv",), _conv_forward, _conv_backward,
    flops=lambda a, ins, out, input_grad: _mac_flops(
        math.prod(out) * ins[0][0] // a.get("group", 1) * math.prod(a["kernel"]), math.prod(out), input_grad),
    shape=lambda a, ins: window_shape(a["filters"], a, ins[0]),
    params=(Param("weight", "(out, in, kh, kw), cross-correlation", "glorot_uniform", _conv_fans),
            Param("bias", "(out,)")),
    doc="2-D convolution; attrs filters, kernel, strides, pads, group (default 1; depthwise: the input's channels), "
        "dilations (default (1, 1))"))


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
    win = _windows(_pad(xs[0], attrs["pads"], -np.inf), attrs)
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
    ones = _windows(_pad(np.ones((1, 1, *x_shape[2:])), attrs["pads"]), attrs)
    return ones.sum(axis=(-1, -2))[0, 0]


def _avgpool_forward(attrs, params, xs):
    win = _windows(_pad(xs[0], attrs["pads"]), attrs)
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
            doc="max pooling, pads count as -inf; attrs kernel, strides, pads, dilations (default (1, 1))"))
register(Op("avgpool", ("AveragePool",), _avgpool_forward, _avgpool_backward, _pool_flops(1),
            shape=lambda a, ins: window_shape(ins[0][0], a, ins[0]),
            doc="average pooling; attrs kernel, strides, pads, count_include_pad"))


# --- shape and elementwise ops ---------------------------------------------------------------------------

def _per_element(n: int):
    return lambda a, ins, out, input_grad: (n * math.prod(out), n * math.prod(out))


def elementwise(kind: str, onnx: tuple, f: Callable, df: Callable, flops_per_element: int, doc: str,
                attrs: dict | None = None) -> Op:
    """An op y = f(x, attrs) applied element by element; df(x, y, attrs) is dy/dx. `attrs`: the ONNX attributes
    it reads, with their defaults."""
    return register(Op(kind, onnx, lambda a, p, xs: (f(xs[0], a), None),
                       lambda a, p, xs, y, cache, g: ([g * df(xs[0], y, a)], {}),
                       _per_element(flops_per_element), doc=doc, attrs=dict(attrs or {})))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _step(condition, x):
    return condition.astype(x.dtype)


elementwise("relu", ("Relu",), lambda x, a: np.maximum(x, 0.0), lambda x, y, a: _step(x > 0, x), 1, "max(x, 0)")
elementwise("tanh", ("Tanh",), lambda x, a: np.tanh(x), lambda x, y, a: 1.0 - y * y, 4, "hyperbolic tangent")
elementwise("sigmoid", ("Sigmoid",), lambda x, a: _sigmoid(x), lambda x, y, a: y * (1.0 - y), 4, "1 / (1 + exp(-x))")
elementwise("leakyrelu", ("LeakyRelu",), lambda x, a: np.where(x > 0, x, a["alpha"] * x),
            lambda x, y, a: np.where(x > 0, 1.0, a["alpha"]), 2, "x if x > 0 else alpha * x",
            {"alpha": 0.01})
elementwise("elu", ("Elu",), lambda x, a: np.where(x > 0, x, a["alpha"] * np.expm1(np.minimum(x, 0.0))),
            lambda x, y, a: np.where(x > 0, 1.0, a["alpha"] * np.exp(np.minimum(x, 0.0))), 4,
            "x if x > 0 else alpha * (exp(x) - 1)", {"alpha": 1.0})
elementwise("selu", ("Selu",),
            lambda x, a: a["gamma"] * np.where(x > 0, x, a["alpha"] * np.expm1(np.minimum(x, 0.0))),
            lambda x, y, a: a["gamma"] * np.where(x > 0, 1.0, a["alpha"] * np.exp(np.minimum(x, 0.0))), 5,
            "gamma * (x if x > 0 else alpha * (exp(x) - 1))",
            {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875})
elementwise("softplus", ("Softplus",), lambda x, a: np.logaddexp(0.0, x), lambda x, y, a: _sigmoid(x), 4,
            "log(1 + exp(x))")
elementwise("hardsigmoid", ("HardSigmoid",), lambda x, a: np.clip(a["alpha"] * x + a["beta"], 0.0, 1.0),
            lambda x, y, a: a["alpha"] * _step((a["alpha"] * x + a["beta"] > 0) & (a["alpha"] * x + a["beta"] < 1), x),
            3, "max(0, min(1, alpha * x + beta))", {"alpha": 0.2, "beta": 0.5})
elementwise("hardswish", ("HardSwish",), lambda x, a: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
            lambda x, y, a: np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, x / 3.0 + 0.5)), 4,
            "x * max(0, min(1, x / 6 + 1/2))")
elementwise("clip", (), lambda x, a: np.clip(x, a["min"], a["max"]),
            lambda x, y, a: _step((x > a["min"]) & (x < a["max"]), x), 2,
            "min(max(x, min), max); attrs min, max (ReLU6: 0, 6); from ONNX Clip")
# dropout is the identity in the reference: steps are compared with dropout off or with harness masks
elementwise("dropout", (), lambda x, a: x, lambda x, y, a: np.ones_like(x), 0,
            "dropout; attrs rate (identity at inference)")


def _axis(attrs) -> int:
    return attrs.get("axis", 1)


def _softmax_forward(attrs, params, xs):
    e = np.exp(xs[0] - xs[0].max(axis=_axis(attrs), keepdims=True))
    return e / e.sum(axis=_axis(attrs), keepdims=True), None


def _softmax_backward(attrs, params, xs, p, cache, g):
    return [p * (g - (g * p).sum(axis=_axis(attrs), keepdims=True))], {}


register(Op("softmax", ("Softmax",), _softmax_forward, _softmax_backward, _per_element(5),
            doc="softmax over the class axis of an [N, F] tensor, or over one axis of an NCHW map; attrs axis "
                "(default 1: the features or channels)"))
def _flatten_forward(attrs, params, xs):
    x = xs[0].transpose(0, 2, 3, 1) if attrs.get("order", "CHW") == "HWC" else xs[0]
    return x.reshape(len(x), -1), None


def _flatten_backward(attrs, params, xs, y, cache, g):
    if attrs.get("order", "CHW") == "HWC":
        n, c, h, w = xs[0].shape
        return [g.reshape(n, h, w, c).transpose(0, 3, 1, 2)], {}
    return [g.reshape(xs[0].shape)], {}


register(Op("flatten", ("Flatten",), _flatten_forward, _flatten_backward, _per_element(0),
            shape=lambda a, ins: (math.prod(ins[0]),),
            doc="[N, C, H, W] -> [N, C*H*W] in (C, H, W) order; attrs order: HWC flattens in (H, W, C) order (a "
                "Keras model's Flatten as tf2onnx writes it: Transpose to NHWC, then Reshape)"))


def _log_softmax_forward(attrs, params, xs):
    shifted = xs[0] - xs[0].max(axis=_axis(attrs), keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=_axis(attrs), keepdims=True)), None


def _log_softmax_backward(attrs, params, xs, y, cache, g):
    return [g - np.exp(y) * g.sum(axis=_axis(attrs), keepdims=True)], {}


register(Op("logsoftmax", ("LogSoftmax",), _log_softmax_forward, _log_softmax_backward, _per_element(5),
            doc="log of softmax (a model ending in log-probabilities); attrs axis as softmax's"))


# --- graph ops: several inputs ---------------------------------------------------------------------------

def _same_shapes(attrs, in_shapes):
    if any(tuple(s) != tuple(in_shapes[0]) for s in in_shapes):
        raise ValueError(f"inputs of different shapes {[tuple(s) for s in in_shapes]}")
    return tuple(in_shapes[0])


register(Op("add", ("Add", "Sum"), lambda a, p, xs: (sum(xs[1:], xs[0]), None),
            lambda a, p, xs, y, cache, g: ([g] * len(xs), {}),
            lambda a, ins, out, input_grad: ((len(ins) - 1) * math.prod(out), 0),
            shape=_same_shapes, arity=None,
            doc="elementwise sum of tensors of one shape (a residual connection)"))


def _mul_shape(attrs, in_shapes):
    first, second = (tuple(s) for s in in_shapes)
    if second != first and second != (first[0],) + (1,) * (len(first) - 1):
        raise ValueError(f"inputs of shapes {first} and {second}: only equal shapes, or a second input of one value "
                         f"per channel (C, 1, 1), are supported")
    return first


def _mul_backward(attrs, params, xs, y, cache, g):
    a, b = xs
    db = g * a
    if b.shape != a.shape:  # one value per channel and image: sum over the positions it was broadcast to
        db = db.sum(axis=tuple(range(2, a.ndim)), keepdims=True)
    return [g * b, db], {}


register(Op("mul", (), lambda a, p, xs: (xs[0] * xs[1], None), _mul_backward, _per_element(1), shape=_mul_shape,
            arity=2,
            doc="elementwise product of two computed tensors (swish: x * sigmoid(x)); the second may hold one value "
                "per channel of each image, (C, 1, 1), broadcast over H and W (a squeeze-and-excitation gate)"))


def _concat_shape(attrs, in_shapes):
    rest = {tuple(s[1:]) for s in in_shapes}
    if len(rest) != 1:
        raise ValueError(f"inputs {[tuple(s) for s in in_shapes]} differ in more than the channel axis")
    return (sum(s[0] for s in in_shapes), *in_shapes[0][1:])


def _concat_backward(attrs, params, xs, y, cache, g):
    cuts = np.cumsum([x.shape[1] for x in xs])[:-1]
    return list(np.split(g, cuts, axis=1)), {}


register(Op("concat", ("Concat",), lambda a, p, xs: (np.concatenate(xs, axis=1), None), _concat_backward,
            lambda a, ins, out, input_grad: (0, 0), shape=_concat_shape, arity=None,
            doc="concatenation on the channel (or feature) axis, in input order"))


def _global_pool_shape(attrs, in_shapes):
    return (in_shapes[0][0], 1, 1) if attrs.get("keepdims", True) else (in_shapes[0][0],)


def _global_pool_backward(attrs, params, xs, y, cache, g):
    n, c, h, w = xs[0].shape
    return [np.broadcast_to(g.reshape(n, c, 1, 1) / (h * w), xs[0].shape).copy()], {}


register(Op("globalavgpool", ("GlobalAveragePool",),
            lambda a, p, xs: (xs[0].mean(axis=(2, 3), keepdims=a.get("keepdims", True)), None),
            _global_pool_backward, lambda a, ins, out, input_grad: (math.prod(ins[0]), math.prod(ins[0])),
            shape=_global_pool_shape,
            doc="mean over H and W: [N, C, H, W] -> [N, C, 1, 1] (keepdims, GlobalAveragePool) or [N, C] "
                "(ReduceMean over (2, 3) with keepdims=0); attrs keepdims"))


def _channel(v):
    return v[None, :, None, None]


def _batchnorm_forward(attrs, params, xs):
    """Inference form: the running statistics. Training form (attrs["training"]): the batch's mean and biased
    variance over N, H, W, as ONNX's BatchNormalization with training_mode=1."""
    x = xs[0]
    if attrs.get("training"):
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    else:
        mean, var = params["mean"], params["var"]
    inv = 1.0 / np.sqrt(var + attrs["epsilon"])
    xhat = (x - _channel(mean)) * _channel(inv)
    return xhat * _channel(params["scale"]) + _channel(params["bias"]), (xhat, inv, mean, var)


def _batchnorm_backward(attrs, params, xs, y, cache, g):
    """Inference form: the statistics are constants (the running ones get their gradient, which no optimizer
    applies). Training form: the gradient also flows through the batch's mean and variance."""
    xhat, inv = cache[:2]
    axes = (0, 2, 3)
    dxhat = g * _channel(params["scale"])
    grads = {"scale": (g * xhat).sum(axis=axes), "bias": g.sum(axis=axes)}
    if attrs.get("training"):
        dx = _channel(inv) * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                              - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
        return [dx], {**grads, "mean": np.zeros_like(params["mean"]), "var": np.zeros_like(params["var"])}
    return [dxhat * _channel(inv)], {**grads, "mean": -(dxhat.sum(axis=axes)) * inv,
                                     "var": -0.5 * (dxhat * xhat).sum(axis=axes) * inv * inv}


RUNNING_VARIANCE = {  # what moves the running variance: f(batch's biased variance, values per channel n, epsilon)
    "biased": lambda var, n, eps: var,  # ONNX
    "unbiased": lambda var, n, eps: var * (n / (n - 1)),  # Bessel's correction: PyTorch
    "keras2": lambda var, n, eps: (var + eps) * (n / (n - 1 - eps)),  # Keras 2.3.1 on Theano: 1/invstd^2, rescaled
}


def _batchnorm_state(attrs, params, xs, cache):
    """The running statistics after a training step: momentum * running + (1 - momentum) * the batch's, ONNX's
    momentum. The variance's batch term is the biased variance (ONNX), or as attrs running_variance names
    (RUNNING_VARIANCE: a library's native estimator)."""
    m, (mean, var) = attrs["momentum"], cache[2:]
    n = xs[0].size // xs[0].shape[1]
    var = RUNNING_VARIANCE[attrs.get("running_variance", "biased")](var, n, attrs["epsilon"])
    return {"mean": m * params["mean"] + (1 - m) * mean, "var": m * params["var"] + (1 - m) * var}


register(Op("batchnorm", ("BatchNormalization",), _batchnorm_forward, _batchnorm_backward,
            lambda a, ins, out, input_grad: (2 * math.prod(out), 4 * math.prod(out)),
            params=(Param("scale", "(C,)", "ones"), Param("bias", "(C,)"), Param("mean", "(C,) running mean", trainable=False),
                    Param("var", "(C,) running variance", "ones", trainable=False)),
            state=_batchnorm_state,
            doc="batch normalisation over the channel axis of NCHW: (x - mean) / sqrt(var + epsilon) * scale + bias, "
                "with the running mean and variance (inference) or the batch's mean and biased variance (attrs "
                "training, then the running ones move: running = momentum * running + (1 - momentum) * batch, "
                "ONNX's momentum); attrs epsilon, momentum, and running_variance (not ONNX's: a library's native "
                "estimator, RUNNING_VARIANCE; default biased)"))


# --- channel ops: LRN, constant scale and shift, channel shuffle -----------------------------------------

def _lrn_window(size: int) -> tuple:
    """Channels (below, above) a position's window reaches, as ONNX defines it."""
    return (size - 1) // 2, size - 1 - (size - 1) // 2


def _channel_window_sum(v, below: int, above: int):
    padded = np.pad(v, ((0, 0), (below, above), (0, 0), (0, 0)))
    return sliding_window_view(padded, below + above + 1, axis=1).sum(axis=-1)


def _lrn_forward(attrs, params, xs):
    x, size = xs[0], attrs["size"]
    d = attrs["bias"] + attrs["alpha"] / size * _channel_window_sum(x * x, *_lrn_window(size))
    return x * d ** -attrs["beta"], d


def _lrn_backward(attrs, params, xs, y, d, g):
    x, size, beta = xs[0], attrs["size"], attrs["beta"]
    t = g * x * (-beta) * d ** (-beta - 1) * (2 * attrs["alpha"] / size)
    below, above = _lrn_window(size)
    return [g * d ** -beta + x * _channel_window_sum(t, above, below)], {}  # the windows that contain each channel


register(Op("lrn", ("LRN",), _lrn_forward, _lrn_backward,
            lambda a, ins, out, input_grad: ((a["size"] + 5) * math.prod(out), 2 * (a["size"] + 5) * math.prod(out)),
            doc="local response normalisation across channels, ONNX's: x / (bias + alpha / size * sum of x^2 over "
                "`size` channels)^beta (TensorFlow's local_response_normalization does not divide alpha by size); "
                "attrs size, alpha, beta, bias"))


def _reduce_to(v, shape):
    """Sum v (N, ...) over the batch and the axes `shape` (no batch axis) broadcasts along."""
    v = v.sum(axis=0)
    return v.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True).reshape(shape)


register(Op("scale", (), lambda a, p, xs: (xs[0] * p["value"], None),
            lambda a, p, xs, y, cache, g: ([g * p["value"]], {"value": _reduce_to(g * xs[0], p["value"].shape)}),
            _per_element(1),
            params=(Param("value", "the input's rank without the batch axis, broadcasting: (C, 1, 1) per channel", "ones"),),
            doc="multiplication by a constant tensor (ONNX Mul by an initializer; Div by one is a scale by its "
                "reciprocal)"))
register(Op("shift", (), lambda a, p, xs: (xs[0] + p["value"], None),
            lambda a, p, xs, y, cache, g: ([g], {"value": _reduce_to(g, p["value"].shape)}),
            _per_element(1),
            params=(Param("value", "the input's rank without the batch axis, broadcasting: (C, 1, 1) per channel"),),
            doc="addition of a constant tensor (ONNX Add of an initializer; Sub of one is a shift by its negation)"))


def _shuffle(x, groups):
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


register(Op("channelshuffle", (), lambda a, p, xs: (_shuffle(xs[0], a["groups"]), None),
            lambda a, p, xs, y, cache, g: ([_shuffle(g, g.shape[1] // a["groups"])], {}), _per_element(0),
            doc="ShuffleNet's channel shuffle: channels viewed as (groups, C/groups), transposed, flattened "
                "(ONNX Reshape, Transpose, Reshape); attrs groups"))


# --- padding, transposed convolution, PReLU, instance norm, depth to space, unsqueeze ----------------------

PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge"}  # ONNX mode -> numpy.pad mode


def _pad_sources(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each padded position along one axis, the input index it copies; -1 where it holds the constant."""
    index = np.arange(size)
    if mode == "constant":
        return np.pad(index, (before, after), constant_values=-1)
    return np.pad(index, (before, after), mode=PAD_MODES[mode])


def _pad_forward(attrs, params, xs):
    top, left, bottom, right = attrs["pads"]
    rows = _pad_sources(xs[0].shape[2], top, bottom, attrs["mode"])
    cols = _pad_sources(xs[0].shape[3], left, right, attrs["mode"])
    y = xs[0][:, :, np.maximum(rows, 0)][:, :, :, np.maximum(cols, 0)]
    outside = (rows < 0)[:, None] | (cols < 0)[None, :]
    return np.where(outside, attrs.get("value", 0.0), y), (rows, cols, outside)


def _pad_backward(attrs, params, xs, y, cache, g):
    rows, cols, outside = cache
    dx = np.zeros_like(xs[0])
    g = np.where(outside, 0.0, g)
    r, c = np.meshgrid(np.maximum(rows, 0), np.maximum(cols, 0), indexing="ij")
    np.add.at(dx, (slice(None), slice(None), r, c), g)  # reflected and repeated edges collect every copy's gradient
    return [dx], {}


register(Op("pad", ("Pad",), _pad_forward, _pad_backward, _per_element(0),
            shape=lambda a, ins: (ins[0][0], ins[0][1] + a["pads"][0] + a["pads"][2],
                                  ins[0][2] + a["pads"][1] + a["pads"][3]),
            doc="padding of H and W; attrs pads (top, left, bottom, right), mode constant | reflect | edge "
                "(ONNX's: reflect mirrors without repeating the border, edge repeats it), value (constant mode)"))


def _convtranspose_shape(attrs, in_shapes):
    (kh, kw), (sh, sw), (oph, opw) = effective_kernel(attrs), attrs["strides"], attrs.get("output_padding", (0, 0))
    top, left, bottom, right = attrs["pads"]
    _, h, w = in_shapes[0]
    return (attrs["filters"], sh * (h - 1) + oph + kh - top - bottom, sw * (w - 1) + opw + kw - left - right)


def _convtranspose_forward(attrs, params, xs):
    """The input gradient of the convolution with the same weight, kernel, strides, pads and dilations."""
    x, w = xs[0], params["weight"]
    out = _convtranspose_shape(attrs, [x.shape[1:]])
    spread = np.einsum("nchw,coij->nohwij", x, w, optimize=True)
    y = _scatter_windows((len(x), *out), spread, attrs)
    return y + params["bias"][None, :, None, None], None


def _convtranspose_backward(attrs, params, xs, y, cache, g):
    win = _windows(_pad(g, attrs["pads"]), attrs)[:, :, :xs[0].shape[2], :xs[0].shape[3]]
    return [np.einsum("nohwij,coij->nchw", win, params["weight"], optimize=True)], {
        "weight": np.einsum("nchw,nohwij->coij", xs[0], win, optimize=True), "bias": g.sum(axis=(0, 2, 3))}


def _convtranspose_fans(shape):
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


register(Op(
    "convtranspose", ("ConvTranspose",), _convtranspose_forward, _convtranspose_backward,
    flops=lambda a, ins, out, input_grad: _mac_flops(
        math.prod(ins[0]) * a["filters"] * math.prod(a["kernel"]), math.prod(out), input_grad),
    shape=_convtranspose_shape,
    params=(Param("weight", "(in, out, kh, kw): the weight of the convolution it transposes", "glorot_uniform",
                  _convtranspose_fans),
            Param("bias", "(out,)")),
    doc="transposed 2-D convolution (the input gradient of a convolution); attrs filters, kernel, strides, pads "
        "(cropped from the full output), output_padding (rows and columns added at the bottom and right, default "
        "(0, 0)), dilations (default (1, 1))"))


def _prelu_forward(attrs, params, xs):
    return np.where(xs[0] > 0, xs[0], params["slope"] * xs[0]), None


def _prelu_backward(attrs, params, xs, y, cache, g):
    x, slope = xs[0], params["slope"]
    return [np.where(x > 0, g, slope * g)], {"slope": _reduce_to(np.where(x > 0, 0.0, g * x), slope.shape)}


register(Op("prelu", ("PRelu",), _prelu_forward, _prelu_backward, _per_element(2),
            params=(Param("slope", "the input's rank without the batch axis: (C, 1, 1) per channel or (1, 1, 1) "
                                   "shared ((F,) or (1,) after a flatten)", "zeros"),),
            doc="x if x > 0 else slope * x, with a learned slope per channel or one shared"))


def _instancenorm_forward(attrs, params, xs):
    x = xs[0]
    mean = x.mean(axis=(2, 3), keepdims=True)
    inv = 1.0 / np.sqrt(x.var(axis=(2, 3), keepdims=True) + attrs["epsilon"])
    xhat = (x - mean) * inv
    return xhat * _channel(params["scale"]) + _channel(params["bias"]), (xhat, inv)


def _instancenorm_backward(attrs, params, xs, y, cache, g):
    xhat, inv = cache
    dxhat = g * _channel(params["scale"])
    dx = inv * (dxhat - dxhat.mean(axis=(2, 3), keepdims=True) - xhat * (dxhat * xhat).mean(axis=(2, 3), keepdims=True))
    return [dx], {"scale": (g * xhat).sum(axis=(0, 2, 3)), "bias": g.sum(axis=(0, 2, 3))}


register(Op("instancenorm", ("InstanceNormalization",), _instancenorm_forward, _instancenorm_backward,
            lambda a, ins, out, input_grad: (6 * math.prod(out), 10 * math.prod(out)),
            params=(Param("scale", "(C,)", "ones"), Param("bias", "(C,)")),
            attrs={"epsilon": 1e-5},
            doc="instance normalisation: each image's channel normalised by its own mean and (biased) variance over "
                "H and W, then scale and bias per channel; attrs epsilon"))


def _depth_to_space(x, block: int, mode: str):
    n, c, h, w = x.shape
    if mode == "DCR":
        v = x.reshape(n, block, block, c // block**2, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        v = x.reshape(n, c // block**2, block, block, h, w).transpose(0, 1, 4, 2, 5, 3)
    return v.reshape(n, c // block**2, h * block, w * block)


def _space_to_depth(g, block: int, mode: str):
    n, c, h, w = g.shape
    v = g.reshape(n, c, h // block, block, w // block, block)
    v = v.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else v.transpose(0, 1, 3, 5, 2, 4)
    return v.reshape(n, c * block**2, h // block, w // block)


register(Op("depthtospace", ("DepthToSpace",),
            lambda a, p, xs: (_depth_to_space(xs[0], a["blocksize"], a["mode"]), None),
            lambda a, p, xs, y, cache, g: ([_space_to_depth(g, a["blocksize"], a["mode"])], {}), _per_element(0),
            shape=lambda a, ins: (ins[0][0] // a["blocksize"] ** 2, ins[0][1] * a["blocksize"],
                                  ins[0][2] * a["blocksize"]),
            attrs={"blocksize": None, "mode": "DCR"},
            doc="channels moved into blocksize x blocksize spatial blocks; attrs blocksize, mode DCR (ONNX's default: "
                "channel index (i, j, c)) or CRD (PyTorch's PixelShuffle: (c, i, j))"))
register(Op("unsqueeze", (), lambda a, p, xs: (xs[0].reshape(*xs[0].shape, 1, 1), None),
            lambda a, p, xs, y, cache, g: ([g.reshape(xs[0].shape)], {}), _per_element(0),
            shape=lambda a, ins: (ins[0][0], 1, 1),
            doc="[N, F] -> [N, F, 1, 1] (ONNX Reshape or Unsqueeze to a 1x1 map; Flatten is the way back)"))


# --- reductions over any of C, H, W; tiling -----------------------------------------------------------------

def reduced_map(attrs, in_shape) -> tuple:
    """The (C, H, W) shape a reduction leaves with its reduced axes (ONNX axes 1..3) kept as 1."""
    return tuple(1 if k + 1 in attrs["axes"] else d for k, d in enumerate(in_shape))


def _reduce_shape(attrs, in_shapes):
    """keepdims, or more than one axis left: the (C, H, W) map with 1 on the reduced axes (the dropped axes of
    keepdims=0 are of size 1 there, so the order of the values is ONNX's); one axis or none left: a vector."""
    kept = reduced_map(attrs, in_shapes[0])
    left = [d for k, d in enumerate(in_shapes[0]) if k + 1 not in attrs["axes"]]
    return kept if attrs.get("keepdims", True) or len(left) > 1 else (math.prod(left),)


def _reduce_forward(attrs, params, xs):
    axes, x = tuple(attrs["axes"]), xs[0]
    y = x.sum(axis=axes) if attrs["mode"] == "sum" else x.mean(axis=axes)
    return y.reshape(len(x), *_reduce_shape(attrs, [x.shape[1:]])), None


def _reduce_backward(attrs, params, xs, y, cache, g):
    x = xs[0]
    g = g.reshape(len(x), *reduced_map(attrs, x.shape[1:]))
    count = 1 if attrs["mode"] == "sum" else math.prod(x.shape[a] for a in attrs["axes"])
    return [np.broadcast_to(g / count, x.shape).copy()], {}


register(Op("reduce", (), _reduce_forward, _reduce_backward,
            lambda a, ins, out, input_grad: (math.prod(ins[0]), math.prod(ins[0])),
            shape=_reduce_shape,
            doc="sum or mean over some of C, H and W (ONNX ReduceSum, ReduceMean); attrs mode sum | mean, axes (ONNX "
                "axes of NCHW, from 1 to 3), keepdims"))


def _tile_backward(attrs, params, xs, y, cache, g):
    n, c, h, w = xs[0].shape
    rc, rh, rw = attrs["repeats"]
    return [g.reshape(n, rc, c, rh, h, rw, w).sum(axis=(1, 3, 5))], {}


register(Op("tile", (), lambda a, p, xs: (np.tile(xs[0], (1, *a["repeats"])), None), _tile_backward,
            _per_element(0),
            shape=lambda a, ins: tuple(d * r for d, r in zip(ins[0], a["repeats"])),
            doc="copies of the map side by side along C, H and W (ONNX Tile with the batch repeated once); attrs "
                "repeats (C, H, W)"))
