"""Small CNNs of the supported op set, written by hand with onnx.helper and by torch.onnx.export.

Each writer takes a target path and returns it; weights are seeded so every run writes the same model.
Together they cover: kernel sizes 1/3/5, strides 1/2, symmetric, asymmetric and SAME/VALID auto_pad
padding, max and average pooling (with and without counted padding), Flatten and Reshape,
Gemm with transB 0/1, MatMul followed by Add, Dropout and Tanh; and graphs: residual Add, channel Concat,
BatchNormalization, depthwise and dilated convolution, global average pooling, the common activations, a model
ending in LogSoftmax, the layers of image-to-image models (padding modes, PRelu,
transposed and dilated convolution, instance norm, depth to space), sums and means over chosen axes and Tile,
and an old-opset file whose weights are
computed by ConstantOfShape nodes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto, helper, numpy_helper


class _Graph:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.current, self.n = "x", 0

    def param(self, name, shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        scale = scale or np.sqrt(2.0 / fan_in)
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def add(self, op, extra_inputs=(), **attrs):
        self.n += 1
        name = f"{op.lower()}{self.n}"
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(op, [self.current, *extra_inputs], [out], name=name, **attrs))
        self.current = out
        return name

    def conv(self, c_in, c_out, k, **attrs):
        name = f"conv{self.n + 1}"
        w = self.param(f"{name}.w", (c_out, c_in // attrs.get("group", 1), k, k))
        b = self.param(f"{name}.b", (c_out,), scale=0.1)
        return self.add("Conv", (w, b), kernel_shape=[k, k], **attrs)

    def constant(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def save(self, path: Path, input_shape, opset=17, output_shape=(10,)) -> Path:
        graph = helper.make_graph(
            self.nodes, "zoo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])],
            [helper.make_tensor_value_info(self.current, TensorProto.FLOAT, ["N", *output_shape])],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
        return Path(path)


def strided_cnn(path: Path) -> Path:
    """5x5 stride-2 conv with asymmetric pads, SAME_UPPER max pool, average pool with counted
    padding, 1x1 conv, Reshape-flatten, MatMul+Add, Gemm transB=1."""
    g = _Graph(seed=5)
    g.conv(3, 16, 5, strides=[2, 2], pads=[1, 2, 2, 1])  # 32 -> 16
    g.add("Relu")
    g.add("MaxPool", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")  # 16 -> 8, pads (0,0,1,1)
    g.conv(16, 24, 1)
    g.add("Relu")
    g.add("AveragePool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)
    shape = numpy_helper.from_array(np.array([-1, 24 * 8 * 8], np.int64), "flat_shape")
    g.inits.append(shape)
    g.add("Reshape", ("flat_shape",))
    w = g.param("fc1.w", (24 * 8 * 8, 64))
    b = g.param("fc1.b", (64,), scale=0.1)
    g.n += 1
    g.nodes += [helper.make_node("MatMul", [g.current, w], ["mm"], name="fc1_matmul"),
                helper.make_node("Add", ["mm", b], ["fc1_out"], name="fc1_add")]
    g.current = "fc1_out"
    g.add("Relu")
    g.add("Gemm", (g.param("fc2.w", (10, 64)), g.param("fc2.b", (10,), scale=0.1)), transB=1)
    g.add("Softmax", axis=-1)
    return g.save(path, (3, 32, 32))


def same_pool_cnn(path: Path) -> Path:
    """3x3 convs with SAME_LOWER/VALID auto_pad, stride-2 conv whose TF-'same' padding is
    asymmetric, average pooling that excludes padding, Dropout, Gemm transB=0, on 1x28x28 input."""
    g = _Graph(seed=7)
    g.conv(1, 8, 3, auto_pad="SAME_LOWER")
    g.add("Relu")
    g.conv(8, 8, 3, strides=[2, 2], auto_pad="SAME_UPPER")  # 28 -> 14, pads (0,0,1,1)
    g.add("Relu")
    g.add("AveragePool", kernel_shape=[2, 2], strides=[2, 2], auto_pad="VALID")  # 14 -> 7
    g.add("AveragePool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0)
    ratio = numpy_helper.from_array(np.array(0.5, np.float32), "drop_ratio")
    g.inits.append(ratio)
    g.add("Dropout", ("drop_ratio",))
    g.add("Flatten", axis=1)
    g.add("Gemm", (g.param("fc.w", (8 * 7 * 7, 10)), g.param("fc.b", (10,), scale=0.1)))
    g.add("Softmax", axis=1)
    return g.save(path, (1, 28, 28))


def tanh_cnn(path: Path) -> Path:
    """Tanh activations (negative outputs, so max pooling after them must not pad with zeros), including
    one on the flat vector between two Gemms."""
    g = _Graph(seed=13)
    g.conv(3, 8, 3, pads=[1, 1, 1, 1])
    g.add("Tanh")
    g.add("MaxPool", kernel_shape=[2, 2], strides=[2, 2])  # 32 -> 16
    g.conv(8, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1])  # 16 -> 8
    g.add("Tanh")
    g.add("Flatten", axis=1)
    g.add("Gemm", (g.param("fc1.w", (8 * 8 * 8, 32)), g.param("fc1.b", (32,), scale=0.1)))
    g.add("Tanh")
    g.add("Gemm", (g.param("fc2.w", (32, 10)), g.param("fc2.b", (10,), scale=0.1)))
    g.add("Softmax", axis=-1)
    return g.save(path, (3, 32, 32))


def _torch_cnn():
    import torch
    from torch import nn

    torch.manual_seed(11)
    net = nn.Sequential(
        nn.Conv2d(3, 12, 5, stride=2, padding=2), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.3),
        nn.Conv2d(12, 20, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(20 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10), nn.Softmax(dim=-1))
    return net.eval()


def torch_export(path: Path, dynamo: bool) -> Path:
    """A torch.nn CNN written by torch.onnx.export, with either exporter."""
    import torch

    net = _torch_cnn()
    example = torch.zeros(2, 3, 32, 32)
    kwargs = {"dynamic_axes": {"x": {0: "N"}}} if not dynamo else {"dynamic_shapes": ({0: torch.export.Dim("N")},)}
    torch.onnx.export(net, (example,), str(path), input_names=["x"], dynamo=dynamo, **kwargs)
    return Path(path)


def _blocks_cnn():
    import torch
    from torch import nn

    class Blocks(nn.Module):
        """A residual block, a depthwise separable convolution, two concatenated branches (one dilated), global
        average pooling: the patterns of ResNet, MobileNet and Inception in one small net."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                                     nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
            self.depthwise = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=16), nn.BatchNorm2d(32),
                                           nn.LeakyReLU(0.1), nn.Conv2d(32, 24, 1))
            self.left = nn.Sequential(nn.Conv2d(24, 8, 1), nn.ELU())
            self.right = nn.Sequential(nn.Conv2d(24, 8, 3, padding=2, dilation=2), nn.Sigmoid())
            self.head = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
                                      nn.Softmax(dim=-1))

        def forward(self, x):
            h = self.stem(x)
            h = torch.relu(h + self.res(h))
            h = self.depthwise(h)
            return self.head(torch.cat([self.left(h), self.right(h)], dim=1))

    torch.manual_seed(17)
    net = Blocks()
    with torch.no_grad():  # running statistics that are not the identity, so that BatchNorm's arithmetic shows
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net.eval()


def blocks_export(path: Path, opset: int = 17) -> Path:
    """Residual, depthwise, concat and BatchNorm blocks written by torch.onnx.export (TorchScript exporter)."""
    import torch

    # without constant folding the exporter keeps BatchNormalization nodes (folding merges them into the convs)
    torch.onnx.export(_blocks_cnn(), (torch.zeros(2, 3, 32, 32),), str(path), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "N"}}, opset_version=opset, do_constant_folding=False)
    return Path(path)


def blocks_at_opset(path: Path, opset: int, dynamo: bool) -> Path:
    """The blocks net written by either torch.onnx exporter at `opset` (the TorchScript one keeps BatchNorm nodes)."""
    import torch

    if not dynamo:
        return blocks_export(path, opset)
    torch.onnx.export(_blocks_cnn(), (torch.zeros(2, 3, 32, 32),), str(path), input_names=["x"], dynamo=True,
                      opset_version=opset, dynamic_shapes=({0: torch.export.Dim("N")},))
    return Path(path)


def _keras_cnn():
    """A Keras functional model of the layers tf2onnx users bring: BatchNorm, ReLU6, a residual depthwise block with
    LeakyReLU, two concatenated branches (ELU; dilated + sigmoid), max and 'same' average pooling, swish, then
    Flatten and GlobalAveragePooling2D side by side (both read the NHWC map), Dense layers and softmax."""
    import keras

    keras.utils.set_random_seed(5)
    layers = keras.layers
    x = keras.Input((32, 32, 3), name="x")
    y = layers.ReLU(max_value=6.0)(layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(x)))
    y = layers.Add()([y, layers.LeakyReLU(0.1)(layers.DepthwiseConv2D(3, padding="same")(y))])
    y = layers.Concatenate()([layers.Conv2D(4, 1, activation="elu")(y),
                              layers.Conv2D(4, 3, padding="same", dilation_rate=2, activation="sigmoid")(y)])
    y = layers.AveragePooling2D(2, strides=1, padding="same")(layers.MaxPooling2D()(y))
    y = layers.Conv2D(8, 3, strides=2, padding="same", activation="swish")(y)
    y = layers.Concatenate()([layers.Dense(6, activation="tanh")(layers.Flatten()(y)),
                              layers.GlobalAveragePooling2D()(y)])
    model = keras.Model(x, layers.Dense(10, activation="softmax")(y))
    for layer in model.layers:  # running statistics that are not the identity
        if isinstance(layer, layers.BatchNormalization):
            rng = np.random.default_rng(3)
            layer.moving_mean.assign(rng.uniform(-0.5, 0.5, 8).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype(np.float32))
    return model


TF2ONNX_MAX_OPSET = 18  # the highest opset tf2onnx 1.17, its latest release, writes


def keras_export(path: Path, opset: int = 13) -> Path:
    """The Keras model written by tf2onnx (channels-last input, Transposes to NCHW inserted by the converter). Above
    the opsets tf2onnx writes, tf2onnx's file at its highest opset converted by onnx.version_converter: the closest
    to a Keras model at that opset that a released converter makes."""
    import tensorflow as tf
    import tf2onnx

    model = _keras_cnn()
    signature = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="x"),)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda t: model(t, training=False)),
                                             input_signature=signature, opset=min(opset, TF2ONNX_MAX_OPSET))
    if opset > TF2ONNX_MAX_OPSET:
        proto = onnx.version_converter.convert_version(proto, opset)
    onnx.save(proto, str(path))
    return Path(path)


def keras_file(path: Path) -> Path:
    """The Keras model of keras_export saved as a .keras file (for spec.convert)."""
    _keras_cnn().save(str(path))
    return Path(path)


def keras_lambda_file(path: Path) -> Path:
    """A .keras file whose config holds a Lambda layer: Python code that safe mode must refuse to load."""
    import keras

    x = keras.Input((32, 32, 3), name="x")
    y = keras.layers.Lambda(lambda t: t * 2.0)(x)
    model = keras.Model(x, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(y)))
    model.save(str(path))
    return Path(path)


def saved_model(folder: Path) -> Path:
    """The Keras model of keras_export exported as a TensorFlow SavedModel (model.export; a serving_default
    signature with a dynamic batch)."""
    _keras_cnn().export(str(folder), verbose=False)
    return Path(folder)


def torch_pt2(path: Path, blocks: bool = False) -> Path:
    """The torch.nn CNN of torch_export (or with `blocks` the blocks net, BatchNorm included) as a torch.export
    program with a dynamic batch, saved by torch.export.save."""
    import torch

    program = torch.export.export(_blocks_cnn() if blocks else _torch_cnn(), (torch.zeros(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("N")},))
    torch.export.save(program, str(path))
    return Path(path)


def activations_cnn(path: Path) -> Path:
    """Selu, Softplus, HardSigmoid, HardSwish, Clip (min and max as inputs), Elu after a Gemm; ends in logits
    through LogSoftmax."""
    g = _Graph(seed=19)
    g.conv(3, 8, 3, pads=[1, 1, 1, 1], strides=[2, 2])  # 32 -> 16
    g.add("Selu")
    g.conv(8, 8, 3, pads=[1, 1, 1, 1])
    g.add("Softplus")
    g.add("HardSigmoid", alpha=0.25, beta=0.4)
    g.conv(8, 8, 1)
    g.add("HardSwish")
    g.inits += [numpy_helper.from_array(np.array(-0.5, np.float32), "clip_min"),
                numpy_helper.from_array(np.array(0.75, np.float32), "clip_max")]
    g.add("Clip", ("clip_min", "clip_max"))
    g.add("MaxPool", kernel_shape=[2, 2], strides=[2, 2])  # 16 -> 8
    g.add("Flatten", axis=1)
    g.add("Gemm", (g.param("fc1.w", (8 * 8 * 8, 32)), g.param("fc1.b", (32,), scale=0.1)))
    g.add("Elu", alpha=0.8)
    g.add("Gemm", (g.param("fc2.w", (32, 10)), g.param("fc2.b", (10,), scale=0.1)))
    g.add("LogSoftmax", axis=-1)
    return g.save(path, (3, 32, 32), opset=18)


def graph_cnn(path: Path) -> Path:
    """A hand-written graph (no torch): BatchNormalization, a residual Add, a channel Concat of two branches
    (one grouped and dilated), a channel shuffle, a per-channel Mul and Sub by constants, LRN, GlobalAveragePool."""
    g = _Graph(seed=29)
    g.conv(3, 8, 3, pads=[1, 1, 1, 1], strides=[2, 2])  # 32 -> 16
    stem = g.current
    bn = [numpy_helper.from_array(v.astype(np.float32), f"bn.{k}") for k, v in
          (("s", g.rng.uniform(0.5, 1.5, 8)), ("b", g.rng.uniform(-0.2, 0.2, 8)), ("m", g.rng.uniform(-0.5, 0.5, 8)),
           ("v", g.rng.uniform(0.5, 2.0, 8)))]
    g.inits += bn
    g.add("BatchNormalization", [t.name for t in bn], epsilon=1e-3)
    g.add("Relu")
    g.nodes.append(helper.make_node("Add", [g.current, stem], ["res"], name="residual"))
    g.current = "res"
    g.conv(8, 8, 3, pads=[2, 2, 2, 2], dilations=[2, 2], group=2)
    left = g.current
    g.current = "res"
    g.conv(8, 4, 1)
    g.nodes.append(helper.make_node("Concat", [left, g.current], ["cat"], name="join", axis=1))
    g.current = "cat"
    g.inits += [numpy_helper.from_array(np.array([-1, 3, 4, 16, 16], np.int64), "groups_shape"),
                numpy_helper.from_array(np.array([-1, 12, 16, 16], np.int64), "flat_channels")]
    g.add("Reshape", ("groups_shape",))  # ShuffleNet's channel shuffle, as exporters write it
    g.add("Transpose", perm=[0, 2, 1, 3, 4])
    g.add("Reshape", ("flat_channels",))
    g.inits += [numpy_helper.from_array(g.rng.uniform(0.5, 2, (1, 12, 1, 1)).astype(np.float32), "per_channel"),
                numpy_helper.from_array(np.float32(0.1), "offset")]
    g.add("Mul", ("per_channel",))
    g.add("Sub", ("offset",))
    g.add("LRN", size=3, alpha=1e-3, beta=0.75, bias=1.0)
    g.add("GlobalAveragePool")
    g.add("Flatten", axis=1)
    g.add("Gemm", (g.param("fc.w", (12, 10)), g.param("fc.b", (10,), scale=0.1)))
    g.add("Softmax", axis=-1)
    return g.save(path, (3, 32, 32))


def layers_cnn(path: Path) -> Path:
    """A hand-written chain of the layers image-to-image models use: Pad (reflect, edge, constant 0.5), PRelu (per
    channel and shared), ConvTranspose (output padding; dilated), InstanceNormalization, a squeeze-and-excitation
    gate (GlobalAveragePool, 1x1 Conv, Sigmoid, Mul by the map), DepthToSpace (DCR) and
    PyTorch's pixel shuffle (Reshape-Transpose-Reshape, CRD), Softmax over channels and LogSoftmax over W of a map,
    Squeeze and Unsqueeze; it ends in a softmax over the classes of an [N, 10, 1, 1] map."""
    g = _Graph(seed=31)
    i64 = np.int64
    g.add("Pad", (g.constant("pad1", np.array([0, 0, 1, 2, 0, 0, 2, 1], i64)),), mode="reflect")  # 12 -> 15
    g.conv(3, 8, 3)  # 13
    g.add("PRelu", (g.constant("slope8", g.rng.uniform(0.05, 0.3, (8, 1, 1)).astype(np.float32)),))
    g.add("Pad", (g.constant("pad2", np.array([0, 0, 2, 1, 0, 0, 0, 1], i64)),), mode="edge")  # 15 (2 wide: not symmetric)
    g.add("ConvTranspose", (g.param("up.w", (8, 6, 3, 3)), g.param("up.b", (6,), scale=0.1)), kernel_shape=[3, 3],
          strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])  # 30
    g.add("InstanceNormalization", (g.constant("in.s", g.rng.uniform(0.5, 1.5, 6).astype(np.float32)),
                                    g.constant("in.b", g.rng.uniform(-0.2, 0.2, 6).astype(np.float32))), epsilon=1e-4)
    g.add("PRelu", (g.constant("slope1", np.array([0.2], np.float32)),))
    body = g.current
    g.add("GlobalAveragePool")  # a squeeze-and-excitation gate: one sigmoid per channel and image
    g.conv(6, 6, 1)
    g.add("Sigmoid")
    g.nodes.append(helper.make_node("Mul", [body, g.current], ["excited"], name="excite"))
    g.current = "excited"
    g.conv(6, 16, 3, strides=[2, 2], pads=[1, 1, 1, 1])  # 15
    g.add("DepthToSpace", blocksize=2, mode="DCR")  # 4 x 30 x 30
    g.add("ConvTranspose", (g.param("dil.w", (4, 4, 2, 2)),), kernel_shape=[2, 2], dilations=[2, 2],
          pads=[1, 0, 0, 1])  # 31
    g.add("Pad", (g.constant("pad3", np.array([0, 0, 1, 0, 0, 0, 0, 1], i64)), g.constant("half", np.float32(0.5))),
          mode="constant")  # 32
    g.add("MaxPool", kernel_shape=[2, 2], strides=[2, 2])  # 16
    g.add("Softmax", axis=1)
    g.conv(4, 16, 3, strides=[2, 2])  # 7
    g.add("Reshape", (g.constant("shuffle_in", np.array([-1, 4, 2, 2, 7, 7], i64)),))  # PyTorch's PixelShuffle(2)
    g.add("Transpose", perm=[0, 1, 4, 2, 5, 3])
    g.add("Reshape", (g.constant("shuffle_out", np.array([-1, 4, 14, 14], i64)),))
    g.add("LogSoftmax", axis=3)
    g.add("GlobalAveragePool")
    g.add("Squeeze", (g.constant("hw", np.array([2, 3], i64)),))
    g.add("Gemm", (g.param("fc.w", (4, 10)), g.param("fc.b", (10,), scale=0.1)))
    g.add("Unsqueeze", ("hw",))
    g.add("Softmax", axis=1)
    return g.save(path, (3, 12, 12), output_shape=(10, 1, 1))


def opset9_cnn(path: Path) -> Path:
    """An opset-9 file as old Caffe2 exports are (onnx's own 'light' zoo models): weights computed by
    ConstantOfShape nodes, initializers listed among the graph inputs, IR version 3."""
    g = _Graph(seed=23)
    g.conv(3, 8, 3, pads=[1, 1, 1, 1])
    g.add("Relu")
    g.add("MaxPool", kernel_shape=[2, 2], strides=[2, 2])  # 32 -> 16
    g.add("Flatten", axis=1)
    g.add("Gemm", (g.param("fc.w", (10, 8 * 16 * 16)), g.param("fc.b", (10,), scale=0.1)), transB=1)
    g.add("Softmax", axis=1)
    computed = []
    for init in list(g.inits):  # the bias of the Gemm becomes a constant fill, as in the light models
        if init.name == "fc.b":
            g.inits.remove(init)
            g.inits.append(numpy_helper.from_array(np.array([10], np.int64), "fc.b_shape"))
            computed.append(helper.make_node("ConstantOfShape", ["fc.b_shape"], ["fc.b"], name="fill_fc_b",
                                             value=numpy_helper.from_array(np.array([0.05], np.float32))))
    g.nodes = computed + g.nodes
    graph = helper.make_graph(
        g.nodes, "zoo9", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])] +
        [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.inits],
        [helper.make_tensor_value_info(g.current, TensorProto.FLOAT, ["N", 10])], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def cancellation_cnn(path: Path, blocks: int = 6, offset: float = 4096.0) -> Path:
    """Legitimate float32 drift past a fixed bound: every conv adds a large bias (`offset`) that the
    BatchNormalization after it subtracts again (its running mean, measured in float64 on a calibration batch),
    so each block keeps only the last few bits of its float32 sum (an ulp of 4096 is 4.9e-4). Two float32
    libraries then differ at the BatchNorm nodes by more than 1e-4 of their range, as onnxruntime differs from
    the float64 reference: a bound must scale with the graph."""
    from spec import ops

    g = _Graph(seed=31)
    x, channels = g.rng.uniform(-1.0, 1.0, (32, 3, 32, 32)), 3
    conv = {"kernel": (3, 3), "strides": (1, 1), "pads": (1, 1, 1, 1), "filters": 16}
    for _ in range(blocks):
        g.conv(channels, 16, 3, pads=[1, 1, 1, 1])
        weight = numpy_helper.to_array(g.inits[-2]).astype(np.float64)
        g.inits[-1] = numpy_helper.from_array(np.full(16, offset, np.float32), g.inits[-1].name)
        y = ops.get("conv").forward(conv, {"weight": weight, "bias": np.zeros(16)}, [x])[0]
        mean, var = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))
        stats = {"s": np.ones(16), "b": np.zeros(16), "m": mean + offset, "v": var}
        names = [f"bn{g.n}.{k}" for k in stats]
        g.inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in zip(names, stats.values())]
        g.add("BatchNormalization", names, epsilon=1e-5)
        g.add("Relu")
        x, channels = np.maximum((y - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5), 0.0), 16
    g.add("GlobalAveragePool")
    g.add("Flatten", axis=1)
    g.add("Gemm", (g.param("fc.w", (16, 10)), g.param("fc.b", (10,), scale=0.1)))
    g.add("Softmax", axis=-1)
    return g.save(path, (3, 32, 32))


def reductions_cnn(path: Path) -> Path:
    """Sums, means and tiles over chosen axes: a residual Add of the map and its sum over H tiled back to the map's
    height (ReduceSum keeping H as 1, Tile), the map tiled twice along W, a mean over the channels without kept axes
    ([N, H, W]), a Flatten of that 3-D tensor, and Gemm."""
    g = _Graph(seed=37)
    i64 = np.int64
    g.conv(3, 6, 3, pads=[1, 1, 1, 1])  # 6 x 8 x 8
    body = g.add("Relu") and g.current
    g.add("ReduceSum", (g.constant("h", np.array([2], i64)),), keepdims=1)  # 6 x 1 x 8
    g.add("Tile", (g.constant("down", np.array([1, 1, 8, 1], i64)),))  # 6 x 8 x 8
    g.nodes.append(helper.make_node("Add", [body, g.current], ["residual"], name="residual"))
    g.current = "residual"
    g.add("Tile", (g.constant("across", np.array([1, 1, 1, 2], i64)),))  # 6 x 8 x 16
    g.add("ReduceMean", axes=[1], keepdims=0)  # [N, 8, 16]
    g.add("Flatten")
    g.add("Gemm", (g.param("fc.w", (128, 10)), g.param("fc.b", (10,), scale=0.1)))
    return g.save(path, (3, 8, 8))


def batchnorm_cnn(path: Path) -> Path:
    """A small CIFAR-shaped net to train with BatchNorm: four BatchNormalizations with moved statistics (one after
    a 16x16 conv, one in a residual block, one on a stride-2 conv, one on the pooled [N, 16, 1, 1] features, where a
    batch's variance has the fewest values and an unbiased running update shows most), ONNX's momentum 0.9 and
    0.8; it ends in logits. Convolutions without bias, as before BatchNorm they usually are."""
    g = _Graph(seed=41)

    def conv(c_in, c_out, **attrs):
        name = f"conv{g.n + 1}"
        return g.add("Conv", (g.param(f"{name}.w", (c_out, c_in, 3, 3)),), kernel_shape=[3, 3], **attrs)

    def batchnorm(channels, momentum):
        name = f"bn{g.n + 1}"
        values = (("s", g.rng.uniform(0.5, 1.5, channels)), ("b", g.rng.uniform(-0.2, 0.2, channels)),
                  ("m", g.rng.uniform(-0.3, 0.3, channels)), ("v", g.rng.uniform(0.5, 2.0, channels)))
        g.inits += [numpy_helper.from_array(v.astype(np.float32), f"{name}.{k}") for k, v in values]
        g.add("BatchNormalization", [f"{name}.{k}" for k, _ in values], epsilon=1e-3, momentum=momentum)

    conv(3, 8, pads=[1, 1, 1, 1], strides=[2, 2])  # 16 x 16
    batchnorm(8, 0.9)
    stem = g.add("Relu") and g.current
    conv(8, 8, pads=[1, 1, 1, 1])
    batchnorm(8, 0.8)
    g.nodes.append(helper.make_node("Add", [g.current, stem], ["res"], name="residual"))
    g.current = "res"
    g.add("Relu")
    conv(8, 16, pads=[1, 1, 1, 1], strides=[2, 2])  # 8 x 8
    batchnorm(16, 0.9)
    g.add("Relu")
    g.add("GlobalAveragePool")
    batchnorm(16, 0.9)
    g.add("Flatten", axis=1)
    g.add("Gemm", (g.param("fc.w", (16, 10)), g.param("fc.b", (10,), scale=0.1)))
    return g.save(path, (3, 32, 32))


def write_all(folder: Path) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "strided": strided_cnn(folder / "strided.onnx"),
        "same_pool": same_pool_cnn(folder / "same_pool.onnx"),
        "tanh": tanh_cnn(folder / "tanh.onnx"),
        "torch_script": torch_export(folder / "torch_script.onnx", dynamo=False),
        "torch_dynamo": torch_export(folder / "torch_dynamo.onnx", dynamo=True),
        "blocks": blocks_export(folder / "blocks.onnx"),
        "activations": activations_cnn(folder / "activations.onnx"),
        "opset9": opset9_cnn(folder / "opset9.onnx"),
        "graph": graph_cnn(folder / "graph.onnx"),
        "layers": layers_cnn(folder / "layers.onnx"),
        "keras": keras_export(folder / "keras.onnx"),
        "cancellation": cancellation_cnn(folder / "cancellation.onnx"),
        "reductions": reductions_cnn(folder / "reductions.onnx"),
        "batchnorm": batchnorm_cnn(folder / "batchnorm.onnx"),
    }


if __name__ == "__main__":
    import sys

    for name, p in write_all(Path(sys.argv[1])).items():
        print(name, p)
