"""The importer on models of the op set, and every kind of unusable model it must refuse."""
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spec.onnx_import import ModelError, import_model
from tests.conftest import SEED_MODEL, assert_one_line_error, run_cli


def test_zoo_models_import_with_their_padding_and_dense_forms(zoo):
    strided = import_model(zoo["strided"])
    by_name = {l.name: l for l in strided.layers}
    assert by_name["conv1"].attrs["pads"] == (1, 2, 2, 1) and by_name["conv1"].attrs["strides"] == (2, 2)
    assert by_name["maxpool3"].attrs["pads"] == (0, 0, 1, 1)  # SAME_UPPER, 3x3 stride 2 on 16x16
    assert by_name["averagepool6"].attrs["count_include_pad"] is True
    assert by_name["reshape7"].kind == "flatten"
    assert by_name["fc1_matmul"].kind == "dense" and by_name["fc1_matmul"].onnx_output == "fc1_out"
    assert strided.weight(by_name["gemm10"]).shape == (64, 10)  # transB=1 transposed to (in, out)

    same = import_model(zoo["same_pool"])
    pads = [l.attrs["pads"] for l in same.layers if l.kind == "conv"]
    assert pads == [(1, 1, 1, 1), (0, 0, 1, 1)]
    for name in ("torch_script", "torch_dynamo"):
        spec = import_model(zoo[name])
        assert [l.kind for l in spec.layers] == ["conv", "relu", "maxpool", "conv", "relu", "avgpool", "flatten",
                                                  "dense", "relu", "dense", "softmax"]
        assert spec.parameter_count() == 13_694


def test_external_data_is_loaded(zoo):
    assert zoo["torch_dynamo"].with_name("torch_dynamo.onnx.data").exists()
    spec = import_model(zoo["torch_dynamo"])
    assert np.abs(spec.weights[f"{spec.layers[0].name}.weight"]).sum() > 0


def _graph(nodes, inits, opset=17, inputs=None, opsets=None):
    graph = helper.make_graph(nodes, "g", inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, ["N", "M"])],
                              initializer=inits)
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model


def _dense(op="Gemm"):
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    return helper.make_node(op, ["x", "w"], ["y"], name="fc"), w


def bad_models(tmp_path):
    """name -> (path, fragments the one-line error must contain)"""
    cases = {}

    def save(name, model):
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        return path

    node, w = _dense()
    erf = helper.make_node("Erf", ["y"], ["z"], name="squash")
    cases["unsupported_op"] = (save("unsupported_op", _graph([node, erf], [w])), ["squash", "Erf", "supported ops"])
    cases["missing_initializer"] = (save("missing_initializer", _graph(
        [node], [], inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])])),
        ["'fc'", "'w'", "missing initializer"])
    cases["opset_unknown"] = (save("opset_unknown", _graph([node], [w], opset=99)), ["opset 99", "knows"])
    add_const = helper.make_node("Add", ["y", "w"], ["z"], name="shift")
    cases["add_of_a_weight"] = (save("add_of_a_weight", _graph([node, add_const], [w])), ["shift", "constant"])
    cases["add_shapes_differ"] = (save("add_shapes_differ", _graph(
        [node, helper.make_node("Add", ["x", "y"], ["z"], name="skip")], [w])), ["skip", "different shapes"])
    cases["concat_on_width"] = (save("concat_on_width", _graph(
        [node, helper.make_node("Concat", ["y", "y"], ["z"], name="join", axis=0)], [w])), ["join", "channel axis"])
    foreign = helper.make_node("Relu", ["x"], ["y"], name="alien", domain="com.example")
    cases["unknown_domain"] = (save("unknown_domain", _graph([foreign], [], opsets={"com.example": 1})),
                               ["alien", "com.example"])
    softmax = helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=0)
    cases["softmax_axis"] = (save("softmax_axis", _graph([softmax], [])), ["sm", "the batch axis"])

    # memory guard: sizes declared in headers, refused before anything of that size is allocated
    huge = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))
    del huge.dims[:]
    huge.dims.extend([400_000, 400_000])  # 596 GiB declared, 48 bytes present
    cases["huge_weights"] = (save("huge_weights", _graph([node], [huge])), ["weights", "GiB", "memory budget",
                                                                           "XV_MEMORY_BUDGET_GIB"])
    kernel = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "k")
    conv = helper.make_node("Conv", ["x", "k"], ["y"], name="conv", kernel_shape=[1, 1])
    wide = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 20_000, 20_000])]
    cases["huge_activations"] = (save("huge_activations", _graph([conv], [kernel], inputs=wide)),
                                 ["activations", "MiB per image", "memory budget"])

    # found by tests/fuzz_onnx.py, kept as fixed cases
    ratio = numpy_helper.from_array(np.ones((2, 2), np.float32), "r")
    drop = helper.make_node("Dropout", ["x", "r"], ["y"], name="drop")
    cases["dropout_ratio_not_scalar"] = (save("dropout_ratio_not_scalar", _graph([drop], [ratio])),
                                         ["drop", "must be a single number"])
    pooled = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[0, 1],
                              auto_pad="SAME_UPPER")
    image = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    cases["zero_stride"] = (save("zero_stride", _graph([pooled], [], inputs=image)), ["pool", "invalid kernel"])
    nan_shape = numpy_helper.from_array(np.array([np.nan, 4.0]), "s")
    reshape = helper.make_node("Reshape", ["x", "s"], ["y"], name="flat")
    cases["reshape_float_shape"] = (save("reshape_float_shape", _graph([reshape], [nan_shape])),
                                    ["flat", "must hold integers"])

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(SEED_MODEL.read_bytes()[:100_000])
    cases["truncated"] = (truncated, ["truncated.onnx", "not a readable ONNX model"])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    cases["not_onnx"] = (text, ["notes.onnx"])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    cases["empty"] = (empty, ["empty.onnx", "no graph nodes"])
    cases["missing_file"] = (tmp_path / "nowhere.onnx", ["nowhere.onnx", "no such model file"])
    return cases


def _external(tmp_path, zoo, name, location=None, truncate=False, remove=False):
    folder = tmp_path / name
    folder.mkdir()
    model = onnx.load(str(zoo["torch_dynamo"]), load_external_data=False)
    shutil.copy(zoo["torch_dynamo"].with_name("torch_dynamo.onnx.data"), folder / "torch_dynamo.onnx.data")
    data = folder / "torch_dynamo.onnx.data"
    if location:
        for t in model.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
    if truncate:
        data.write_bytes(data.read_bytes()[:1000])
    if remove:
        data.unlink()
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def all_bad(tmp_path, zoo):
    cases = bad_models(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 100_000)
    cases["external_outside"] = (_external(tmp_path, zoo, "outside", location="../secret.bin"),
                                 ["outside the model's folder"])
    cases["external_absolute"] = (_external(tmp_path, zoo, "absolute", location=str(secret)),
                                  ["outside the model's folder"])
    cases["external_truncated"] = (_external(tmp_path, zoo, "trunc", truncate=True), ["truncated"])
    cases["external_missing"] = (_external(tmp_path, zoo, "missing", remove=True), ["is missing"])
    return cases


CASES = ["unsupported_op", "missing_initializer", "opset_unknown", "add_of_a_weight", "add_shapes_differ",
         "concat_on_width", "unknown_domain", "softmax_axis",
         "huge_weights", "huge_activations", "dropout_ratio_not_scalar", "zero_stride",
         "reshape_float_shape", "truncated", "not_onnx", "empty", "missing_file", "external_outside", "external_absolute",
         "external_truncated", "external_missing"]


@pytest.mark.parametrize("case", CASES)
def test_importer_refuses_with_one_clear_line(all_bad, case):
    path, fragments = all_bad[case]
    with pytest.raises(ModelError) as info:
        import_model(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_memory_budget_is_a_setting(all_bad, monkeypatch):
    path, _ = all_bad["huge_activations"]
    monkeypatch.setenv("XV_MEMORY_BUDGET_GIB", "100000")
    assert import_model(path).layers[0].output_shape == (8, 20_000, 20_000)  # nothing of that size allocated
    monkeypatch.setenv("XV_MEMORY_BUDGET_GIB", "lots")
    with pytest.raises(ModelError, match="not a number of GiB"):
        import_model(path)


@pytest.mark.parametrize("case", ["unsupported_op", "truncated", "external_outside", "missing_initializer",
                                  "huge_activations"])
def test_cli_bad_model_exits_2_with_one_line_and_writes_nothing(all_bad, tmp_path, case):
    path, fragments = all_bad[case]
    report = tmp_path / "out" / "report.json"
    proc = run_cli("verify", "equivalence", "--model", path, "--json", report)
    assert_one_line_error(proc, *fragments)
    assert not report.exists() and not report.parent.exists()


def test_a_graph_imports_as_nodes_with_named_inputs(tmp_path):
    """Two nodes read the input; the one the output does not need is dropped, the other reads the input."""
    dead = helper.make_node("Relu", ["x"], ["a"], name="a")
    kept = helper.make_node("Tanh", ["x"], ["y"], name="branch")
    path = tmp_path / "branching.onnx"
    onnx.save(_graph([dead, kept], []), path)
    spec = import_model(path)
    assert [(n.name, n.kind, n.inputs) for n in spec.layers] == [("branch", "tanh", ("x",))]


def test_an_old_opset_is_converted_and_the_spec_says_so(tmp_path):
    node, w = _dense()
    path = tmp_path / "opset12.onnx"
    onnx.save(_graph([node], [w], opset=12), path)
    spec = import_model(path)
    assert [n.kind for n in spec.layers] == ["dense"]
    assert spec.notes == ("converted from opset 12 to opset 13 with onnx.version_converter",)


def test_a_computed_weight_is_folded_and_initializer_inputs_are_weights(zoo):
    spec = import_model(zoo["opset9"])
    assert [n.kind for n in spec.layers] == ["conv", "relu", "maxpool", "flatten", "dense", "softmax"]
    assert np.all(spec.weights["gemm5.bias"] == np.float32(0.05))  # the ConstantOfShape fill
    assert any("initializers listed among the graph inputs" in note for note in spec.notes)
    assert any("ConstantOfShape" in note and "folded" in note for note in spec.notes)


@pytest.mark.parametrize("op_type, size, kernel, stride, pad", [
    ("MaxPool", 6, 3, 2, 0), ("MaxPool", 7, 2, 3, 1), ("MaxPool", 9, 3, 2, 1),
    ("AveragePool", 6, 3, 2, 0), ("AveragePool", 8, 2, 3, 1), ("AveragePool", 9, 3, 2, 1)])
def test_ceil_mode_becomes_extra_padding_that_onnxruntime_agrees_with(tmp_path, op_type, size, kernel, stride, pad):
    """ceil_mode=1: windows hanging over the end are kept (as bottom/right padding) unless they would start past
    the input; the float64 reference on the imported node equals onnxruntime on the original."""
    import onnxruntime as ort

    from spec.reference64 import Reference

    attrs = {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4, "ceil_mode": 1}
    node = helper.make_node(op_type, ["x"], ["y"], name="pool", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "h", "w"])])
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    x = np.random.default_rng(size).standard_normal((2, 2, size, size)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    spec = import_model(path)
    got = Reference(spec, spec.weights).outputs(x)[spec.layers[0].name]
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5


def test_an_opset_6_prelu_slope_is_one_per_channel():
    """Before opset 7 a 1-D PRelu slope meant one per channel; onnx.version_converter leaves it to broadcast onto W,
    which onnxruntime refuses. The onnx package's PyTorch-converted model reads as PyTorch meant it."""
    from pathlib import Path

    import onnx.backend.test

    path = Path(onnx.backend.test.__file__).parent / "data/pytorch-converted/test_PReLU_2d_multiparam/model.onnx"
    spec = import_model(path)
    (node,) = spec.layers
    assert node.kind == "prelu" and spec.weights[f"{node.name}.slope"].shape == (3, 1, 1)
    assert any("PRelu slope" in note for note in spec.notes)
