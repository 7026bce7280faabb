"""ResNet-20 for CIFAR-10 (He et al. 2016, section 4.2), the second canonical model, written as an ONNX graph.

`python -m spec.resnet20 [PATH]` (default spec/resnet20.onnx) writes the model, byte-identical on every run.
Architecture: a 3x3 convolution of 16 channels, then 3 stages of 3 basic blocks (3x3 conv, BatchNorm, ReLU, 3x3
conv, BatchNorm, the shortcut added, ReLU) at 16, 32 and 64 channels, the first block of stages 2 and 3 with
stride 2; global average pooling and a dense layer to 10 logits (the softmax belongs to the loss). Where a block
changes the shape its shortcut is a strided 1x1 convolution with BatchNorm (the paper's option B): option A pads
the subsampled identity with zero channels, which no op here expresses. Convolutions have no bias (BatchNorm's
beta is the bias): 272,474 trainable parameters and 1,568 BatchNorm running statistics.

Initialisation, drawn from numpy's PCG64 seeded with SEED in graph order: convolution kernels He-normal
(standard deviation sqrt(2 / fan_in), fan_in = k*k*in_channels, as the paper's reference [13]); BatchNorm gamma 1,
beta 0, running mean 0, running variance 1, epsilon 1e-5, momentum 0.9 in ONNX's sense (the weight of the old
running value: PyTorch's momentum=0.1); the dense layer Glorot-uniform with a zero bias.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spec import seed_model

SEED = 2016
OPSET = 17
DEFAULT_PATH = Path(__file__).with_name("resnet20.onnx")
STAGES = ((16, 1), (32, 2), (64, 2))  # (channels, stride of the stage's first block)
BLOCKS_PER_STAGE = 3
EPSILON, MOMENTUM = 1e-5, 0.9


class _Writer:
    def __init__(self, seed: int):
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.nodes, self.inits = [], []

    def _init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def conv(self, name: str, x: str, c_in: int, c_out: int, k: int, stride: int) -> str:
        w = self.rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (k * k * c_in))
        pad = k // 2
        self.nodes.append(helper.make_node("Conv", [x, self._init(f"{name}.weight", w)], [name], name=name,
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        return name

    def batchnorm(self, name: str, x: str, channels: int) -> str:
        params = [self._init(f"{name}.{p}", np.full(channels, v)) for p, v in
                  (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0))]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *params], [name], name=name, epsilon=EPSILON,
                                           momentum=MOMENTUM))
        return name

    def op(self, op_type: str, name: str, inputs: list, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def block(self, name: str, x: str, c_in: int, c_out: int, stride: int) -> str:
        y = self.op("Relu", f"{name}.relu1", [self.batchnorm(f"{name}.bn1", self.conv(
            f"{name}.conv1", x, c_in, c_out, 3, stride), c_out)])
        y = self.batchnorm(f"{name}.bn2", self.conv(f"{name}.conv2", y, c_out, c_out, 3, 1), c_out)
        shortcut = x
        if stride != 1 or c_in != c_out:
            shortcut = self.batchnorm(f"{name}.shortcut_bn", self.conv(f"{name}.shortcut", x, c_in, c_out, 1, stride),
                                      c_out)
        return self.op("Relu", f"{name}.relu2", [self.op("Add", f"{name}.add", [y, shortcut])])


def build_model(seed: int = SEED) -> onnx.ModelProto:
    w = _Writer(seed)
    x = w.op("Relu", "stem.relu", [w.batchnorm("stem.bn", w.conv("stem.conv", "input", 3, 16, 3, 1), 16)])
    channels = 16
    for s, (width, stride) in enumerate(STAGES, start=1):
        for b in range(BLOCKS_PER_STAGE):
            x = w.block(f"stage{s}.block{b}", x, channels, width, stride if b == 0 else 1)
            channels = width
    x = w.op("Flatten", "flatten", [w.op("GlobalAveragePool", "pool", [x])], axis=1)
    limit = np.sqrt(6.0 / (channels + 10))
    weight = w._init("fc.weight", w.rng.uniform(-limit, limit, (channels, 10)))
    logits = w.op("Gemm", "fc", [x, weight, w._init("fc.bias", np.zeros(10))])
    graph = helper.make_graph(w.nodes, "cifar10_resnet20",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", 10])],
                              initializer=w.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="spec.resnet20", producer_version="1")
    model.ir_version = 8
    model.doc_string = (f"ResNet-20 for CIFAR-10 (He et al. 2016), 1x1-conv shortcuts; He-normal kernels, "
                        f"BatchNorm gamma 1 beta 0, Glorot-uniform dense, PCG64 seed {seed}; ends in logits")
    return model


def write(path: Path = DEFAULT_PATH, seed: int = SEED) -> Path:
    return seed_model.save(build_model(seed), path)


if __name__ == "__main__":
    target = write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH)
    print(f"wrote {target}")
