"""`python -m verify steps`: gradients and RMSprop updates of every library against the float64 reference."""
import io
import json

import pytest

from builders import LIBRARIES
from tests.conftest import ROOT, SEED_MODEL, run_cli
from tests.rmsprop_facts import CANONICAL, NATIVE
from verify import steps

pytestmark = pytest.mark.slow  # starts library workers

PLANT = str(ROOT / "tests" / "planted")


def _steps(tmp_path, *args, env=None):
    out = tmp_path / "steps.json"
    proc = run_cli("verify", "steps", *args, "--json", out, env=env)
    assert out.exists(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    return _steps(tmp_path_factory.mktemp("steps"), "--steps", "3")


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_every_library_matches_the_reference_step_by_step(canonical, library):
    _, report = canonical
    entry = report["libraries"][library]
    assert entry["status"] == "pass", json.dumps({k: v for k, v in entry.items() if k != "steps"}, indent=1)
    assert len(entry["steps"]) == 3 and len(entry["steps"][0]["tensors"]) == 12


def test_canonical_run_exits_0_and_prints_the_step_table(canonical):
    proc, _ = canonical
    assert proc.returncode == 0, proc.stderr
    assert "| 3 |" in proc.stdout and all(f"- {f}: PASS" in proc.stdout for f in LIBRARIES)


@pytest.mark.parametrize("bug,library,tensor_kind,what", [
    ("lr-off", "pytorch", None, "update"),
    ("eps-outside", "pytorch", None, "update"),
    ("theano-pool-gradient", "keras-theano", "conv", "gradient"),
])
def test_wrong_arithmetic_fails_at_the_first_step_and_names_the_tensor(tmp_path, bug, library, tensor_kind, what):
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": f"{bug}:{library}"}
    proc, report = _steps(tmp_path, "--steps", "2", "--libraries", library, env=env)
    assert proc.returncode == 1
    failure = report["libraries"][library]["first_failure"]
    assert failure["step"] == 1 and failure["what"] == what, failure
    assert failure["tensor"].endswith((".weight", ".bias"))
    if tensor_kind:
        assert failure["tensor"].startswith(tensor_kind), failure
    assert f"first at step 1, tensor {failure['tensor']}" in proc.stdout


def test_a_wrong_gradient_behind_a_departing_update_fails_native_mode(tmp_path):
    # native pytorch departs from canonical first at conv1.weight; its dense2.weight gradient has the wrong sign
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": "grad-sign-flip:pytorch"}
    proc, report = _steps(tmp_path, "--steps", "2", "--optimizer", "native", "--libraries", "pytorch", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    entry = report["libraries"]["pytorch"]
    assert entry["status"] == "mismatch"
    assert (entry["first_update_departure"]["step"], entry["first_update_departure"]["tensor"]) == (1, "conv1.weight")
    gradient = entry["first_gradient_failure"]
    assert (gradient["step"], gradient["tensor"]) == (1, "dense2.weight") and gradient["rel_l2"] == pytest.approx(2)
    assert entry["first_failure"] == gradient
    assert "- pytorch: MISMATCH: first at step 1, tensor dense2.weight (gradient rel L2" in proc.stdout
    assert "update departs from canonical: first at step 1, tensor conv1.weight" in proc.stdout


def test_native_mode_fails_a_library_that_does_not_run_the_rmsprop_its_row_names(tmp_path):
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": "misdeclared:pytorch"}  # says eps inside the root, runs it outside
    proc, report = _steps(tmp_path, "--steps", "1", "--optimizer", "native", "--libraries", "pytorch", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    entry = report["libraries"]["pytorch"]
    assert entry["status"] == "mismatch" and entry["first_gradient_failure"] is None
    assert entry["first_failure"] == entry["first_declared_mismatch"] and entry["first_failure"]["step"] == 1
    assert "first at step 1, tensor" in proc.stdout and "declared update rel L2" in proc.stdout


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return _steps(tmp_path_factory.mktemp("native"), "--steps", "2", "--optimizer", "native")


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_native_mode_measures_each_library_s_own_rmsprop(native, library):
    proc, report = native
    entry, policy = report["libraries"][library], report["policy"]
    known = NATIVE[library]
    for fact, want in known.items():  # the row names the RMSprop the library's sources define ...
        got = entry["optimizer"][fact]
        assert got == (want if isinstance(want, str) else pytest.approx(want, rel=1e-6)), (fact, got, want)
    # computed: the library's updates are that RMSprop applied to its own gradients, at every step and tensor ...
    assert entry["first_declared_mismatch"] is None
    assert all(s["max_declared_update_rel_l2"] <= policy["update_rel_l2"] for s in entry["steps"])
    # ... and they depart from canonical's exactly where that RMSprop is not canonical
    assert (entry["first_update_departure"] is not None) == (known != CANONICAL), entry["first_update_departure"]
    if library == "keras-theano":  # Theano's own max-pool gradient goes to every tied maximum
        assert entry["status"] == "mismatch" and entry["first_gradient_failure"]["tensor"].startswith("conv")
    else:
        assert entry["status"] == ("pass" if known == CANONICAL else "departs")
        assert f"- {library}: {entry['status'].upper()}" in proc.stdout
    assert f"runs {entry['optimizer']['impl']}: lr " in proc.stdout


def _output_layer_scaled(path, factor: float):
    """The seed model with its output layer's weights times `factor`: its biases are 0, so the logits are scaled
    by `factor` and the first-step gradients grow (global norm 0.55 -> 26 at 20) with no probability at the loss
    clip yet."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(SEED_MODEL)
    (weight,) = (t for t in model.graph.initializer if t.name == "dense2.weight")
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * factor, weight.name))
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("bug", [None, "tflearn-default-clip:tflearn"])
def test_tflearn_s_default_gradient_clip_is_caught_in_canonical_mode(tmp_path, monkeypatch, bug):
    # seed-2017's first gradient norms (0.2-3.7) stay under tflearn.DNN's default clip at global norm 5, so
    # only a model with larger gradients shows whether canonical mode really turned the clip off
    if bug:
        monkeypatch.setenv("PYTHONPATH", PLANT)
        monkeypatch.setenv("XV_PLANTED_BUG", bug)
    model = _output_layer_scaled(tmp_path / "large_gradients.onnx", 20)
    report = steps.run(["tflearn"], 2, "canonical", model=model, log=io.StringIO())
    entry = report["libraries"]["tflearn"]
    assert entry["steps"][0]["reference_grad_norm"] > 20  # the premise: far above the clip
    if bug is None:
        assert entry["status"] == "pass" and report["passed"], steps.table(report)
        return
    assert not report["passed"] and entry["status"] == "mismatch"
    failure = entry["first_failure"]
    assert (failure["step"], failure["tensor"], failure["what"]) == (1, "conv1.weight", "gradient"), failure
    assert entry["steps"][0]["grad_norm"] == pytest.approx(5.0, rel=1e-4)  # what the clip left
    assert "first at step 1, tensor conv1.weight (gradient rel L2" in steps.table(report)
    assert "global gradient norm 5, reference 2" in steps.table(report)


# --- BatchNorm in training mode: a model with running statistics, ending in logits ------------------------------

@pytest.fixture(scope="module")
def batchnorm(zoo, tmp_path_factory):
    return _steps(tmp_path_factory.mktemp("batchnorm"), "--steps", "2", "--model", zoo["batchnorm"])


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_every_library_trains_batchnorm_as_onnx_defines(batchnorm, library):
    """Each library's gradients through the batch statistics and the running mean and variance after each step
    match ONNX's training-mode BatchNorm in the float64 reference; the softmax of the logits is the loss's."""
    _, report = batchnorm
    entry = report["libraries"][library]
    assert entry["status"] == "pass", json.dumps({k: v for k, v in entry.items() if k != "steps"}, indent=1)
    state = [r for r in entry["steps"][0]["tensors"] if "state_rel_l2" in r]
    assert len(state) == 8 and {r["tensor"].rsplit(".", 1)[1] for r in state} == {"mean", "var"}
    assert all(s["max_state_rel_l2"] <= report["policy"]["state_rel_l2"] for s in entry["steps"])


@pytest.mark.parametrize("bug,tensor", [
    ("torch-momentum", "batchnormalization2.mean"),  # the first statistic moved, nine times too far
    # n / (n - 1): 2e-5 over the 32,768 values per channel of the 16x16 BatchNorms (under the 5e-5 tolerance, which
    # TensorFlow's float32 reductions need on ResNet-20), 1.2e-4 over 8,192 at 8x8, 6e-4 over 128 when pooled
    ("unbiased-running-variance", "batchnormalization8.var"),
])
def test_wrong_running_statistics_fail_at_the_first_step_and_name_the_tensor(zoo, tmp_path, bug, tensor):
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": f"{bug}:pytorch"}
    proc, report = _steps(tmp_path, "--steps", "2", "--libraries", "pytorch", "--model", zoo["batchnorm"], env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    entry = report["libraries"]["pytorch"]
    assert entry["first_gradient_failure"] is None  # the gradients are right: only the statistics are off
    failure = entry["first_failure"]
    assert (failure["step"], failure["what"], failure["tensor"]) == (1, "running statistics", tensor), failure
    assert f"first at step 1, tensor {tensor} (running statistics rel L2" in proc.stdout
    pooled = next(r for r in entry["steps"][0]["tensors"] if r["tensor"] == "batchnormalization11.var")
    assert pooled["state_rel_l2"] > 10 * report["policy"]["state_rel_l2"]  # further off where the batch is all there is


def test_steps_refuses_a_model_that_is_not_cifar_shaped(zoo):
    proc = run_cli("verify", "steps", "--model", zoo["layers"])  # a 3x12x12 input
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "(3, 32, 32) input and 10 classes" in proc.stderr


# --- native BatchNorm: each library's own layer and defaults, judged against what its row declares --------------

@pytest.fixture(scope="module")
def native_batchnorm(zoo, tmp_path_factory):
    return _steps(tmp_path_factory.mktemp("bn-native"), "--steps", "2", "--model", zoo["batchnorm"],
                  "--batchnorm", "native")


# the zoo net's BatchNorms: epsilon 1e-3, momentum 0.9 (one 0.8)
NATIVE_DEPARTURES = {
    "pytorch": ["BatchNorm momentum 0.9 (canonical 0.8)", "BatchNorm epsilon 1e-05 (canonical 0.001)",
                "BatchNorm running variance unbiased (canonical biased)"],
    "keras-theano": ["BatchNorm momentum 0.99 (canonical 0.9)", "BatchNorm running variance keras2 (canonical biased)"],
    "keras-tensorflow": ["BatchNorm momentum 0.99 (canonical 0.9)"],
    "tensorflow": ["BatchNorm momentum 0.99 (canonical 0.9)"],
    "tflearn": ["BatchNorm momentum 0.9 (canonical 0.8)", "BatchNorm epsilon 1e-05 (canonical 0.001)"],
    "tensorlayer": ["BatchNorm momentum 0.9 (canonical 0.8)", "BatchNorm epsilon 1e-05 (canonical 0.001)"],
}


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_every_library_s_native_batchnorm_does_what_its_row_declares(native_batchnorm, library):
    """Native mode: the reference takes each library's declared momentum, epsilon and running-variance estimator;
    gradients and running statistics match it, so every listed departure is one the library really makes."""
    _, report = native_batchnorm
    entry = report["libraries"][library]
    assert entry["status"] == "pass", json.dumps({k: v for k, v in entry.items() if k != "steps"}, indent=1)
    assert sorted(entry["batchnorm"]) == sorted(NATIVE_DEPARTURES[library])
    assert all(s["max_state_rel_l2"] <= report["policy"]["state_rel_l2"] for s in entry["steps"])


def test_a_native_layer_that_is_not_what_its_row_declares_fails_at_step_1(zoo, tmp_path):
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": "native-layer-biased:pytorch"}
    proc, report = _steps(tmp_path, "--steps", "2", "--libraries", "pytorch", "--model", zoo["batchnorm"],
                          "--batchnorm", "native", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failure = report["libraries"]["pytorch"]["first_failure"]
    # biased against unbiased: n / (n - 1), first beyond the tolerance at the 8x8 BatchNorm (8,192 values per channel)
    assert (failure["step"], failure["what"], failure["tensor"]) == (1, "running statistics", "batchnormalization8.var")
