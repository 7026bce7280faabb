"""The reference runner: onnxruntime on the ONNX file itself, every layer's output exposed."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from spec.ir import ModelSpec
from spec.onnx_import import ModelError


def layer_outputs(model: onnx.ModelProto, spec: ModelSpec, x: np.ndarray) -> dict:
    """{layer name: onnxruntime's value of that layer's output tensor} for input x (NCHW)."""
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
    names = [layer.onnx_output for layer in spec.layers]
    chunk = spec.batch_size or len(x)
    if spec.input_layout == "NHWC":  # x is NCHW, as every library receives it
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        parts = [session.run(names, {spec.input_name: x[i:i + chunk]}) for i in range(0, len(x), chunk)]
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{spec.source}: onnxruntime cannot run the model: {message[:300]}") from None
    return {layer.name: np.concatenate([p[k] for p in parts]) for k, layer in enumerate(spec.layers)}


def versions() -> dict:
    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
