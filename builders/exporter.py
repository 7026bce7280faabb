"""Export worker: `python -m builders.exporter LIBRARY EXPORTER JOB_DIR`.

Runs in the library's own environment and process, like builders.worker: builds the library's model of the job's
spec (JOB_DIR/model.json, weights.npz) with `build(spec)`, and writes its inference forward as ONNX with the
library's own ecosystem's exporter to JOB_DIR/<library>.<exporter>.onnx, and what it did to
JOB_DIR/<library>.<exporter>.export.json, each complete or absent. Exit codes as builders.worker's (FAILED with
the exporter's complaint as the last line on stderr).

EXPORTERS and NO_EXPORTER are plain data, so the orchestrator reads them without importing any library.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
import time
from pathlib import Path

from builders import LIBRARIES, layouts
from spec.ir import ModelSpec
from workers import ExitCode, lifeline, results

# library -> {exporter id: what it is}
EXPORTERS = {
    "pytorch": {"torchscript": "torch.onnx.export(dynamo=False), the TorchScript-based exporter",
                "dynamo": "torch.onnx.export(dynamo=True), the torch.export-based exporter"},
    "keras-tensorflow": {"tf2onnx": "tf2onnx.convert.from_function of model(x, training=False)"},
    "tensorflow": {"tf2onnx": "tf2onnx.convert.from_function of the tf.Module's forward"},
    "tensorlayer": {"tf2onnx": "tf2onnx.convert.from_function of the Model's forward in eval mode"},
    "tflearn": {"tf2onnx": "tf2onnx.convert.from_graph_def of the frozen TF1 graph (is_training False)"},
}
NO_EXPORTER = {"keras-theano": "Theano has no ONNX exporter, and Keras 2.3.1 on Theano none of its own (keras2onnx "
                               "and tf2onnx read TensorFlow graphs only)"}
INPUT_NAME = "input"


def paths(job: Path, library: str, exporter: str) -> tuple:
    """(the exported file, its export.json)."""
    stem = f"{library}.{exporter}"
    return job / f"{stem}.onnx", job / f"{stem}.export.json"


def _example_batch(spec) -> int:
    return spec.batch_size or 2


def _output_index(spec) -> int:
    return spec.index_of(spec.output().name)


def _torch(model, spec, path: Path, dynamo: bool) -> dict:
    import torch

    x = torch.zeros(_example_batch(spec), *spec.input_shape)
    kwargs = {"input_names": [INPUT_NAME], "output_names": ["output"], "dynamo": dynamo}
    if not spec.batch_size and dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("N")},)
    elif not spec.batch_size:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "N"}, "output": {0: "N"}}
    with torch.no_grad():
        torch.onnx.export(model.eval(), (x,), str(path), **kwargs)
    return {"exporter_package": "torch", "input_layout": "NCHW"}


def _tf2onnx_function(function, spec, path: Path) -> dict:
    """tf2onnx of a tf.function taking NHWC images (or [N, F]), at tf2onnx's default opset."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((spec.batch_size, *layouts.native_shape(spec.input_shape)), tf.float32,
                               name=INPUT_NAME),)
    tf2onnx.convert.from_function(tf.function(function), input_signature=signature, output_path=str(path))
    return {"exporter_package": "tf2onnx", "input_layout": "NHWC" if len(spec.input_shape) == 3 else "NCHW"}


def _keras(model, spec, path: Path) -> dict:
    return _tf2onnx_function(lambda t: model(t, training=False), spec, path)


def _tensorflow(model, spec, path: Path) -> dict:
    index = _output_index(spec)
    return _tf2onnx_function(lambda t: model(t)[index], spec, path)


def _tensorlayer(model, spec, path: Path) -> dict:
    model.eval()
    index = _output_index(spec)
    return _tf2onnx_function(lambda t: model(t)[index], spec, path)


def _tflearn(model, spec, path: Path) -> dict:
    import tf2onnx

    from builders.tflearn import library

    tf, tflearn = library()
    output = model.spec_outputs[spec.output().name]
    session = model.session
    with session.graph.as_default():
        tflearn.is_training(False, session=session)  # frozen as a constant: dropout off, inference BatchNorm
        frozen = tf.graph_util.convert_variables_to_constants(session, _without_updates(session.graph.as_graph_def()),
                                                              [output.op.name])
    tf2onnx.convert.from_graph_def(frozen, input_names=[model.inputs[0].name], output_names=[output.name],
                                   output_path=str(path))
    return {"exporter_package": "tf2onnx", "input_layout": "NHWC" if len(spec.input_shape) == 3 else "NCHW"}


VARIABLE_UPDATES = {"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp"}


def _without_updates(graph_def):
    """The graph without its variable updates: tflearn's BatchNorm moves its running statistics inside the training
    branch of a tf.cond, and freezing cannot turn those resource updates into constants ("passed float ...
    incompatible with expected resource"). With is_training frozen False that branch never runs, so dropping them
    (and the control edges to them) changes no output: TF1's usual fix before freezing a BatchNorm graph."""
    dropped = {node.name for node in graph_def.node if node.op in VARIABLE_UPDATES}
    kept = type(graph_def)()
    kept.versions.CopyFrom(graph_def.versions)
    kept.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name not in dropped:
            copy = kept.node.add()
            copy.CopyFrom(node)
            del copy.input[:]
            copy.input.extend(t for t in node.input if t.lstrip("^").split(":")[0] not in dropped)
    return kept


EXPORT = {("pytorch", "torchscript"): lambda m, s, p: _torch(m, s, p, dynamo=False),
          ("pytorch", "dynamo"): lambda m, s, p: _torch(m, s, p, dynamo=True),
          ("keras-tensorflow", "tf2onnx"): _keras, ("tensorflow", "tf2onnx"): _tensorflow,
          ("tensorlayer", "tf2onnx"): _tensorlayer, ("tflearn", "tf2onnx"): _tflearn}


def run(library: str, exporter: str, job: Path) -> None:
    module = importlib.import_module(LIBRARIES[library][0])
    spec = ModelSpec.load(job)
    onnx_path, info_path = paths(job, library, exporter)
    t0 = time.perf_counter()
    model = module.build(spec)
    t1 = time.perf_counter()
    info = EXPORT[library, exporter](model, spec, onnx_path)
    info.update(library=library, exporter=exporter, what=EXPORTERS[library][exporter],
                exporter_version=importlib.metadata.version(info["exporter_package"]),
                versions=module.versions(), build_s=t1 - t0, export_s=time.perf_counter() - t1)
    results.write_json(info_path, info)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lifeline.die_with_parent()
    if len(argv) != 3 or argv[1] not in EXPORTERS.get(argv[0], {}):
        pairs = ", ".join(f"{lib} {e}" for lib, found in EXPORTERS.items() for e in found)
        print(f"usage: python -m builders.exporter LIBRARY EXPORTER JOB_DIR ({pairs})", file=sys.stderr)
        return ExitCode.BAD_INPUT
    from builders.worker import exit_status

    return exit_status(lambda: run(argv[0], argv[1], Path(argv[2])))  # the last line: the exporter's complaint


if __name__ == "__main__":
    sys.exit(main())
