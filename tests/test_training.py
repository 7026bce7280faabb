"""Short real training runs of every library through `python -m cli.train`, as users run it."""
import json
import math

import pytest

from builders import FRAMEWORKS
from tests.conftest import ROOT, run_cli, run_training as _run

PLANT = str(ROOT / "tests" / "planted")


@pytest.fixture(scope="session")
def native_run(tmp_path_factory):
    """All six, each library's own default RMSprop, dropout on, one epoch of 2 batches."""
    return _run(tmp_path_factory.mktemp("native"), "all", "--optimizer", "native", "--epochs", "1",
                "--max-batches", "2")


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_every_library_trains_and_reports_its_figures(canonical_run, framework):
    proc, folder, run = canonical_run
    row = run["libraries"][framework]
    assert row["status"] == "ok", row["reason"]
    assert [s["step"] for s in row["record"]["steps"]] == [0, 1, 2]
    (epoch,) = row["record"]["epochs"]
    for key in ("train_s", "train_loss", "train_acc", "eval_s", "val_loss", "val_acc"):
        assert math.isfinite(epoch[key]), key
    assert 0 <= epoch["val_acc"] <= 1 and epoch["train_s"] > 0
    assert row["record"]["versions"]
    assert 100 < row["summary"]["peak_rss_mib"] < 16384  # MiB: a real process holding a framework and the data
    assert row["record"]["optimizer"]["eps_placement"] == "inside sqrt" and row["record"]["optimizer"]["ms_init"] == 0
    assert row["departures"] == []


def test_first_three_step_losses_agree_across_all_six(canonical_run):
    proc, folder, run = canonical_run
    agreement = run["step_agreement"]
    assert set(agreement["libraries"]) == set(FRAMEWORKS)
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
    for framework in FRAMEWORKS:
        assert f"| {framework} | ok |" in table


def test_native_mode_shows_who_departs_from_canonical(native_run):
    proc, folder, run = native_run
    assert proc.returncode == 0, proc.stderr
    dep = {name: " ; ".join(row["departures"]) for name, row in run["libraries"].items()}
    assert "lr 0.01" in dep["pytorch"] and "rho 0.99" in dep["pytorch"] and "outside sqrt" in dep["pytorch"]
    assert "outside sqrt" in dep["keras-theano"]
    assert "mean-square starts at 1" in dep["tflearn"] and "mean-square starts at 1" in dep["tensorflow"]
    assert "gradients clipped to global norm 5" in dep["tflearn"]
    assert dep["keras-tensorflow"] == "" and dep["tensorlayer"] == ""
    assert "lr 0.01 (canonical 0.001)" in (folder / "results.md").read_text()


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
