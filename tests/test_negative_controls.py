"""The verifier must fail, and name the right layer, when a builder is wrong.

Each case plants one classic porting bug into the real worker (tests/planted) and runs the CLI."""
import json

import numpy as np
import pytest

from spec.onnx_import import import_model
from tests.conftest import ROOT, SEED_MODEL, run_cli
from verify.compare import compare, load_policy

pytestmark = pytest.mark.slow  # starts library workers

CASES = [
    # bug, library, model, first layer that must be reported
    ("flatten-order", "keras-tensorflow", "seed", "dense1"),
    ("kernel-flip", "keras-theano", "seed", "conv1"),
    ("padding", "tensorflow", "strided", "conv1"),
    ("padding", "tflearn", "strided", "conv1"),
    ("channels-last-view", "pytorch+channels_last", "seed", "conv1"),  # a fast path is verified like a library
    # graph ops (tests/planted/graph_bugs_<library>.py), each caught at its node of a graph model
    ("leakyrelu-slope", "pytorch", "blocks", "depthwise_depthwise_2_LeakyRelu"),  # torch's default slope 0.01
    ("bn-epsilon", "keras-tensorflow", "blocks", "stem_stem_1_BatchNormalization"),  # Keras's default 1e-3
    ("concat-order", "tensorflow", "blocks", "Concat"),
    ("depthwise-mapping", "tflearn", "blocks", "depthwise_depthwise_0_Conv"),  # multiplier and channel axes swapped
    ("bn-scale-bias-swapped", "tensorlayer", "blocks", "stem_stem_1_BatchNormalization"),
    ("dilation-ignored", "keras-theano", "blocks", "right_right_0_Conv"),  # pads shrunk so every shape matches
    ("lrn-alpha", "pytorch", "graph", "lrn11"),  # TensorFlow's convention: alpha not divided by size
    ("channel-shuffle-transposed-wrong", "keras-tensorflow", "graph", "reshape6"),
    ("shift-sign", "tensorlayer", "graph", "sub10"),
    ("shuffle-groups-swapped", "keras-theano", "graph", "reshape6"),  # channels viewed as (C/g, g)
    ("lrn-alpha-not-divided", "tensorflow", "graph", "lrn11"),  # tf.nn.lrn does not divide alpha by size
    ("scale-not-per-channel", "tflearn", "graph", "mul9"),  # reshaped where a transpose was due
    ("pytorch-depthtospace-mode", "pytorch", "layers", "depthtospace12"),  # nn.PixelShuffle (CRD) for ONNX's DCR
    ("depth-to-space-modes-swapped", "keras-tensorflow", "layers", "depthtospace12"),
    ("tensorflow-pixel-shuffle-as-dcr", "tensorflow", "layers", "reshape18"),  # tf.nn.depth_to_space is DCR
    ("pixel-shuffle-as-dcr", "tflearn", "layers", "reshape18"),
    ("deconv-kernel-flipped", "tensorlayer", "layers", "convtranspose5"),  # flipped as if a true convolution
    ("transposed-kernel-unflipped", "keras-theano", "layers", "convtranspose5"),  # Theano convolves: flip is due
    ("selu-constants-rounded", "pytorch", "activations", "selu2"),  # tiny: below the old fixed bound of 1e-4
    ("tile-as-repeat-interleave", "pytorch", "reductions", "tile5"),  # torch's other repeat: each element k times
    ("reduce-axes-not-moved", "tflearn", "reductions", "reducesum3"),  # ONNX's NCHW axes used on NHWC
    ("batch-statistics-at-evaluation", "pytorch", "batchnorm", "batchnormalization2"),  # no running statistics kept
]
TINY = {"selu-constants-rounded"}  # bugs whose error only a bound that scales with the graph can see


@pytest.mark.parametrize("bug,library,model,layer", CASES)
def test_planted_bug_is_caught_and_located(zoo, tmp_path, bug, library, model, layer):
    path = SEED_MODEL if model == "seed" else zoo[model]
    out = tmp_path / "report.json"
    env = {"PYTHONPATH": str(ROOT / "tests" / "planted"), "XV_PLANTED_BUG": bug}
    proc = run_cli("verify", "equivalence", "--model", path, "--libraries", library, "--json", out, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = json.loads(out.read_text())["libraries"][library]
    assert row["status"] == "mismatch"
    where = row["first_divergent_layer"]
    assert where["name"] == layer, where
    assert f"| {library} | MISMATCH |" in proc.stdout and f"{layer} (" in proc.stdout
    assert where["envelopes"] > 2 * row["policy"]["envelope_k"], where  # well beyond numerics, not a near miss
    if bug in TINY:
        assert where["scaled"] < row["policy"]["layer_scaled_tol"], where


def test_without_the_bug_the_same_run_passes(tmp_path):
    env = {"PYTHONPATH": str(ROOT / "tests" / "planted")}  # planting machinery present, no bug named
    proc = run_cli("verify", "equivalence", "--libraries", "keras-tensorflow", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_comparator_locates_a_small_error_in_one_layer():
    spec = import_model(SEED_MODEL)
    rng = np.random.default_rng(0)
    ref = {l.name: rng.standard_normal((4, *l.output_shape)).astype(np.float32) for l in spec.layers}
    policy = load_policy()
    assert compare(spec, ref, ref, policy)["verdict"] == "pass"
    got = {k: v.copy() for k, v in ref.items()}
    got["conv3"][0, 0, 0, 0] += 10 * policy["layer_scaled_tol"] * np.abs(ref["conv3"]).max()
    result = compare(spec, got, ref, policy)
    assert result["verdict"] == "mismatch" and result["first_divergent_layer"]["name"] == "conv3"
    got["conv3"] = got["conv3"][:, :, :-1]
    assert compare(spec, got, ref, policy)["first_divergent_layer"]["shape"] == [4, 64, 14, 15]


def test_a_library_that_fails_verification_is_not_trained_and_the_others_are(tmp_path):
    from tests.conftest import run_training

    env = {"PYTHONPATH": str(ROOT / "tests" / "planted"), "XV_PLANTED_BUG": "flatten-order"}  # keras-tensorflow's
    proc, folder, run = run_training(tmp_path, "keras-tensorflow", "pytorch", "--epochs", "1", "--max-batches", "2",
                                     "--threads", "1", "--no-dropout", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad, good = run["libraries"]["keras-tensorflow"], run["libraries"]["pytorch"]
    assert bad["status"] == "not verified", bad
    assert bad["reason"] == "forward equivalence mismatch: first divergent layer dense1", bad["reason"]
    assert bad["record"]["steps"] == [] and bad["wall_s"] == 0.0
    assert "keras-tensorflow: not trained (forward equivalence mismatch" in proc.stderr
    assert not [p.name for p in folder.iterdir() if p.name.startswith("keras-tensorflow")]  # no worker ran
    verified = json.loads((folder / "verification.json").read_text())["libraries"]
    assert verified["keras-tensorflow"]["first_divergent_layer"]["name"] == "dense1"
    assert good["status"] == "ok" and len(good["record"]["steps"]) == 2
    assert "| keras-tensorflow | not verified |" in (folder / "results.md").read_text()
