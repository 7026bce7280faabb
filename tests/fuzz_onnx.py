"""Mutation fuzzing of what users point the tool at: valid ONNX models, mutated, must import or be refused with
one clear line (spec.onnx_import.ModelError), and a model that imports must run in onnxruntime or be refused
the same way; never another exception, never a hang.

    python -m tests.fuzz_onnx --examples 5000 [--seed N]     # a long run on demand; prints the outcome counts

tests/test_fuzz.py runs the same property with a bounded number of examples in CI.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spec.onnx_import import IMPORTER_BUG, ModelError, import_model, load_onnx
from tests import model_zoo
from verify import reference

ROOT = Path(__file__).resolve().parent.parent
OPS = ["Conv", "Relu", "MaxPool", "AveragePool", "Dropout", "Flatten", "Reshape", "Gemm", "MatMul", "Add", "Softmax",
       "Identity", "Constant", "Sigmoid", "BatchNormalization", "Concat", "Sum", "Mul", "Sub", "Div", "LRN", "Clip",
       "GlobalAveragePool", "ReduceMean", "LeakyRelu", "HardSwish", "LogSoftmax", "Transpose", "ConstantOfShape",
       "Pad", "ConvTranspose", "PRelu", "InstanceNormalization", "DepthToSpace", "Squeeze", "Unsqueeze",
       "ReduceSum", "Tile", "Conv2D", "LSTM", "If", "Loop", "", "\u00e9\u0000x"]
EXTERNAL_LOCATIONS = ["data.bin", "../outside.bin", "/etc/passwd", "missing.bin", "", "sub/../data.bin", "data.bin\0x"]
DIMS = st.one_of(st.integers(-3, 5), st.integers(6, 70), st.sampled_from([2**31 - 1, 2**40, 10**12]))
DATA_BIN = bytes(range(256)) * 64  # a 16 KiB external-data file beside every mutated model


def seed_models(folder: Path) -> list:
    """Serialized valid models to mutate: the canonical CNN and the zoo CNNs built with onnx.helper."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [ROOT / "spec" / "seed_cnn.onnx", model_zoo.strided_cnn(folder / "strided.onnx"),
             model_zoo.same_pool_cnn(folder / "same_pool.onnx"), model_zoo.activations_cnn(folder / "activations.onnx"),
             model_zoo.opset9_cnn(folder / "opset9.onnx"), model_zoo.graph_cnn(folder / "graph.onnx"),
             model_zoo.layers_cnn(folder / "layers.onnx"), model_zoo.reductions_cnn(folder / "reductions.onnx")]
    return [Path(p).read_bytes() for p in paths]


# -- mutations: each takes the model (mutated in place) and a hypothesis `data` to draw from --------------
def _node(model, data):
    return model.graph.node[data.draw(st.integers(0, len(model.graph.node) - 1))]


def m_op_type(model, data):
    _node(model, data).op_type = data.draw(st.sampled_from(OPS))


def m_attribute(model, data):
    node = _node(model, data)
    if not node.attribute or data.draw(st.booleans()):
        name = data.draw(st.sampled_from(["kernel_shape", "strides", "pads", "auto_pad", "axis", "transB",
                                          "dilations", "group", "alpha", "nonsense"]))
        node.attribute.append(onnx.helper.make_attribute(name, data.draw(st.lists(DIMS, min_size=1, max_size=6))
                                                         if data.draw(st.booleans()) else data.draw(DIMS)))
        return
    attr = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
    choice = data.draw(st.sampled_from(["ints", "int", "string", "float", "delete"]))
    if choice == "delete":
        node.attribute.remove(attr)
    elif choice == "ints":
        attr.type, attr.ints[:] = onnx.AttributeProto.INTS, data.draw(st.lists(DIMS, max_size=6))
    elif choice == "int":
        attr.type, attr.i = onnx.AttributeProto.INT, data.draw(DIMS)
    elif choice == "string":
        attr.type, attr.s = onnx.AttributeProto.STRING, data.draw(st.sampled_from([b"SAME_UPPER", b"VALID", b"??"]))
    else:
        attr.type, attr.f = onnx.AttributeProto.FLOAT, data.draw(st.floats(allow_nan=True))


def m_shape(model, data):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if data.draw(st.booleans()) and len(dims):
        dim = dims[data.draw(st.integers(0, len(dims) - 1))]
        if data.draw(st.booleans()):
            dim.dim_value = max(0, data.draw(DIMS))
        else:
            dim.dim_param = data.draw(st.sampled_from(["N", "H", ""]))
    elif data.draw(st.booleans()):
        del dims[-1:]
    else:
        dims.add().dim_value = data.draw(st.integers(0, 8))


def m_dtype(model, data):
    dtype = data.draw(st.integers(0, 25))
    if data.draw(st.booleans()) or not model.graph.initializer:
        model.graph.input[0].type.tensor_type.elem_type = dtype
    else:
        model.graph.initializer[data.draw(st.integers(0, len(model.graph.initializer) - 1))].data_type = dtype


def m_initializer(model, data):
    inits = model.graph.initializer
    if not inits:
        return
    tensor = inits[data.draw(st.integers(0, len(inits) - 1))]
    choice = data.draw(st.sampled_from(["dims", "truncate", "remove", "rename", "huge"]))
    if choice == "dims":
        tensor.dims[:] = data.draw(st.lists(st.integers(-1, 600), max_size=5))
    elif choice == "truncate":
        tensor.raw_data = tensor.raw_data[:data.draw(st.integers(0, max(0, len(tensor.raw_data) - 1)))]
    elif choice == "remove":
        inits.remove(tensor)
    elif choice == "rename":
        tensor.name = data.draw(st.sampled_from(["", "x", tensor.name + "_"]))
    else:
        tensor.dims[:] = [10**6, 10**6]


def m_external(model, data):
    inits = model.graph.initializer
    if not inits:
        return
    tensor = inits[data.draw(st.integers(0, len(inits) - 1))]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    entries = {"location": data.draw(st.sampled_from(EXTERNAL_LOCATIONS))}
    if data.draw(st.booleans()):
        entries["offset"] = str(data.draw(st.integers(-5, 20000)))
    if data.draw(st.booleans()):
        entries["length"] = str(data.draw(st.one_of(st.integers(-5, 20000), st.just(2**40))))
    if data.draw(st.booleans()):
        entries["checksum"] = "x"
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def m_opset(model, data):
    model.opset_import[0].version = data.draw(st.integers(-1, 30))


def m_graph_io(model, data):
    graph = model.graph
    choice = data.draw(st.sampled_from(["no output", "two outputs", "no input", "output renamed", "node dropped"]))
    if choice == "no output":
        del graph.output[:]
    elif choice == "two outputs":
        graph.output.add().CopyFrom(graph.output[0])
    elif choice == "no input":
        del graph.input[:]
    elif choice == "output renamed":
        graph.output[0].name = "elsewhere"
    elif len(graph.node) > 1:
        graph.node.remove(_node(model, data))


def m_rewire(model, data):
    """One input of a node read from another tensor: later nodes (a cycle, or out of order), weights, nothing."""
    node = _node(model, data)
    if not node.input:
        return
    names = [o for n in model.graph.node for o in n.output] + [t.name for t in model.graph.initializer] + ["", "nope"]
    node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(st.sampled_from(names))


STRUCTURAL = [m_op_type, m_attribute, m_shape, m_dtype, m_initializer, m_external, m_opset, m_graph_io, m_rewire]


def mutate_bytes(raw: bytes, data) -> bytes:
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del raw[at:at + data.draw(st.integers(1, 64))]
        else:
            del raw[at:]
    return bytes(raw)


def mutated_model(data, seeds: list) -> tuple:
    """(bytes of a mutated model, the names of the mutations applied)."""
    raw = seeds[data.draw(st.integers(0, len(seeds) - 1))]
    applied = []
    if data.draw(st.integers(0, 3)) > 0:  # mostly structural: those reach deep into the importer
        model = onnx.ModelProto.FromString(raw)
        for mutation in data.draw(st.lists(st.sampled_from(STRUCTURAL), min_size=1, max_size=3)):
            try:
                mutation(model, data)
            except (IndexError, ValueError, TypeError):  # nothing left for it to change (an earlier one removed
                continue                                # it) or a value protobuf cannot hold: not applied
            applied.append(mutation.__name__[2:])
        raw = model.SerializeToString()
    if not applied or data.draw(st.integers(0, 4)) == 0:
        raw = mutate_bytes(raw, data)
        applied.append("bytes")
    return raw, applied


def outcome(path: Path) -> str:
    """'imported and ran' or 'refused: <the message's first words>'; any other exception propagates."""
    try:
        spec = import_model(path)
        x = np.random.default_rng(0).uniform(-1, 1, size=(2, *spec.input_shape)).astype(np.float32)
        reference.layer_outputs(load_onnx(path), spec, x)
    except ModelError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message, message
        assert IMPORTER_BUG not in message, message  # refused, but only by the importer's last-resort guard
        reason = re.sub(r"\d+(\.\d+)?", "N", re.sub(r"'[^']*'|\([^)]*\)", "…", message.split(": ", 1)[-1]))
        return "refused: " + " ".join(reason.split()[:5])
    return "imported and ran"


HANG_S = 30


class Hang(AssertionError):
    pass


def _hung(_signum, _frame):
    raise Hang(f"importing or running one model took over {HANG_S} s")


def fuzz(examples: int, seed: int | None = None, deadline_ms: int = 5000) -> collections.Counter:
    """Run the property for `examples` mutated models; returns outcome counts. Raises on the first failure."""
    counts = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-onnx-") as tmp:
        folder = Path(tmp)
        seeds = seed_models(folder / "seeds")
        (folder / "data.bin").write_bytes(DATA_BIN)
        (folder / "sub").mkdir()

        @settings(max_examples=examples, deadline=deadline_ms, database=None, derandomize=seed is None,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def property_(data):
            raw, applied = mutated_model(data, seeds)
            path = folder / "model.onnx"
            path.write_bytes(raw)
            signal.signal(signal.SIGALRM, _hung)
            signal.setitimer(signal.ITIMER_REAL, HANG_S)  # a hang fails the example instead of the run
            try:
                result = outcome(path)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            counts[result.split(":")[0]] += 1
            counts[result] += 1
            for name in applied:
                counts[f"mutation {name}"] += 1

        if seed is not None:
            from hypothesis import seed as hypothesis_seed
            property_ = hypothesis_seed(seed)(property_)
        property_()
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz_onnx", description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: derandomized)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    counts = fuzz(args.examples, args.seed)
    cases = counts["imported and ran"] + counts["refused"]
    print(json.dumps({"cases": cases, "seconds": round(time.perf_counter() - started, 1),
                      "outcomes": {k: v for k, v in counts.most_common() if not k.startswith("mutation ")},
                      "mutations": {k[9:]: v for k, v in counts.most_common() if k.startswith("mutation ")}},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
