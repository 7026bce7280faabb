"""Framework-neutral description of a sequential CNN: what every builder consumes.

Only numpy and the standard library are imported here, because this module is loaded
inside every worker environment (including Theano's, which pins an old numpy).

Canonical conventions (the ONNX / PyTorch ones):
- activations are NCHW; a layer's recorded output has the batch axis first;
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

KINDS = ("conv", "relu", "maxpool", "avgpool", "dropout", "flatten", "dense", "softmax")


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    attrs: dict = field(default_factory=dict)
    output_shape: tuple = ()  # without the batch axis, canonical layout
    onnx_output: str = ""  # the ONNX tensor that holds this layer's output

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}")


@dataclass
class ModelSpec:
    input_shape: tuple  # without the batch axis: (C, H, W) or (F,)
    layers: list
    weights: dict  # "<layer>.weight" / "<layer>.bias" -> float32 array, canonical layout
    input_name: str = "input"
    source: str = ""
    batch_size: int | None = None  # set when the ONNX input has a fixed batch dimension

    def weight(self, layer: Layer) -> np.ndarray:
        return self.weights[f"{layer.name}.weight"]

    def bias(self, layer: Layer) -> np.ndarray:
        return self.weights[f"{layer.name}.bias"]

    def input_shape_of(self, index: int) -> tuple:
        return tuple(self.input_shape) if index == 0 else tuple(self.layers[index - 1].output_shape)

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
            "layers": [
                {"name": l.name, "kind": l.kind, "attrs": l.attrs,
                 "output_shape": list(l.output_shape), "onnx_output": l.onnx_output}
                for l in self.layers
            ],
        }
        (folder / "model.json").write_text(json.dumps(doc, indent=1))
        np.savez(folder / "weights.npz", **self.weights)

    @classmethod
    def load(cls, folder: Path) -> "ModelSpec":
        folder = Path(folder)
        doc = json.loads((folder / "model.json").read_text())
        layers = [
            Layer(d["name"], d["kind"], _tuples(d["attrs"]), tuple(d["output_shape"]), d["onnx_output"])
            for d in doc["layers"]
        ]
        with np.load(folder / "weights.npz") as npz:
            weights = {k: npz[k] for k in npz.files}
        return cls(tuple(doc["input_shape"]), layers, weights, doc["input_name"], doc["source"],
                   doc.get("batch_size"))


def _tuples(attrs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}


# --- padding arithmetic shared by importer and builders -------------------------------

def window_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    return (size + pad_before + pad_after - kernel) // stride + 1


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
