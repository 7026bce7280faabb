"""PyTorch: a graph module (`Graph`, an nn.Module holding one torch.nn module per node in an nn.ModuleDict,
its forward walking the nodes), NCHW like the spec.

Per op kind one `op_<kind>(spec, node, **options) -> nn.Module`; a node's module takes the node's inputs as
its arguments. Options: channels_last keeps conv weights and inputs in NHWC memory (the tensors stay
logically NCHW); compile runs the forward through torch.compile (fast paths, builders.FAST_PATHS);
dropout_masks="harness" puts a `HarnessDropout` (multiplies by the mask the trainer sets each step) in place
of nn.Dropout. `runnable` and `inputs` give a training loop the model and the batches as the options want."""
from __future__ import annotations

import functools
import os
import re
import sys

import numpy as np

from builders import Unsupported, cache_dir, interface, layouts
from spec import ir, ops
from spec.batchnorm import NativeBatchNorm

NAME = "pytorch"
NATIVE_BATCHNORM = NativeBatchNorm("torch.nn.BatchNorm2d", "momentum=0.1, the new batch's weight; eps=1e-5", 0.9, 1e-5,
                                   "unbiased")

DROPOUT_MASKS = ("library", "harness")


def library():
    import torch
    return torch


def dense_kernel(w: np.ndarray, flatten_from) -> np.ndarray:
    """Canonical (in, out) -> nn.Linear's (out, in). PyTorch flattens in (C, H, W) order, so no row permutation."""
    return np.ascontiguousarray(w.T)


# registry parameter names that differ from the torch module's own: BatchNorm2d's (running mean and variance are
# buffers there, not parameters)
NATIVE_NAMES = {("batchnorm", "scale"): "weight", ("batchnorm", "mean"): "running_mean",
                ("batchnorm", "var"): "running_var", ("prelu", "slope"): "weight", ("instancenorm", "scale"): "weight"}


def native_name(node, param: str) -> str:
    """The attribute of the node's module that holds the registry's parameter `param`."""
    return NATIVE_NAMES.get((node.kind, param), param)


def to_native(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    """Conv weights are canonical already ((O, I/group, kh, kw), cross-correlation, output channel o in group
    o // (O/group), which is nn.Conv2d's grouping), and so are nn.ConvTranspose2d's ((in, out, kh, kw), no kernel
    flip, as ONNX's); nn.Linear holds (out, in); nn.PReLU's weight is flat ((C,) or (1,)) where the registry's
    slope has the input's rank; BatchNorm2d's four and InstanceNorm2d's two are (C,) as in the registry, and a
    scale's or shift's value is NCHW-broadcasting as the registry's."""
    if (node.kind, param) == ("dense", "weight"):
        return dense_kernel(value, layouts.dense_input_order(spec, spec.index_of(node.name)))
    if (node.kind, param) == ("prelu", "slope"):
        return np.ascontiguousarray(value.reshape(-1))
    return np.ascontiguousarray(value)


def to_canonical(spec, node, param: str, value: np.ndarray) -> np.ndarray:
    if (node.kind, param) == ("dense", "weight"):
        return np.ascontiguousarray(value.T)
    if (node.kind, param) == ("prelu", "slope"):
        return np.ascontiguousarray(value.reshape(spec.params(node)["slope"].shape))
    return np.ascontiguousarray(value)


def versions(**_options) -> dict:
    import torch
    return {"torch": torch.__version__, "numpy": np.__version__}


# --- per-op modules --------------------------------------------------------------------------------------

def _pads(node, in_shape) -> tuple:
    """(top, left, bottom, right) as the padding mode says: none, TensorFlow's SAME, or the node's own."""
    a = node.attrs
    mode = ir.padding_mode(tuple(in_shape[1:]), a["kernel"], a["strides"], a["pads"])
    if mode == "valid":
        return (0, 0, 0, 0)
    if mode == "same":
        return ir.same_pads(tuple(in_shape[1:]), a["kernel"], a["strides"])
    return tuple(a["pads"])


def _symmetric(pads, kernel=None) -> bool:
    """The module's own `padding=(ph, pw)` can express these pads (pooling also needs pad <= kernel / 2)."""
    top, left, bottom, right = pads
    return top == bottom and left == right and (kernel is None or (2 * top <= kernel[0] and 2 * left <= kernel[1]))


def _padded(pad, module):
    import torch.nn as nn
    return module if pad is None else nn.Sequential(pad, module)


def _load(module, spec, node) -> None:
    """Copy the node's canonical parameters, in the module's layout, into its parameters of the same names."""
    import torch
    with torch.no_grad():
        for param, value in spec.params(node).items():
            native = to_native(spec, node, param, value.astype(np.float32))
            getattr(module, native_name(node, param)).copy_(torch.from_numpy(native))


def _padded_conv2d(pads):
    """nn.Conv2d that zero-pads (left, right, top, bottom) first: its own padding is symmetric only. A subclass,
    not Sequential(pad, conv), so that the node's parameters keep their names (weight, bias)."""
    import torch.nn as nn
    import torch.nn.functional as F

    class PaddedConv2d(nn.Conv2d):
        def forward(self, x):
            return super().forward(F.pad(x, pads))

    return PaddedConv2d


def op_conv(spec, node, **_options):
    import torch.nn as nn
    a, (in_shape,) = node.attrs, spec.input_shapes(node)
    top, left, bottom, right = pads = _pads(node, in_shape)
    symmetric = _symmetric(pads)
    cls = nn.Conv2d if symmetric else _padded_conv2d((left, right, top, bottom))
    # depthwise (group = input channels, any depth multiplier) is nn.Conv2d with groups, PyTorch's own idiom
    conv = cls(in_shape[0], a["filters"], tuple(a["kernel"]), stride=tuple(a["strides"]),
               padding=(top, left) if symmetric else 0, dilation=ops.dilations(a), groups=a.get("group", 1))
    _load(conv, spec, node)
    return conv


def _pool(node, in_shape):
    """(kernel, strides, pads, whether the module's own padding expresses the pads, (left, right, top, bottom))."""
    kernel, strides = tuple(node.attrs["kernel"]), tuple(node.attrs["strides"])
    top, left, bottom, right = pads = _pads(node, in_shape)
    native = _symmetric(pads, kernel)
    return kernel, strides, pads, native, (left, right, top, bottom)


def op_maxpool(spec, node, **_options):
    import torch.nn as nn
    kernel, strides, pads, native, explicit = _pool(node, spec.input_shapes(node)[0])
    # torch's own padding is -inf; the explicit pad must be too, else zeros would win over negatives
    pad = None if native else nn.ConstantPad2d(explicit, float("-inf"))
    return _padded(pad, nn.MaxPool2d(kernel, strides, padding=pads[:2] if native else 0,
                                     dilation=ops.dilations(node.attrs)))


def op_avgpool(spec, node, **_options):
    import torch.nn as nn
    kernel, strides, pads, native, explicit = _pool(node, spec.input_shapes(node)[0])
    padding = pads[:2] if native else 0
    if node.attrs["count_include_pad"]:
        pad = None if native else nn.ZeroPad2d(explicit)
        return _padded(pad, nn.AvgPool2d(kernel, strides, padding=padding, count_include_pad=True))
    if not native:  # nn.AvgPool2d excludes padding only for symmetric pads of at most half the kernel
        return _excluding_pad_class()(nn.ZeroPad2d(explicit), nn.AvgPool2d(kernel, strides), spec.input_shapes(node)[0])
    return nn.AvgPool2d(kernel, strides, padding=padding, count_include_pad=False)


@functools.cache
def _excluding_pad_class():
    import torch
    import torch.nn as nn

    class AvgExcludingPad(nn.Module):
        """Average pooling that leaves padding out of the count, for any pads: the zero-padded input's window
        average divided by the same average of a padded map of ones (the share of real cells in each window)."""

        def __init__(self, pad, pool, in_shape):
            super().__init__()
            self.pad, self.pool = pad, pool
            self.register_buffer("share", pool(pad(torch.ones(1, 1, *in_shape[1:]))), persistent=False)

        def forward(self, x):
            return self.pool(self.pad(x)) / self.share

    return AvgExcludingPad


def op_relu(spec, node, **_options):
    import torch.nn as nn
    return nn.ReLU()


def op_tanh(spec, node, **_options):
    import torch.nn as nn
    return nn.Tanh()


def op_sigmoid(spec, node, **_options):
    import torch.nn as nn
    return nn.Sigmoid()


def op_leakyrelu(spec, node, **_options):
    import torch.nn as nn
    return nn.LeakyReLU(node.attrs["alpha"])


def op_elu(spec, node, **_options):
    import torch.nn as nn
    return nn.ELU(node.attrs["alpha"])


def _is(value: float, constant: float) -> bool:
    """An ONNX float attribute (float32) is this constant of a torch module, as float32."""
    return np.float32(value) == np.float32(constant)


# the constants nn.SELU and nn.Hardsigmoid are fixed to
SELU_ALPHA, SELU_GAMMA = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


@functools.cache
def _elementwise_class():
    import torch.nn as nn

    class Elementwise(nn.Module):
        """torch functions applied to the input, for an activation whose torch module fixes a constant the node
        sets (SELU's alpha and gamma, Hardsigmoid's slope and offset)."""

        def __init__(self, function, text: str):
            super().__init__()
            self.function, self.text = function, text

        def forward(self, x):
            return self.function(x)

        def extra_repr(self):
            return self.text

    return Elementwise


def op_selu(spec, node, **_options):
    import torch.nn as nn
    import torch.nn.functional as F
    alpha, gamma = node.attrs["alpha"], node.attrs["gamma"]
    if _is(alpha, SELU_ALPHA) and _is(gamma, SELU_GAMMA):
        return nn.SELU()
    return _elementwise_class()(lambda x: gamma * F.elu(x, alpha), f"gamma={gamma} * elu(x, alpha={alpha})")


def op_softplus(spec, node, **_options):
    import torch.nn as nn
    return nn.Softplus()


def op_hardsigmoid(spec, node, **_options):
    import torch
    import torch.nn as nn
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    if _is(alpha, 1 / 6) and _is(beta, 0.5):
        return nn.Hardsigmoid()
    return _elementwise_class()(lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0),
                                f"clamp({alpha} * x + {beta}, 0, 1)")


def op_hardswish(spec, node, **_options):
    import torch.nn as nn
    return nn.Hardswish()


def op_clip(spec, node, **_options):
    import torch
    import torch.nn as nn
    low, high = node.attrs["min"], node.attrs["max"]
    if (low, high) == (0.0, 6.0):
        return nn.ReLU6()
    if low < high:
        return nn.Hardtanh(low, high)
    # nn.Hardtanh refuses min >= max; torch.clamp gives max everywhere then, as ONNX Clip does
    return _elementwise_class()(lambda x: torch.clamp(x, low, high), f"clamp(x, {low}, {high})")


def op_logsoftmax(spec, node, **_options):
    import torch.nn as nn
    return nn.LogSoftmax(dim=node.attrs.get("axis", 1))


def op_batchnorm(spec, node, **_options):
    """nn.BatchNorm2d with ONNX's epsilon; its momentum weighs the new batch, ONNX's the old running value. In eval
    mode (how the graph module is built) the running statistics normalise. In training mode ONNX moves the running
    variance by the batch's biased variance, nn.BatchNorm2d by the unbiased one: `_onnx_batchnorm_class`."""
    a = node.attrs
    channels = spec.input_shapes(node)[0][0]
    if interface.running_variance(node, "biased", "unbiased") == "unbiased":  # native: the stock layer
        import torch.nn as nn
        bn = nn.BatchNorm2d(channels, eps=a["epsilon"], momentum=1.0 - a["momentum"])
    else:
        bn = _onnx_batchnorm_class()(channels, eps=a["epsilon"], momentum=1.0 - a["momentum"])
    _load(bn, spec, node)
    return bn


@functools.cache
def _onnx_batchnorm_class():
    import torch
    import torch.nn as nn

    class OnnxBatchNorm2d(nn.BatchNorm2d):
        """nn.BatchNorm2d whose training mode is ONNX's (training_mode=1): normalised by the batch's mean and
        biased variance, the gradient flowing through both, and the running statistics moved by the biased
        variance (F.batch_norm's own update uses the unbiased one, and it takes no batch statistics that need a
        gradient). Eval mode is nn.BatchNorm2d's."""

        def forward(self, x):
            if not self.training:
                return super().forward(x)
            mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
            def channel(v):
                return v[None, :, None, None]
            return (x - channel(mean)) * channel(torch.rsqrt(var + self.eps) * self.weight) + channel(self.bias)

    return OnnxBatchNorm2d


def op_globalavgpool(spec, node, **_options):
    import torch.nn as nn
    pool = nn.AdaptiveAvgPool2d(1)
    return pool if node.attrs.get("keepdims", True) else nn.Sequential(pool, nn.Flatten())


@functools.cache
def _join_classes():
    import torch
    import torch.nn as nn

    class Sum(nn.Module):
        """The elementwise sum of the node's inputs, left to right (ONNX Add, Sum); torch has no module for it."""

        def forward(self, *xs):
            total = xs[0]
            for x in xs[1:]:
                total = total + x
            return total

    class Concat(nn.Module):
        """torch.cat of the node's inputs on the channel (feature) axis, in input order."""

        def forward(self, *xs):
            return torch.cat(xs, dim=1)

    class Product(nn.Module):
        """The elementwise product of two tensors; a (C, 1, 1) second input broadcasts over H and W."""

        def forward(self, a, b):
            return a * b

    return Sum, Concat, Product


def op_add(spec, node, **_options):
    return _join_classes()[0]()


def op_concat(spec, node, **_options):
    return _join_classes()[1]()


def op_mul(spec, node, **_options):
    return _join_classes()[2]()


@functools.cache
def _lrn_class():
    import torch
    import torch.nn as nn

    class MirroredLocalResponseNorm(nn.LocalResponseNorm):
        """nn.LocalResponseNorm on the channels in reverse order, reversed back. For an even size torch's window
        reaches size // 2 channels below and (size - 1) // 2 above, ONNX's the other way round; on reversed
        channels torch's window is ONNX's."""

        def forward(self, x):
            return torch.flip(super().forward(torch.flip(x, (1,))), (1,))

    return MirroredLocalResponseNorm


def op_lrn(spec, node, **_options):
    """nn.LocalResponseNorm divides alpha by size as ONNX does; its window is ONNX's for odd sizes only."""
    import torch.nn as nn
    a = node.attrs
    cls = nn.LocalResponseNorm if a["size"] % 2 else _lrn_class()
    return cls(a["size"], alpha=a["alpha"], beta=a["beta"], k=a["bias"])


@functools.cache
def _constant_classes():
    import torch
    import torch.nn as nn

    class Scale(nn.Module):
        """x * value, value an nn.Parameter of the registry's shape (broadcasting, no batch axis); torch has no
        module for it."""

        def __init__(self, shape):
            super().__init__()
            self.value = nn.Parameter(torch.ones(shape))

        def forward(self, x):
            return x * self.value

    class Shift(Scale):
        """x + value."""

        def forward(self, x):
            return x + self.value

    return Scale, Shift


def op_scale(spec, node, **_options):
    scale = _constant_classes()[0](spec.params(node)["value"].shape)
    _load(scale, spec, node)
    return scale


def op_shift(spec, node, **_options):
    shift = _constant_classes()[1](spec.params(node)["value"].shape)
    _load(shift, spec, node)
    return shift


def op_channelshuffle(spec, node, **_options):
    import torch.nn as nn
    return nn.ChannelShuffle(node.attrs["groups"])


@functools.cache
def _harness_dropout():
    import torch.nn as nn

    class HarnessDropout(nn.Module):
        """Dropout whose mask the trainer sets before each step (`mask`, the harness's inverted-dropout mask);
        the identity in eval mode, like nn.Dropout."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mask", None, persistent=False)

        def forward(self, x):
            return x * self.mask if self.training else x

    return HarnessDropout


def op_dropout(spec, node, dropout_masks="library", **_options):
    import torch.nn as nn
    if dropout_masks == "harness" and node.attrs.get("rate", 0) > 0:
        return _harness_dropout()()
    return nn.Dropout(node.attrs["rate"])


def op_flatten(spec, node, **_options):
    """nn.Flatten flattens in (C, H, W) order; the HWC order permutes the map to NHWC first."""
    import torch
    import torch.nn as nn
    order = node.attrs.get("order", "CHW")
    if order == "CHW":
        return nn.Flatten()
    if order == "HWC":
        return _elementwise_class()(lambda x: torch.flatten(x.permute(0, 2, 3, 1), 1), "flatten(NHWC permute of x)")
    raise Unsupported(f"{node.name}: flatten order {order!r} is not CHW or HWC")


def op_dense(spec, node, **_options):
    import torch.nn as nn
    (in_shape,) = spec.input_shapes(node)
    linear = nn.Linear(in_shape[0], node.attrs["units"])
    _load(linear, spec, node)
    return linear


def op_softmax(spec, node, **_options):
    """Over the node's axis of the NCHW map or [N, F] tensor: the canonical axis is PyTorch's."""
    import torch.nn as nn
    return nn.Softmax(dim=node.attrs.get("axis", 1))


# --- padding, transposed convolution, PReLU, instance norm, depth to space, unsqueeze -----------------------

def op_pad(spec, node, **_options):
    """ONNX's reflect is nn.ReflectionPad2d (no border repeat), its edge nn.ReplicationPad2d; constant pads the
    node's value (0.0 when absent)."""
    import torch.nn as nn
    top, left, bottom, right = node.attrs["pads"]
    mode, pads = node.attrs["mode"], (left, right, top, bottom)
    if mode == "constant":
        return nn.ConstantPad2d(pads, node.attrs.get("value", 0.0))
    if mode == "reflect":
        return nn.ReflectionPad2d(pads)
    if mode == "edge":
        return nn.ReplicationPad2d(pads)
    raise Unsupported(f"{node.name}: pad mode {mode!r} is not constant, reflect or edge")


@functools.cache
def _cropped_conv_transpose_class():
    import torch.nn as nn

    class CroppedConvTranspose2d(nn.ConvTranspose2d):
        """nn.ConvTranspose2d without padding, its full output (output_padding rows and columns included) cropped
        by (top, left, bottom, right): its own padding crops the same amount on both sides only. A subclass, so
        that the node's parameters keep their names (weight, bias)."""

        def __init__(self, *args, crop, **kwargs):
            super().__init__(*args, **kwargs)
            self.crop = crop

        def forward(self, x):
            top, left, bottom, right = self.crop
            y = super().forward(x)
            return y[:, :, top:y.shape[2] - bottom, left:y.shape[3] - right]

        def extra_repr(self):
            return f"{super().extra_repr()}, crop={self.crop}"

    return CroppedConvTranspose2d


def op_convtranspose(spec, node, **_options):
    """nn.ConvTranspose2d: ONNX's weight layout (in, out, kh, kw), no kernel flip, output_padding at the bottom and
    right, dilations; symmetric pads are its padding, asymmetric ones padding 0 and a crop."""
    import torch.nn as nn
    a, (in_shape,) = node.attrs, spec.input_shapes(node)
    top, left, bottom, right = pads = tuple(a["pads"])
    common = dict(stride=tuple(a["strides"]), output_padding=tuple(a.get("output_padding", (0, 0))),
                  dilation=ops.dilations(a))
    if _symmetric(pads):
        conv = nn.ConvTranspose2d(in_shape[0], a["filters"], tuple(a["kernel"]), padding=(top, left), **common)
    else:
        conv = _cropped_conv_transpose_class()(in_shape[0], a["filters"], tuple(a["kernel"]), padding=0, crop=pads,
                                               **common)
    _load(conv, spec, node)
    return conv


def op_prelu(spec, node, **_options):
    """nn.PReLU: one slope, or one per channel of dim 1 (the channels of a map, the features of [N, F])."""
    import torch.nn as nn
    (in_shape,), slope = spec.input_shapes(node), spec.params(node)["slope"]
    if slope.shape[1:] != (1,) * (len(in_shape) - 1) or slope.shape[0] not in (1, in_shape[0]):
        raise Unsupported(f"{node.name}: nn.PReLU holds one slope or one per channel, not {slope.shape} on "
                          f"{tuple(in_shape)}")
    prelu = nn.PReLU(slope.shape[0])
    _load(prelu, spec, node)
    return prelu


def op_instancenorm(spec, node, **_options):
    """nn.InstanceNorm2d with affine scale and bias and no running statistics: each image's own mean and biased
    variance, as ONNX's."""
    import torch.nn as nn
    norm = nn.InstanceNorm2d(spec.input_shapes(node)[0][0], eps=node.attrs["epsilon"], affine=True,
                             track_running_stats=False)
    _load(norm, spec, node)
    return norm


def op_depthtospace(spec, node, **_options):
    """CRD is nn.PixelShuffle; DCR's channel (i*b + j)*C' + c is CRD's c*b*b + i*b + j after nn.ChannelShuffle
    with b*b groups (channel k*C' + c moves to c*b*b + k)."""
    import torch.nn as nn
    block, mode = node.attrs["blocksize"], node.attrs["mode"]
    if mode == "CRD":
        return nn.PixelShuffle(block)
    if mode == "DCR":
        return nn.Sequential(nn.ChannelShuffle(block * block), nn.PixelShuffle(block))
    raise Unsupported(f"{node.name}: depth-to-space mode {mode!r} is not DCR or CRD")


def op_unsqueeze(spec, node, **_options):
    import torch.nn as nn
    return nn.Unflatten(1, (spec.input_shapes(node)[0][0], 1, 1))


# --- the graph ------------------------------------------------------------------------------------------

def _keys(spec) -> dict:
    """{node name: its key in the ModuleDict}: a module name torch accepts (no '.', not an nn.Module
    attribute), unique."""
    import torch.nn as nn
    keys, taken, probe = {}, set(), nn.ModuleDict()
    for node in spec.layers:
        key = re.sub(r"\W", "_", node.name) or "node"
        while key in taken or hasattr(probe, key):
            key += "_"
        keys[node.name] = key
        taken.add(key)
    return keys


@functools.cache
def _graph_class():
    import torch.nn as nn

    class Graph(nn.Module):
        """One module per node in `nodes` (an nn.ModuleDict); forward walks them in topological order, each
        node's module applied to the outputs of the tensors the node reads."""

        def __init__(self, spec, modules: dict):
            super().__init__()
            self.keys = _keys(spec)
            self.nodes = nn.ModuleDict({self.keys[name]: module for name, module in modules.items()})
            self.input_name = spec.input_name
            self.plan = [(node.name, self.keys[node.name], tuple(node.inputs)) for node in spec.layers]

        def module(self, name: str):
            """The module of node `name`."""
            return self.nodes[self.keys[name]]

        def node_outputs(self, x) -> dict:
            """{node name: its output} for input x, in topological order."""
            values = {self.input_name: x}
            for name, key, reads in self.plan:
                values[name] = self.nodes[key](*(values[t] for t in reads))
            del values[self.input_name]
            return values

        def forward(self, x):
            return self.node_outputs(x)[self.plan[-1][0]]

    return Graph


def build(spec: ir.ModelSpec, channels_last: bool = False, compile: bool = False, dropout_masks: str = "library"):
    """The Graph module itself, uncompiled even with `compile` (its nodes stay reachable; see runnable)."""
    import torch
    if dropout_masks not in DROPOUT_MASKS:
        raise ValueError(f"unknown dropout_masks {dropout_masks!r}; choose from {', '.join(DROPOUT_MASKS)}")
    this = sys.modules[__name__]
    modules = {node.name: interface.op_function(this, node, NAME)(spec, node, dropout_masks=dropout_masks)
               for node in spec.layers}
    model = _graph_class()(spec, modules).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def native_parameters(model, node) -> dict:
    """{param name (the registry's): the tensor holding it} of a node with parameters: an nn.Parameter, or for
    BatchNorm's running statistics the module's buffer."""
    module = model.module(node.name)
    return {param: getattr(module, native_name(node, param)) for param in ops.get(node.kind).param_names}


def _compiled(function):
    # TorchInductor's kernels go to the project's cache, not the system temp folder, so warm runs reuse them
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir("torchinductor")))
    import torch
    # one static graph per batch shape (full, last, evaluation), as the TensorFlow trainers trace them
    return torch.compile(function, dynamic=False)


def runnable(model, compile: bool = False, **_options):
    """What a training loop calls: the model, or the model through torch.compile."""
    return _compiled(model) if compile else model


def inputs(x, channels_last: bool = False, **_options):
    """A batch (torch tensor, NCHW) in the memory format the options want."""
    import torch
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def layer_outputs(model, spec: ir.ModelSpec, x: np.ndarray, **options) -> dict:
    import torch
    model.eval()

    def every_node(h):
        return model.node_outputs(h)

    # compiled, the whole forward is one graph that also returns every intermediate output
    forward = _compiled(every_node) if options.get("compile") else every_node
    with torch.no_grad():
        ys = forward(inputs(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), **options))
    return {node.name: ys[node.name].contiguous().numpy().copy() for node in spec.layers}


@functools.cache
def _reduce_tile_classes():
    import torch.nn as nn

    class Reduce(nn.Module):
        """torch.sum or torch.mean over some of C, H, W, kept as 1; reshaped to the node's shape (a vector when one
        axis or none is left). torch has no module for either."""

        def __init__(self, mode: str, axes: tuple, shape: tuple):
            super().__init__()
            self.mode, self.axes, self.shape = mode, axes, shape

        def forward(self, x):
            y = x.sum(dim=self.axes, keepdim=True) if self.mode == "sum" else x.mean(dim=self.axes, keepdim=True)
            return y.reshape(-1, *self.shape)

    class Tile(nn.Module):
        """Tensor.repeat (numpy's tile) along C, H, W."""

        def __init__(self, repeats: tuple):
            super().__init__()
            self.repeats = repeats

        def forward(self, x):
            return x.repeat(1, *self.repeats)

    return Reduce, Tile


def op_reduce(spec, node, **_options):
    a = node.attrs
    return _reduce_tile_classes()[0](a["mode"], tuple(a["axes"]), tuple(node.output_shape))


def op_tile(spec, node, **_options):
    return _reduce_tile_classes()[1](tuple(node.attrs["repeats"]))
