"""The library-neutral description of a model: a DAG of nodes, what every builder consumes.

Only numpy and the standard library are imported here, because this module is loaded
inside every worker environment (including Theano's, which pins an old numpy).

A node has one output, named after the node; its `inputs` name the graph input or earlier nodes, so the
node list (`spec.layers`, topologically ordered) is the graph. What an op kind means, its parameters and
their canonical layout are in the op registry (`spec.ops`); parameters are stored per node as
"<node>.<param>" (a conv's "conv1.weight" and "conv1.bias").

Canonical conventions (the ONNX / PyTorch ones):
- activations are NCHW; a node's recorded output has the batch axis first;
- conv weight is (out_channels, in_channels, kh, kw) and is applied as cross-correlation;
- dense weight is (in_features, out_features), its rows in the (C, H, W) flatten order;
- pads are (top, left, bottom, right).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spec import ops


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    attrs: dict = field(default_factory=dict)
    output_shape: tuple = ()  # without the batch axis, canonical layout
    onnx_output: str = ""  # the ONNX tensor that holds this node's output
    inputs: tuple = ()  # the tensors it reads: the graph input's name or earlier nodes' names

    def __post_init__(self):
        ops.get(self.kind)  # KeyError naming the kind and the known ones


Layer = Node  # a node of a chain is what the first versions called a layer


@dataclass
class ModelSpec:
    input_shape: tuple  # without the batch axis: (C, H, W) or (F,)
    layers: list  # the nodes, topologically ordered; the last one is the graph output
    weights: dict  # "<node>.<param>" -> float32 array, canonical layout
    input_name: str = "input"
    source: str = ""
    batch_size: int | None = None  # set when the ONNX input has a fixed batch dimension
    notes: tuple = ()  # what the importer did to read the file (opset converted, constants folded), for the user
    # "NHWC": the ONNX graph takes its images channels-last and transposes them to NCHW first (tf2onnx's form); the
    # spec itself, every builder and every input array handed to one are NCHW
    input_layout: str = "NCHW"

    def __post_init__(self):
        previous = self.input_name
        fixed = []
        for node in self.layers:  # a node without inputs continues the chain (the form of older model.json)
            fixed.append(node if node.inputs else Node(node.name, node.kind, node.attrs, node.output_shape,
                                                       node.onnx_output, (previous,)))
            previous = node.name
        self.layers = fixed

    @property
    def nodes(self) -> list:
        return self.layers

    def node(self, name: str) -> Node:
        return self._index()[name]

    def index_of(self, name: str) -> int:
        return [n.name for n in self.layers].index(name)

    def _index(self) -> dict:
        return {n.name: n for n in self.layers}

    def params(self, node: Node) -> dict:
        """{param name: canonical array} of a node, in the registry's order."""
        return {p: self.weights[f"{node.name}.{p}"] for p in ops.get(node.kind).param_names}

    def parametric(self) -> list:
        """The nodes that have parameters, in graph order (asked of the registry, never listed)."""
        return [n for n in self.layers if ops.has_params(n.kind)]

    def weight(self, layer: Node) -> np.ndarray:
        return self.weights[f"{layer.name}.weight"]

    def bias(self, layer: Node) -> np.ndarray:
        return self.weights[f"{layer.name}.bias"]

    def shape_of(self, tensor: str) -> tuple:
        if tensor == self.input_name:
            return tuple(self.input_shape)
        return tuple(self.node(tensor).output_shape)

    def input_shapes(self, node: Node) -> list:
        return [self.shape_of(t) for t in node.inputs]

    def input_shape_of(self, index: int) -> tuple:
        """The shape of the (first) input of node `index`."""
        return self.shape_of(self.layers[index].inputs[0])

    def producer(self, tensor: str):
        """The node whose output `tensor` is, or None for the graph input."""
        return None if tensor == self.input_name else self.node(tensor)

    def consumers(self, tensor: str) -> list:
        return [n for n in self.layers if tensor in n.inputs]

    def is_chain(self) -> bool:
        """Every node reads exactly the output of the node before it (or the graph input, first)."""
        previous = self.input_name
        for node in self.layers:
            if node.inputs != (previous,):
                return False
            previous = node.name
        return True

    def output(self) -> Node:
        return self.layers[-1]

    def activation_bytes(self) -> int:
        """float32 bytes of every node's output for one image."""
        return 4 * sum(math.prod(n.output_shape) for n in self.layers)

    def parameter_count(self) -> int:
        return int(sum(w.size for w in self.weights.values()))

    def save(self, folder: Path) -> None:
        """Write model.json + weights.npz, the form in which workers receive a model."""
        folder = Path(folder)
        doc = {
            "input_shape": list(self.input_shape),
            "input_name": self.input_name,
            "source": self.source,
            "batch_size": self.batch_size,
            "notes": list(self.notes),
            "input_layout": self.input_layout,
            "layers": [
                {"name": n.name, "kind": n.kind, "attrs": n.attrs, "inputs": list(n.inputs),
                 "output_shape": list(n.output_shape), "onnx_output": n.onnx_output}
                for n in self.layers
            ],
        }
        (folder / "model.json").write_text(json.dumps(doc, indent=1))
        np.savez(folder / "weights.npz", **self.weights)

    @classmethod
    def load(cls, folder: Path) -> ModelSpec:
        folder = Path(folder)
        doc = json.loads((folder / "model.json").read_text())
        layers = [
            Node(d["name"], d["kind"], _tuples(d["attrs"]), tuple(d["output_shape"]), d["onnx_output"],
                 tuple(d.get("inputs", ())))
            for d in doc["layers"]
        ]
        with np.load(folder / "weights.npz") as npz:
            weights = {k: npz[k] for k in npz.files}
        return cls(tuple(doc["input_shape"]), layers, weights, doc["input_name"], doc["source"],
                   doc.get("batch_size"), tuple(doc.get("notes", ())), doc.get("input_layout", "NCHW"))


def _tuples(attrs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}


# --- padding arithmetic shared by importer and builders -------------------------------

window_output_size = ops.window_output_size


def same_pads(in_hw: tuple, kernel: tuple, strides: tuple, upper: bool = True) -> tuple:
    """Pads (top, left, bottom, right) of ONNX SAME_UPPER / SAME_LOWER; SAME_UPPER is
    also what TensorFlow's and Keras's padding='same' do."""
    pads_before, pads_after = [], []
    for size, k, s in zip(in_hw, kernel, strides):
        out = math.ceil(size / s)
        total = max((out - 1) * s + k - size, 0)
        small, large = total // 2, total - total // 2
        pads_before.append(small if upper else large)
        pads_after.append(large if upper else small)
    return (pads_before[0], pads_before[1], pads_after[0], pads_after[1])


def padding_mode(in_hw: tuple, kernel: tuple, strides: tuple, pads: tuple) -> str:
    """'valid', 'same' (TensorFlow's SAME: extra pad at bottom/right) or 'explicit'."""
    if not any(pads):
        return "valid"
    if tuple(pads) == same_pads(in_hw, kernel, strides, upper=True):
        return "same"
    return "explicit"
