"""The canonical CIFAR-10 CNN of the 2017 comparison, written as an ONNX graph.

`python -m spec.seed_model [PATH]` (default spec/seed_cnn.onnx) writes the model, byte-identical
on every run: Glorot-uniform kernels (Keras's default initialiser, fan-in/fan-out as Keras
counts them) and zero biases, drawn from numpy's PCG64 seeded with SEED.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 2017
OPSET = 17
DEFAULT_PATH = Path(__file__).with_name("seed_cnn.onnx")

# (kind, name, settings) in graph order
ARCHITECTURE = [
    ("conv", "conv1", {"filters": 32, "kernel": 3, "pads": (1, 1, 1, 1)}),
    ("relu", "relu1", {}),
    ("conv", "conv2", {"filters": 32, "kernel": 3, "pads": (0, 0, 0, 0)}),
    ("relu", "relu2", {}),
    ("maxpool", "pool1", {}),
    ("dropout", "dropout1", {"rate": 0.25}),
    ("conv", "conv3", {"filters": 64, "kernel": 3, "pads": (1, 1, 1, 1)}),
    ("relu", "relu3", {}),
    ("conv", "conv4", {"filters": 64, "kernel": 3, "pads": (0, 0, 0, 0)}),
    ("relu", "relu4", {}),
    ("maxpool", "pool2", {}),
    ("dropout", "dropout2", {"rate": 0.25}),
    ("flatten", "flatten", {}),
    ("dense", "dense1", {"units": 512}),
    ("relu", "relu5", {}),
    ("dense", "dense2", {"units": 10}),
    ("softmax", "softmax", {}),
]


def glorot_uniform(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def build_model(seed: int = SEED) -> onnx.ModelProto:
    rng = np.random.Generator(np.random.PCG64(seed))
    nodes, inits = [], []
    current, channels, features = "input", 3, None
    for kind, name, cfg in ARCHITECTURE:
        out = f"{name}_out"
        if kind == "conv":
            k, f = cfg["kernel"], cfg["filters"]
            w = glorot_uniform(rng, (f, channels, k, k), fan_in=k * k * channels, fan_out=k * k * f)
            inits += [numpy_helper.from_array(w, f"{name}.weight"),
                      numpy_helper.from_array(np.zeros(f, np.float32), f"{name}.bias")]
            nodes.append(helper.make_node("Conv", [current, f"{name}.weight", f"{name}.bias"], [out], name=name,
                                          kernel_shape=[k, k], strides=[1, 1], pads=list(cfg["pads"])))
            channels = f
        elif kind == "relu":
            nodes.append(helper.make_node("Relu", [current], [out], name=name))
        elif kind == "maxpool":
            nodes.append(helper.make_node("MaxPool", [current], [out], name=name, kernel_shape=[2, 2], strides=[2, 2]))
        elif kind == "dropout":
            ratio = f"{name}.ratio"
            inits.append(numpy_helper.from_array(np.array(cfg["rate"], np.float32), ratio))
            nodes.append(helper.make_node("Dropout", [current, ratio], [out], name=name))
        elif kind == "flatten":
            nodes.append(helper.make_node("Flatten", [current], [out], name=name, axis=1))
            features = channels * 6 * 6
        elif kind == "dense":
            u = cfg["units"]
            w = glorot_uniform(rng, (features, u), fan_in=features, fan_out=u)
            inits += [numpy_helper.from_array(w, f"{name}.weight"),
                      numpy_helper.from_array(np.zeros(u, np.float32), f"{name}.bias")]
            nodes.append(helper.make_node("Gemm", [current, f"{name}.weight", f"{name}.bias"], [out], name=name))
            features = u
        elif kind == "softmax":
            nodes.append(helper.make_node("Softmax", [current], [out], name=name, axis=-1))
        current = out
    graph = helper.make_graph(
        nodes, "cifar10_seed_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="spec.seed_model", producer_version="1")
    model.ir_version = 8
    model.doc_string = f"2017 CIFAR-10 comparison CNN; Glorot-uniform kernels, zero biases, PCG64 seed {seed}"
    return model


def write(path: Path = DEFAULT_PATH, seed: int = SEED) -> Path:
    return save(build_model(seed), path)


def save(model: onnx.ModelProto, path) -> Path:
    """Check the model fully and write it byte-identically (deterministic serialisation), whole or not at all."""
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(model.SerializeToString(deterministic=True))
    tmp.replace(path)
    return path


if __name__ == "__main__":
    target = write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH)
    print(f"wrote {target}")
