"""The references a library is judged against.

- onnxruntime on the ONNX file itself, every node's output exposed: `layer_outputs` returns them at once (for
  small in-process checks); `write_layer_outputs` runs the inputs in chunks of images and writes each node's
  output to its own .npy file, so that a verification reads one node at a time (`NodeStore`).
- the float64 reference (`spec.ops`' math): `float32_errors` walks the graph in float64 on a few images and
  measures, per node, how far onnxruntime's float32 value is from it and how far an independent float32
  rounding of the node's inputs could move it; `verify.compare.envelopes` turns these into each node's bound.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from spec import ops
from spec.ir import ModelSpec
from spec.onnx_import import ModelError

CHUNK_BYTES = 256 * 2**20  # every node's output for one chunk of images, as onnxruntime returns them
UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2  # the least error of a float32 value: half an ulp
PERTURBATION_SEED = 0


def _session(model: onnx.ModelProto, spec: ModelSpec):
    """An onnxruntime session on `model` with every node's output exposed, unfused."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for layer in spec.layers:
        if layer.onnx_output not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=layer.onnx_output))
            existing.add(layer.onnx_output)
    options = ort.SessionOptions()
    # unfused: each exposed tensor is the plain result of its own op, as the builders' layers are
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return _guarded(spec, ort.InferenceSession, model.SerializeToString(), options, ["CPUExecutionProvider"])


def _guarded(spec: ModelSpec, call, *args):
    """call(*args), with any onnxruntime failure as one ModelError line."""
    try:
        return call(*args)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{spec.source}: onnxruntime cannot run the model: {message[:300]}") from None


def _chunks(spec: ModelSpec, count: int):
    """(start, stop) of the image chunks onnxruntime runs: the model's fixed batch, else as many images as
    CHUNK_BYTES of outputs hold."""
    size = spec.batch_size or max(1, min(count, CHUNK_BYTES // max(1, spec.activation_bytes())))
    return [(i, min(i + size, count)) for i in range(0, count, size)]


def _feed(spec: ModelSpec, x: np.ndarray) -> dict:
    """onnxruntime's input for images x (NCHW, as every library receives them): channels-last for a graph that
    takes NHWC images (ModelSpec.input_layout)."""
    return {spec.input_name: np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if spec.input_layout == "NHWC" else x}


def layer_outputs(model: onnx.ModelProto, spec: ModelSpec, x: np.ndarray) -> dict:
    """{layer name: onnxruntime's value of that layer's output tensor} for input x (NCHW), all held at once."""
    session, names = _session(model, spec), [layer.onnx_output for layer in spec.layers]
    parts = [_guarded(spec, session.run, names, _feed(spec, x[a:b])) for a, b in _chunks(spec, len(x))]
    return {layer.name: np.concatenate([_as_node(layer, p[k]) for p in parts]) for k, layer in enumerate(spec.layers)}


def _as_node(layer, out: np.ndarray) -> np.ndarray:
    """onnxruntime's tensor in the node's shape: a reduction without kept axes (ONNX [N, C, W]) is recorded with
    its dropped axes as 1 ((C, 1, W)), the values in the same order."""
    return out.reshape(len(out), *layer.output_shape)


class NodeStore(Mapping):
    """onnxruntime's output of every node for every image, one .npy file per node, read one node at a time."""

    def __init__(self, spec: ModelSpec, folder: Path):
        self.folder = Path(folder)
        self.files = {layer.name: self.folder / f"{k}.npy" for k, layer in enumerate(spec.layers)}

    def __getitem__(self, name: str) -> np.ndarray:
        return np.load(self.files[name])

    def head(self, name: str, count: int) -> np.ndarray:
        """The first `count` images of a node's output, reading no more of the file."""
        return np.array(np.load(self.files[name], mmap_mode="r")[:count])

    def __iter__(self):
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def write_layer_outputs(model: onnx.ModelProto, spec: ModelSpec, x: np.ndarray, folder: Path) -> NodeStore:
    """Run x through onnxruntime in chunks of images and write every node's output to `folder` (created);
    at most one chunk's outputs are held at a time."""
    store, names = NodeStore(spec, folder), [layer.onnx_output for layer in spec.layers]
    store.folder.mkdir(parents=True, exist_ok=True)
    session = _session(model, spec)
    for a, b in _chunks(spec, len(x)):
        outputs = _guarded(spec, session.run, names, _feed(spec, x[a:b]))
        for layer, path, out in zip(spec.layers, store.files.values(), outputs):
            mode, out = "w+" if a == 0 else "r+", _as_node(layer, out)
            held = np.lib.format.open_memmap(path, mode, out.dtype, (len(x), *out.shape[1:]))
            held[a:b] = out
            held.flush()
            del held
        del outputs
    return store


# --- the float64 reference's measure of float32 error ------------------------------------------------------

def float32_errors(spec: ModelSpec, x: np.ndarray, onnxruntime: NodeStore) -> dict:
    """{node: (measured, propagated)} on the images x, each scaled by the node's max|float64 value|:
    measured = max|onnxruntime - float64|, what float32 did in onnxruntime's order of operations;
    propagated = max|f(inputs + d) - f(inputs)| in float64, d drawn uniformly within each input element's
    float32 error (|onnxruntime - float64|, at least half an ulp): what a float32 library rounding
    independently of onnxruntime may see at this node (large where an op is ill-conditioned, e.g. a softmax
    whose logits tie within their float32 error). Holds only the tensors later nodes still read."""
    rng = np.random.default_rng(PERTURBATION_SEED)
    x64 = np.asarray(x, dtype=np.float64)
    live = {spec.input_name: (x64, UNIT_ROUNDOFF * np.abs(x64))}
    readers = {spec.input_name: len(spec.consumers(spec.input_name))}
    found = {}
    for node in spec.layers:
        found[node.name], live[node.name] = _node_errors(spec, node, live, rng, onnxruntime.head(node.name, len(x)))
        readers[node.name] = len(spec.consumers(node.name))
        for tensor in set(node.inputs):
            readers[tensor] -= node.inputs.count(tensor)
            if readers[tensor] <= 0:
                del live[tensor]
        if readers[node.name] == 0:
            del live[node.name]
    return found


def _node_errors(spec: ModelSpec, node, live: dict, rng, ort32: np.ndarray) -> tuple:
    """((measured, propagated), (float64 value, its float32 error)) of one node."""
    op = ops.get(node.kind)
    params = {p: np.asarray(v, dtype=np.float64) for p, v in spec.params(node).items()}
    inputs = [live[t] for t in node.inputs]
    y = op.forward(node.attrs, params, [value for value, _ in inputs])[0]
    moved = [value + rng.uniform(-1.0, 1.0, value.shape) * error for value, error in inputs]
    shifted = op.forward(node.attrs, params, moved)[0]
    error = np.abs(ort32.astype(np.float64).reshape(y.shape) - y)
    if not y.size:
        return (0.0, 0.0), (y, error)
    scale = float(np.abs(y).max()) or 1.0
    measured, propagated = float(error.max()) / scale, float(np.abs(shifted - y).max()) / scale
    # what the next node may inherit: onnxruntime's own error, or what its inputs' errors can move this output by
    # (a softmax of tied logits that onnxruntime happens to get right still hands on its spread)
    return (measured, propagated), (y, np.maximum(np.maximum(error, UNIT_ROUNDOFF * np.abs(y)), np.abs(shifted - y)))


def versions() -> dict:
    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
