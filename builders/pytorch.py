"""PyTorch: an nn.Sequential of torch.nn modules, one entry per spec layer, NCHW like the spec."""
from __future__ import annotations

import numpy as np

from builders import Unsupported, layouts
from spec import ir

NAME = "pytorch"


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """Canonical (in, out) -> nn.Linear's (out, in). PyTorch flattens in (C, H, W) order, so no row permutation."""
    return np.ascontiguousarray(w.T)


def versions() -> dict:
    import torch
    return {"torch": torch.__version__, "numpy": np.__version__}


def _pads(layer, in_shape) -> tuple:
    """(top, left, bottom, right) as the padding mode says: none, TensorFlow's SAME, or the layer's own."""
    a = layer.attrs
    mode = ir.padding_mode(tuple(in_shape[1:]), a["kernel"], a["strides"], a["pads"])
    if mode == "valid":
        return (0, 0, 0, 0)
    if mode == "same":
        return ir.same_pads(tuple(in_shape[1:]), a["kernel"], a["strides"])
    return tuple(a["pads"])


def _symmetric(pads, kernel=None) -> bool:
    """The layer's own `padding=(ph, pw)` can express these pads (pooling also needs pad <= kernel / 2)."""
    top, left, bottom, right = pads
    return top == bottom and left == right and (kernel is None or (2 * top <= kernel[0] and 2 * left <= kernel[1]))


def _padded(pad, module):
    import torch.nn as nn
    return module if pad is None else nn.Sequential(pad, module)


def _module(layer, in_shape, weights, flatten_from):
    import torch
    import torch.nn as nn
    a, kind = layer.attrs, layer.kind
    if kind == "conv":
        w, b = weights
        top, left, bottom, right = pads = _pads(layer, in_shape)
        symmetric = _symmetric(pads)
        conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(a["kernel"]), stride=tuple(a["strides"]),
                         padding=(top, left) if symmetric else 0)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b))
        return _padded(None if symmetric else nn.ZeroPad2d((left, right, top, bottom)), conv)
    if kind in ("maxpool", "avgpool"):
        kernel, strides = tuple(a["kernel"]), tuple(a["strides"])
        top, left, bottom, right = pads = _pads(layer, in_shape)
        native = _symmetric(pads, kernel)
        padding = (top, left) if native else 0
        if kind == "maxpool":
            # torch's own padding is -inf; the explicit pad must be too, else zeros would win over negatives
            pad = None if native else nn.ConstantPad2d((left, right, top, bottom), float("-inf"))
            return _padded(pad, nn.MaxPool2d(kernel, strides, padding=padding))
        if a["count_include_pad"]:
            pad = None if native else nn.ZeroPad2d((left, right, top, bottom))
            return _padded(pad, nn.AvgPool2d(kernel, strides, padding=padding, count_include_pad=True))
        if not native:
            raise Unsupported(f"{layer.name}: nn.AvgPool2d excludes padding from the average only for "
                              f"symmetric pads of at most half the kernel, not pads {pads} with kernel {kernel}")
        return nn.AvgPool2d(kernel, strides, padding=padding, count_include_pad=False)
    if kind == "relu":
        return nn.ReLU()
    if kind == "dropout":
        return nn.Dropout(a["rate"])
    if kind == "flatten":
        return nn.Flatten()
    if kind == "dense":
        w, b = weights
        linear = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(dense_kernel(w, flatten_from)))
            linear.bias.copy_(torch.from_numpy(b))
        return linear
    if kind == "softmax":
        return nn.Softmax(dim=-1)
    raise Unsupported(f"{layer.name}: layer kind {kind!r} has no PyTorch module here")


def build(spec: ir.ModelSpec):
    import torch.nn as nn
    modules = []
    for i, layer in enumerate(spec.layers):
        weights = None
        if layer.kind in ("conv", "dense"):
            weights = (spec.weight(layer).astype(np.float32), spec.bias(layer).astype(np.float32))
        modules.append(_module(layer, spec.input_shape_of(i), weights, layouts.dense_input_order(spec, i)))
    return nn.Sequential(*modules).eval()


def layer_outputs(model, spec: ir.ModelSpec, x: np.ndarray) -> dict:
    import torch
    model.eval()
    outputs = {}
    with torch.inference_mode():
        h = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        for layer, module in zip(spec.layers, model):
            h = module(h)
            outputs[layer.name] = h.numpy().copy()
    return outputs
