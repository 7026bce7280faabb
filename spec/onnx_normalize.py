"""Bring a loaded ONNX model into the form the importer reads, with well-kept tools, saying what was done.

- Initializers that old exporters also list as graph inputs (IR version < 4) are weights, not inputs.
- An opset outside `READ_RANGE` is converted with `onnx.version_converter` to the nearest end of the range.
- Constant subgraphs (ConstantOfShape, shape arithmetic on fixed shapes) are folded with the onnxscript
  optimizer's constant folding, ConstantOfShape included (exporters write weights that way).
- A Reshape whose target shape is computed from the batch size (tf2onnx's Flatten: Shape, Gather, Slice, Concat)
  gets the constant target [-1, ...] when folding with two batch sizes shows that only its batch entry follows it.

`normalize` returns the new model and one note per change, for the user (`ModelSpec.notes`).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx

READ_RANGE = (13, 21)  # the opsets whose op definitions the importer's handlers read


class NormalizeError(ValueError):
    """The model could not be brought into the readable form; the message says why, in one line."""


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    notes = []
    _initializers_are_weights(model, notes)
    _old_prelu_slopes(model, notes)
    model = _convert_opset(model, notes)
    model = _fold_constants(model, notes)
    model = _fold_batch_reshapes(model, notes)
    return model, notes


def _initializers_are_weights(model: onnx.ModelProto, notes: list) -> None:
    weights = {t.name for t in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in weights]
    if not listed:
        return
    kept = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)  # from IR 4 on, an initializer need not be an input
    notes.append(f"{len(listed)} initializers listed among the graph inputs read as weights")


def _old_prelu_slopes(model: onnx.ModelProto, notes: list) -> None:
    """Before opset 7, PRelu's 1-D slope of C values meant one per channel; from 7 on it broadcasts from the right
    (onto W). onnx.version_converter keeps it as it is, so it is laid on the channel axis here."""
    version = default_opset(model)
    if version is None or version >= 7:
        return
    weights = {t.name: t for t in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - without ranks nothing is changed; the importer judges the slopes
        return
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.input, *inferred.value_info]}
    fixed = 0
    for node in model.graph.node:
        slope = weights.get(node.input[1]) if node.op_type == "PRelu" and len(node.input) > 1 else None
        rank = ranks.get(node.input[0], 0)
        if slope is not None and len(slope.dims) == 1 and slope.dims[0] > 1 and rank > 2:
            value = onnx.numpy_helper.to_array(slope).reshape((-1,) + (1,) * (rank - 2))
            slope.CopyFrom(onnx.numpy_helper.from_array(value, slope.name))
            fixed += 1
    if fixed:
        notes.append(f"{fixed} PRelu slope(s) of opset {version} (one per channel) laid on the channel axis (C, 1, ...), as "
                     f"opset 7 on reads them")


def _convert_opset(model: onnx.ModelProto, notes: list) -> onnx.ModelProto:
    from onnx import version_converter

    version = default_opset(model)
    lo, hi = READ_RANGE
    if version is None or lo <= version <= hi:
        return model
    target = lo if version < lo else hi
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types; the user gets one line
        raise NormalizeError(f"opset {version} could not be converted to opset {target} by onnx.version_converter "
                             f"({_first_line(exc)}); re-export with an opset between {lo} and {hi}") from None
    notes.append(f"converted from opset {version} to opset {target} with onnx.version_converter")
    return converted


def _fold_constants(model: onnx.ModelProto, notes: list) -> onnx.ModelProto:
    if not _constant_nodes(model) and not any(n.op_type in ("Shape", "Size") for n in model.graph.node):
        return model
    import onnx_ir
    import onnxscript.optimizer

    logging.getLogger("onnxscript").setLevel(logging.ERROR)
    try:
        ir_model = onnx_ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(model))
        onnxscript.optimizer.fold_constants(ir_model, onnx_shape_inference=True, input_size_limit=2**40,
                                            output_size_limit=2**40,
                                            should_fold=lambda node: True if node.op_type == "ConstantOfShape"
                                            else None)
        onnxscript.optimizer.remove_unused_nodes(ir_model)
        folded = onnx_ir.serde.serialize_model(ir_model)
    except Exception as exc:  # noqa: BLE001
        raise NormalizeError(f"folding its constant subgraphs failed ({_first_line(exc)})") from None
    gone = sorted({n.op_type for n in model.graph.node} - {n.op_type for n in folded.graph.node} - {"Constant"})
    removed = len(model.graph.node) - len(folded.graph.node)
    if removed > 0:
        notes.append(f"{removed} nodes computing constants ({', '.join(gone) or 'shape arithmetic'}) folded into "
                     f"weights with the onnxscript optimizer")
    return folded


def _fold_batch_reshapes(model: onnx.ModelProto, notes: list) -> onnx.ModelProto:
    weights = {t.name for t in model.graph.initializer}
    dynamic = [n for n in model.graph.node if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] not in weights]
    inputs = [i for i in model.graph.input if i.name not in weights]
    if not dynamic or len(inputs) != 1 or not inputs[0].type.tensor_type.shape.dim or \
            inputs[0].type.tensor_type.shape.dim[0].HasField("dim_value"):
        return model
    targets = [_reshape_targets(model, inputs[0].name, batch) for batch in (1, 2)]
    patched = 0
    for node in dynamic:
        one, two = (t.get(node.output[0]) for t in targets)
        if one is None or two is None or len(one) != len(two) or one[1:] != two[1:] or (one[0], two[0]) not in (
                (1, 2), (-1, -1), (0, 0)):
            continue
        name = f"{node.output[0]}__batch_reshape"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1, *one[1:]], np.int64), name))
        node.input[1] = name
        patched += 1
    if not patched:
        return model
    notes.append(f"{patched} Reshape target(s) computed from the batch size read as [-1, ...] (folded with batch sizes "
                 f"1 and 2; only the batch entry followed it)")
    return _fold_constants(model, [])


def _reshape_targets(model: onnx.ModelProto, input_name: str, batch: int) -> dict:
    """{Reshape output: its target shape} of the Reshapes whose target folds to a constant with the batch fixed."""
    fixed = onnx.ModelProto.FromString(model.SerializeToString())
    next(i for i in fixed.graph.input if i.name == input_name).type.tensor_type.shape.dim[0].dim_value = batch
    try:
        fixed = _fold_constants(fixed, [])
    except NormalizeError:
        return {}
    values = {t.name: t for t in fixed.graph.initializer}
    values.update({n.output[0]: n.attribute[0].t for n in fixed.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    return {n.output[0]: [int(v) for v in onnx.numpy_helper.to_array(values[n.input[1]]).reshape(-1)]
            for n in fixed.graph.node if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] in values}


def _constant_nodes(model: onnx.ModelProto) -> list:
    """Nodes (other than Constant) all of whose inputs are initializers or outputs of such nodes."""
    known = {t.name for t in model.graph.initializer} | {""}
    found = []
    for node in model.graph.node:
        if node.op_type == "Constant" or (node.input and all(name in known for name in node.input)) or \
                (not node.input and node.op_type != "RandomNormal"):
            known.update(node.output)
            if node.op_type != "Constant":
                found.append(node)
    return found


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
