"""Short real training runs of every library through `python -m cli.train`, as users run it."""
import json
import math

import pytest

from builders import LIBRARIES
from tests.conftest import ROOT, run_cli
from tests.conftest import run_training as _run
from tests.rmsprop_facts import CANONICAL, NATIVE, reference_losses
from tests.rmsprop_facts import key as facts_key

pytestmark = pytest.mark.slow  # starts library workers

PLANT = str(ROOT / "tests" / "planted")


@pytest.fixture(scope="session")
def native_run(tmp_path_factory):
    """All six, each library's own default RMSprop, dropout off, one epoch of 3 batches."""
    return _run(tmp_path_factory.mktemp("native"), "all", "--optimizer", "native", "--epochs", "1",
                "--max-batches", "3", "--no-dropout")


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_every_library_trains_and_reports_its_figures(canonical_run, library):
    proc, folder, run = canonical_run
    row = run["libraries"][library]
    assert row["status"] == "ok", row["reason"]
    assert [s["step"] for s in row["record"]["steps"]] == [0, 1, 2]
    (epoch,) = row["record"]["epochs"]
    for key in ("train_s", "train_loss", "train_acc", "eval_s", "val_loss", "val_acc"):
        assert math.isfinite(epoch[key]), key
    assert 0 <= epoch["val_acc"] <= 1 and epoch["train_s"] > 0
    assert row["record"]["versions"]
    assert 100 < row["summary"]["peak_rss_mib"] < 16384  # MiB: a real process holding a library and the data
    # what the optimizer computed: steps 2 and 3 are the float64 reference's under canonical RMSprop
    got = [s["loss"] for s in row["record"]["steps"]]
    assert got == pytest.approx(reference_losses(facts_key(CANONICAL)), rel=1e-5)


def test_first_three_step_losses_agree_across_all_six(canonical_run):
    proc, folder, run = canonical_run
    agreement = run["step_agreement"]
    assert set(agreement["libraries"]) == set(LIBRARIES)
    assert agreement["agree"], json.dumps(agreement, indent=1)
    assert abs(agreement["median"][0] - 2.3019433) < 1e-5  # onnxruntime's loss of the first batch


def test_results_folder_is_complete(canonical_run):
    proc, folder, run = canonical_run
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in folder.iterdir()}
    assert {"results.json", "results.md", "curves.png", "speed.png", "verification.json"} <= names
    assert not [n for n in names if n.endswith(".part")]
    assert run["environment"]["cores"] and run["environment"]["threads"] and run["environment"]["cpu"]
    table = (folder / "results.md").read_text()
    assert table in proc.stdout and "all agree" in table
    for library in LIBRARIES:
        assert f"| {library} | ok |" in table


# keras-theano's native max-pool gradient (Theano's, to every tied maximum) moves its step-2 loss by 9e-4
NATIVE_LOSS_RTOL = {"keras-theano": 5e-3}


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_native_mode_trains_each_library_s_own_rmsprop(native_run, library):
    proc, _, run = native_run
    assert proc.returncode == 0, proc.stderr
    got = [s["loss"] for s in run["libraries"][library]["record"]["steps"]]
    # the losses the RMSprop of the library's sources predicts, and apart from canonical's where it departs
    assert got == pytest.approx(reference_losses(facts_key(NATIVE[library])), rel=NATIVE_LOSS_RTOL.get(library, 1e-5))
    canonical = reference_losses(facts_key(CANONICAL))
    assert (abs(got[1] / canonical[1] - 1) > 1e-2) == (NATIVE[library] != CANONICAL), (got, canonical)


def test_native_table_names_each_row_s_implementation_and_departures(native_run):
    _, folder, _ = native_run
    rows = {}
    for line in (folder / "results.md").read_text().splitlines():
        if line.startswith("| "):  # the training table's row of each library, the first (the judge's follows)
            rows.setdefault(line.split(" | ")[0][2:], line)
    assert "torch.optim.RMSprop: lr 0.01 (canonical 0.001)" in rows["pytorch"]
    assert "tf.compat.v1.train.RMSPropOptimizer: " in rows["tflearn"] and "mean-square starts at 1" in rows["tflearn"]
    for library in ("tensorflow", "tensorlayer"):  # one rule: TensorFlow 2's own RMSprop
        assert "(tf.optimizers.RMSprop): no departure from canonical" in rows[library]


@pytest.mark.parametrize("bug", ["lr-off", "eps-outside"])
def test_wrong_optimizer_arithmetic_in_one_library_breaks_step_agreement(tmp_path, bug):
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": f"{bug}:pytorch"}
    proc, folder, run = _run(tmp_path, "pytorch", "tensorflow", "keras-tensorflow", "--epochs", "1",
                             "--max-batches", "3", "--no-dropout", env=env)
    agreement = run["step_agreement"]
    assert agreement["agree"] is False
    assert agreement["libraries"]["pytorch"]["first_bad_step"] == 2  # step 1 runs before any update
    assert agreement["libraries"]["tensorflow"]["agrees"] and agreement["libraries"]["keras-tensorflow"]["agrees"]
    assert "departs at step 2" in proc.stdout


@pytest.mark.parametrize("fault,status,reason", [
    ("crash", "crashed", "SIGKILL"), ("hang", "timeout", "worker killed"), ("nan", "nan", "loss became nan")])
def test_a_failing_library_costs_only_its_own_row(tmp_path, fault, status, reason):
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": f"{fault}:pytorch"}
    proc, folder, run = _run(tmp_path, "pytorch", "tensorflow", "--epochs", "1", "--max-batches", "3",
                             "--timeout", "30", env=env)
    assert proc.returncode == 1
    bad, good = run["libraries"]["pytorch"], run["libraries"]["tensorflow"]
    assert bad["status"] == status and reason in bad["reason"], bad["reason"]
    assert good["status"] == "ok" and len(good["record"]["steps"]) == 3
    if fault in ("crash", "hang"):
        assert len(bad["record"]["steps"]) == 1  # the step finished before the fault is kept
    assert f"| pytorch | {status} |" in (folder / "results.md").read_text()
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_bad_input_is_one_line(tmp_path):
    from tests.conftest import assert_one_line_error

    assert_one_line_error(run_cli("cli.train", "pytorch", "caffe", "--out", tmp_path), "caffe")
    assert_one_line_error(run_cli("cli.train", "all", "--experiment", "nope", "--out", tmp_path), "nope")
    assert not list(tmp_path.iterdir())


def test_a_batchnorm_model_ending_in_logits_trains_in_all_six_with_model(zoo, tmp_path):
    """`--model`: the BatchNorm test net (logits out) is verified, then trains in every library; the first three
    step losses agree, and the first is the float64 reference's in ONNX's training mode with the softmax in the
    loss (the batch's statistics, not the running ones, normalise it)."""
    import cifar10
    from spec import experiments, training
    from spec.onnx_import import import_model
    from spec.reference64 import Reference

    proc, folder, run = _run(tmp_path, "all", "--model", zoo["batchnorm"], "--epochs", "1", "--max-batches", "3",
                             "--no-dropout")
    assert proc.returncode == 0, proc.stderr
    assert all(run["libraries"][name]["status"] == "ok" for name in LIBRARIES)
    assert run["step_agreement"]["agree"], json.dumps(run["step_agreement"], indent=1)
    spec = import_model(zoo["batchnorm"])
    x, y, _, _ = training.datasets(cifar10.find(), experiments.load("seed-2017"))
    first, _ = Reference(spec, spec.weights, training=True).loss_and_grads(x[:128], y[:128])
    inference, _ = Reference(spec, spec.weights).loss_and_grads(x[:128], y[:128])
    assert run["step_agreement"]["median"][0] == pytest.approx(first, rel=1e-5)
    assert abs(first - inference) > 1e-3  # the premise: training mode is visible in the first loss
    assert "on batchnorm.onnx" in (folder / "results.md").read_text()


@pytest.mark.parametrize("model", ["blocks", "keras"])
def test_exported_models_train_in_all_six_with_model(zoo, tmp_path, model):
    """A torch-exported net with residual, depthwise and BatchNorm blocks, and a Keras model written by tf2onnx
    (NHWC input): each is verified and trains in every library, the first three step losses agreeing."""
    proc, _, run = _run(tmp_path, "all", "--model", zoo[model], "--epochs", "1", "--max-batches", "3", "--no-dropout")
    assert proc.returncode == 0, proc.stderr
    assert all(run["libraries"][name]["status"] == "ok" for name in LIBRARIES)
    assert run["step_agreement"]["agree"], json.dumps(run["step_agreement"], indent=1)


def test_augmented_images_are_the_harness_s_in_every_library(tmp_path):
    """--augment: every library trains on the harness's crops and flips. The first step loss of the five honest
    libraries is the float64 reference's on the augmented first batch; a library that ignores augmentation (planted
    in PyTorch) trains on the plain batch and departs from the others."""
    import cifar10
    from spec import experiments, training
    from spec.onnx_import import import_model
    from spec.reference64 import Reference
    from spec.seed_model import DEFAULT_PATH

    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": "augment-ignored:pytorch"}
    proc, folder, run = _run(tmp_path, "all", "--augment", "--epochs", "1", "--max-batches", "3", "--no-dropout",
                             env=env)
    agreement = run["step_agreement"]
    # at step 1 the untrained CNN's loss moves only 8e-5 with its images (within the bound); by step 3 it departs
    assert not agreement["libraries"]["pytorch"]["agrees"], json.dumps(agreement, indent=1)
    assert all(a["agrees"] for name, a in agreement["libraries"].items() if name != "pytorch")
    experiment = experiments.load("seed-2017")
    arrays = training.datasets(cifar10.find(), experiment)
    order = training.batch_order(len(arrays[0]), 1, experiment["shuffle"], experiment["seed"])
    data = training.TrainingData(*arrays, order, augment=training.augmentation_config(experiment),
                                 seed=experiment["seed"])
    idx = order[0][:experiment["batch_size"]]
    spec = training.without_dropout(import_model(DEFAULT_PATH))
    augmented, _ = Reference(spec, spec.weights).loss_and_grads(data.images(0, idx), arrays[1][idx])
    plain, _ = Reference(spec, spec.weights).loss_and_grads(arrays[0][idx], arrays[1][idx])
    assert agreement["median"][0] == pytest.approx(augmented, rel=1e-5)
    assert run["libraries"]["pytorch"]["record"]["steps"][0]["loss"] == pytest.approx(plain, rel=1e-5)
    assert "Augmentation: random crop" in (folder / "results.md").read_text()


def test_native_batchnorm_trains_each_library_s_own_layer_and_lists_its_departures(zoo, tmp_path):
    """--batchnorm native: each library's first loss is the float64 reference's under that library's declared
    semantics (PyTorch's epsilon 1e-5 against the net's 1e-3 moves it), and the report lists every departure."""
    import cifar10
    from builders import native_batchnorm
    from spec import batchnorm, experiments, training
    from spec.onnx_import import import_model
    from spec.reference64 import Reference

    proc, folder, run = _run(tmp_path, "all", "--model", zoo["batchnorm"], "--batchnorm", "native", "--epochs", "1",
                             "--max-batches", "2", "--no-dropout")
    assert proc.returncode == 0, proc.stderr
    assert "step_agreement" not in run or not run["step_agreement"]  # semantics differ by library: nothing to agree
    spec = import_model(zoo["batchnorm"])
    x, y, _, _ = training.datasets(cifar10.find(), experiments.load("seed-2017"))
    canonical, _ = Reference(spec, spec.weights, training=True).loss_and_grads(x[:128], y[:128])
    table = (folder / "results.md").read_text()
    assert "BatchNorm semantics: native" in table
    for library in LIBRARIES:
        trained = batchnorm.semantics(spec, native_batchnorm(library), "native")
        want, _ = Reference(trained, spec.weights, training=True).loss_and_grads(x[:128], y[:128])
        got = run["libraries"][library]["record"]["steps"][0]["loss"]
        assert got == pytest.approx(want, rel=1e-5), library
        assert f"- {library}: {native_batchnorm(library).layer}" in table
    pytorch = run["libraries"]["pytorch"]["record"]["steps"][0]["loss"]
    assert abs(pytorch - canonical) > 1e-4  # the premise: the native epsilon is visible in the first loss
