"""`python -m verify export`: each library's own exporter on its own build, the exported file verified against the
canonical model. The exporters really run (torch.onnx both ways, tf2onnx from a Keras model, a tf.Module, a
tensorlayer Model and tflearn's frozen graph); a bug planted in a build before it is exported is found."""
import json

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.conftest import ROOT, SEED_MODEL, assert_one_line_error, run_cli
from verify import export

SEED_NODES = ["conv1", "relu1", "conv2", "relu2", "pool1", "dropout1", "conv3", "relu3", "conv4", "relu4", "pool2",
              "dropout2", "flatten", "dense1", "relu5", "dense2", "softmax"]
EXPORTABLE = [("keras-tensorflow", "tf2onnx"), ("pytorch", "torchscript"), ("pytorch", "dynamo"),
              ("tflearn", "tf2onnx"), ("tensorflow", "tf2onnx"), ("tensorlayer", "tf2onnx")]


def _export(tmp_path, *args, env=None):
    """(process, rows by (library, exporter)) of `python -m verify export ARGS --json --out`."""
    out = tmp_path / "export.json"
    proc = run_cli("verify", "export", *args, "--json", out, "--out", tmp_path / "files", env=env)
    rows = {(r["library"], r["exporter"]): r for r in json.loads(out.read_text())["rows"]} if out.exists() else {}
    return proc, rows


def test_keras_theano_has_no_exporter_and_says_so(tmp_path):
    proc, rows = _export(tmp_path, "--libraries", "keras-theano")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = rows["keras-theano", "-"]
    assert row["status"] == "no exporter" and "Theano has no ONNX exporter" in row["message"]
    assert "| keras-theano | - |" in proc.stdout and "NO EXPORTER: Theano has no ONNX exporter" in proc.stdout


def test_a_fast_path_is_refused_in_one_line():
    proc = run_cli("verify", "export", "--libraries", "pytorch+compile")
    assert_one_line_error(proc, "pytorch+compile", "export takes libraries")


def test_bad_input_is_refused_in_one_line_before_any_export(tmp_path):
    assert_one_line_error(run_cli("verify", "export", "--model", tmp_path / "missing.onnx", "--out", tmp_path / "o"),
                          "missing.onnx")
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("")
    assert_one_line_error(run_cli("verify", "export", "--out", tmp_path / "file"), "--out", "is a file")
    assert_one_line_error(run_cli("verify", "export", "--timeout", "0"), "--timeout")


def test_layouts_are_followed_through_an_exported_graph():
    """NHWC input, a Transpose to NCHW, a Conv, back to NHWC, a flatten: each tensor's layout by what its op means."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], name="model/conv1/Conv2D"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["back"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["back", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "k"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 4, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])])
    found = export.tensor_layouts(graph, "NHWC")
    assert [found[t] for t in ("x", "t", "c", "r", "back", "flat", "y")] == \
        ["NHWC", "NCHW", "NCHW", "NCHW", "NHWC", "flat-HWC", "features"]
    assert export._parts("model/conv1/Conv2D") >= {"conv1"}


@pytest.mark.slow
def test_every_exportable_library_passes_on_the_seed_cnn(tmp_path):
    proc, rows = _export(tmp_path, "--model", SEED_MODEL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rows["keras-theano", "-"]["status"] == "no exporter"
    for key in EXPORTABLE:
        row = rows[key]
        assert row["status"] == "pass", (key, row)
        assert row["imports"] == "yes", (key, row["imports"])
        assert row["output"]["argmax_agree"] == row["output"]["samples"] == 64
        assert (tmp_path / "files" / f"{key[0]}.{key[1]}.onnx").is_file()
    assert rows["keras-tensorflow", "tf2onnx"]["input_layout"] == "NHWC"
    assert rows["pytorch", "torchscript"]["input_layout"] == "NCHW"
    for key in [("pytorch", "torchscript"), ("pytorch", "dynamo"), ("keras-tensorflow", "tf2onnx")]:
        matched = {layer["name"] for layer in rows[key]["layers"]}  # the two dropouts are gone at inference
        assert rows[key]["nodes_total"] == 17 and matched == set(SEED_NODES) - {"dropout1", "dropout2"}, key
    assert "Transpose" in rows["keras-tensorflow", "tf2onnx"]["op_counts"]
    assert "| pytorch | dynamo |" in proc.stdout and "exported files kept in" in proc.stderr


@pytest.mark.slow
def test_resnet20_through_torch_and_tf2onnx(tmp_path):
    """Residual adds, BatchNorm and a GlobalAveragePool through both torch exporters and tf2onnx of Keras."""
    proc, rows = _export(tmp_path, "--model", ROOT / "spec" / "resnet20.onnx", "--libraries",
                         "pytorch,keras-tensorflow")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for key in [("pytorch", "torchscript"), ("pytorch", "dynamo"), ("keras-tensorflow", "tf2onnx")]:
        row = rows[key]
        assert row["status"] == "pass", (key, row)
        assert row["nodes_matched"] >= 1 and np.isfinite(row["output"]["max_abs"])
    assert rows["pytorch", "torchscript"]["op_counts"]["Add"] >= 9  # the nine residual blocks
    for key in [("pytorch", "torchscript"), ("keras-tensorflow", "tf2onnx")]:
        # both fold every BatchNorm into the conv before it: the fused Conv stands for the BatchNorm, not the conv
        # (judged as the conv it was 19 envelopes off where gamma, beta, mean and variance are the identity's)
        assert "BatchNormalization" not in rows[key]["op_counts"]
        names = {layer["name"] for layer in rows[key]["layers"]}
        assert "stem_bn" in names and "stem_conv" not in names, key
        assert max(layer["envelopes"] for layer in rows[key]["layers"]) < 5, key


PLANTED = [
    # bug (tests/planted), library, model, the node the exported file must fail at
    ("flatten-order", "keras-tensorflow", "seed", "dense1"),  # Keras's dense rows left in ONNX's (C, H, W) order
    # explicit asymmetric pads built as TensorFlow's 'same', at conv1; tf2onnx names the Conv it fuses with its bias
    # "Conv__25", so the first node the file names is conv1's activation
    ("padding", "tensorflow", "strided", "relu2"),
]


@pytest.mark.slow
@pytest.mark.parametrize("bug,library,model,node", PLANTED)
def test_a_bug_planted_in_a_build_is_found_in_its_exported_file(zoo, tmp_path, bug, library, model, node):
    """Negative control: the build is exported with the bug in it, and the exported file fails at the node its
    names map to."""
    env = {"PYTHONPATH": str(ROOT / "tests" / "planted"), "XV_PLANTED_BUG": bug}
    path = SEED_MODEL if model == "seed" else zoo[model]
    proc, rows = _export(tmp_path, "--model", path, "--libraries", library, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = rows[library, "tf2onnx"]
    assert row["status"] == "mismatch" and row["first_divergent"]["name"] == node, row
    assert row["first_divergent"]["envelopes"] > 2 * 20, row  # far beyond numerics (K = 20), not a near miss
    assert f"first divergent node {node}" in proc.stdout


@pytest.mark.slow
def test_a_batchnorm_folded_into_its_conv_is_judged_there(zoo, tmp_path):
    """`cancellation`'s BatchNorms subtract the large bias of the conv before them (running means of about 4096);
    both torch exporters fold them into the Conv, which then stands for the BatchNorm and passes there."""
    proc, rows = _export(tmp_path, "--model", zoo["cancellation"], "--libraries", "pytorch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for key in [("pytorch", "torchscript"), ("pytorch", "dynamo")]:
        row = rows[key]
        assert "BatchNormalization" not in row["op_counts"], key
        kinds = [layer["kind"] for layer in row["layers"]]
        assert kinds.count("batchnorm") == 6 and "conv" not in kinds, (key, kinds)
        assert max(layer["envelopes"] for layer in row["layers"]) < 5, key
