"""PyTorch: an nn.Sequential of torch.nn modules, one entry per spec layer, NCHW like the spec.

Fast-path options (builders.FAST_PATHS): channels_last keeps conv weights and inputs in NHWC memory (the
tensors stay logically NCHW); compile runs the forward through torch.compile. `runnable` and `inputs` give
a training loop the model and the batches as the options want them."""
from __future__ import annotations

import os

import numpy as np

from builders import Unsupported, cache_dir, layouts
from spec import ir

NAME = "pytorch"


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """Canonical (in, out) -> nn.Linear's (out, in). PyTorch flattens in (C, H, W) order, so no row permutation."""
    return np.ascontiguousarray(w.T)


def versions(**_options) -> dict:
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


def build(spec: ir.ModelSpec, channels_last: bool = False, compile: bool = False):
    """The nn.Sequential itself, uncompiled even with `compile` (its layers stay indexable; see runnable)."""
    import torch
    import torch.nn as nn
    modules = []
    for i, layer in enumerate(spec.layers):
        weights = None
        if layer.kind in ("conv", "dense"):
            weights = (spec.weight(layer).astype(np.float32), spec.bias(layer).astype(np.float32))
        modules.append(_module(layer, spec.input_shape_of(i), weights, layouts.dense_input_order(spec, i)))
    model = nn.Sequential(*modules).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _compiled(function):
    # TorchInductor's kernels go to the project's cache, not the system temp folder, so warm runs reuse them
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir("torchinductor")))
    import torch
    # one static graph per batch shape (full, last, evaluation), as the TensorFlow trainers trace them
    return torch.compile(function, dynamic=False)


def runnable(model, channels_last: bool = False, compile: bool = False):
    """What a training loop calls: the model, or the model through torch.compile."""
    return _compiled(model) if compile else model


def inputs(x, channels_last: bool = False, compile: bool = False):
    """A batch (torch tensor, NCHW) in the memory format the options want."""
    import torch
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def layer_outputs(model, spec: ir.ModelSpec, x: np.ndarray, **options) -> dict:
    import torch
    model.eval()

    def every_layer(h):
        outputs = []
        for module in model:
            h = module(h)
            outputs.append(h)
        return outputs

    # compiled, the whole forward is one graph that also returns every intermediate output
    forward = _compiled(every_layer) if options.get("compile") else every_layer
    with torch.no_grad():
        ys = forward(inputs(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), **options))
    return {layer.name: y.contiguous().numpy().copy() for layer, y in zip(spec.layers, ys)}
