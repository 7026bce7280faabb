"""`python -m cli.train` refuses what cannot work before it does any work, and leaves no results folder behind
when it stops before its first job; the plan it makes, and the typed options cli.explain builds."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from cli import explain, train
from tests.conftest import ROOT, assert_one_line_error, run_cli
from trainers import plan as planning
from trainers.plan import BadInput, TrainOptions


def _cut(tmp_path, name, test_images=1000):
    """An npz like the CIFAR-10 subset, with only `test_images` test images."""
    import cifar10

    data = cifar10.find()
    path = tmp_path / name
    np.savez(path, x_train=data.x_train[:2000], y_train=data.y_train[:2000], x_test=data.x_test[:test_images],
             y_test=data.y_test[:test_images])
    return path


def test_too_few_test_images_for_verification_is_one_line_and_leaves_no_folder(tmp_path):
    small = _cut(tmp_path, "small.npz", test_images=10)
    out = tmp_path / "results"
    proc = run_cli("cli.train", "pytorch", "--epochs", "1", "--max-batches", "1", "--data", small, "--out", out)
    assert_one_line_error(proc, "small.npz", "x_test has 10 images", "64 are needed")
    assert not out.exists()


def test_out_naming_a_file_is_one_line_naming_it(tmp_path):
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    proc = run_cli("cli.train", "pytorch", "--epochs", "1", "--max-batches", "1", "--out", taken)
    assert_one_line_error(proc, str(taken), "is a file")
    proc = run_cli("cli.train", "pytorch", "--epochs", "1", "--max-batches", "1", "--out", taken / "below")
    assert_one_line_error(proc, str(taken), "is a file")
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize("args,named", [
    (["--timeout", "-1"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--seed", "-1"], "--seed"),
    (["--workers", "0"], "--workers"),
    (["--experiment", "verification"], "not one to train"),
    (["--optimizer", "adam"], "--optimizer"),
    (["--data", "/nonexistent/cifar.npz"], "no such file"),
    (["--experiment", "resnet20"], "--train-images N takes the first N"),  # 50,000 asked, 4,000 here
    (["--experiment", "resnet20", "--train-images", "4001"], "ask for at most what the data holds"),
    (["--train-images", "0"], "--train-images"),
    (["--model", str(ROOT / "tests" / "planted" / "__init__.py")], "__init__.py"),  # not an ONNX file
    (["--model", str(ROOT / "spec" / "resnet20.onnx"), "--init", "seeded"], "--init seeded"),
])
def test_every_argument_is_checked_before_any_work(tmp_path, args, named):
    out = tmp_path / "results"
    proc = run_cli("cli.train", "pytorch", "--epochs", "1", "--max-batches", "1", *args, "--out", out)
    assert_one_line_error(proc, named)  # one line: nothing was verified or trained before it
    assert not out.exists()


def _verifying(pid: int) -> bool:
    """Whether process `pid` has a verification worker running (children come and go while we look)."""
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "builders.worker" in " ".join(child.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


@pytest.mark.slow
def test_an_interruption_during_verification_leaves_no_folder(tmp_path):
    out = tmp_path / "results"
    run = subprocess.Popen([sys.executable, "-m", "cli.train", "pytorch", "--epochs", "1", "--max-batches", "1",
                            "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not _verifying(run.pid):
            assert time.monotonic() < deadline and run.poll() is None, "no verification worker started"
            time.sleep(0.1)
        workers = psutil.Process(run.pid).children(recursive=True)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130 and "Traceback" not in stderr, stderr
    assert "during verification; nothing was written" in stderr
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    assert not out.exists() or not list(out.iterdir())


def test_parser_errors_are_one_line_too(tmp_path):
    assert_one_line_error(run_cli("cli.train", "pytorch", "--epochs", "x", "--out", tmp_path), "--epochs")
    assert_one_line_error(run_cli("cli.train", "pytorch", "--bogus", "--out", tmp_path), "--bogus")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("change,message", [
    ({"libraries": []}, "name the libraries"),
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"timeout": float("inf")}, "--timeout must be a positive number"),
    ({"seed": -3}, "--seed must be at least 0"),
    ({"repeat": 2, "seeds": 2}, "do not combine"),
    ({"repeat": 2, "executor": "dask"}, "needs --executor local"),
    ({"scheduler": "tcp://127.0.0.1:1"}, "--scheduler needs --executor dask"),
    ({"dropout": "sometimes"}, "--dropout must be one of"),
])
def test_options_built_by_code_are_checked_like_the_command_line(change, message):
    with pytest.raises(BadInput, match=message):
        TrainOptions(**{"libraries": ["pytorch"], **change}).check()


def test_the_plan_decides_the_runs_of_each_mode():
    single = planning.make(TrainOptions(["all"], epochs=1, max_batches=2, threads=1))
    assert single.mode == "single" and [r.key for r in single.runs] == ["2017"] and single.images == 256
    assert single.names[:2] == ["keras-theano", "keras-tensorflow"] and single.steps_total == 2
    sweep = planning.make(TrainOptions(["pytorch"], seeds=3, seed=5, dropout="identical"), like=single)
    assert sweep.mode == "sweep" and [(r.key, r.tag) for r in sweep.runs] == [("5", "seed 5"), ("6", "seed 6"),
                                                                             ("7", "seed 7")]
    assert sweep.arrays is single.arrays and sweep.config["dropout_masks"] == "harness"
    assert sweep.folder_name("T") == "T-seed-2017-canonical-identicaldropout-3seeds"
    bench = planning.make(TrainOptions(["pytorch"], repeat=2, dropout="off"), like=single)
    assert bench.mode == "benchmark" and [r.seed for r in bench.runs] == [2017, 2017]
    assert bench.folder_name("T") == "T-seed-2017-canonical-nodropout-repeat2" and not bench.config["dropout"]


def test_the_plan_trains_resnet20_on_the_images_at_hand_and_any_model_given():
    resnet = planning.make(TrainOptions(["pytorch"], experiment="resnet20", train_images=4000))
    assert len(resnet.arrays[0]) == 4000 and resnet.model_path.name == "resnet20.onnx"
    assert sum(n.kind == "batchnorm" for n in resnet.spec.layers) == 21 and resnet.config["epochs"] == 10
    other = planning.make(TrainOptions(["pytorch"], model=str(ROOT / "spec" / "resnet20.onnx")), like=resnet)
    assert other.arrays is not resnet.arrays and len(other.arrays[0]) == 2000  # seed-2017's images, its own model
    assert other.folder_name("T") == "T-seed-2017-resnet20-canonical"


def test_the_plan_refuses_unknown_libraries_and_experiments():
    with pytest.raises(BadInput, match="caffe"):
        planning.make(TrainOptions(["caffe"]))
    with pytest.raises(BadInput, match="no experiment 'nope'"):
        planning.make(TrainOptions(["pytorch"], experiment="nope"))


def test_explain_builds_the_options_the_train_command_would_parse():
    args = explain.parser().parse_args(["--seeds", "3", "--epochs", "1", "--max-batches", "2", "--threads", "1",
                                        "--out", "somewhere", "--progress", "lines"])
    sweeps = explain.sweep_options(args)
    assert list(sweeps) == ["native", "canonical", "identical"]
    common = ["all", "--experiment", "seed-2017", "--seeds", "3", "--epochs", "1", "--max-batches", "2",
              "--threads", "1", "--out", "somewhere", "--progress", "lines"]
    for key, argv in (("native", ["--optimizer", "native"]), ("canonical", []), ("identical", ["--dropout",
                                                                                               "identical"])):
        assert sweeps[key] == train.options_of(train.parser().parse_args(common + argv)), key


def test_a_folder_of_the_old_command_resumes_from_its_argv(tmp_path):
    (tmp_path / "invocation.json").write_text(json.dumps({"argv": ["pytorch", "--seeds", "2", "--no-dropout"]}))
    assert train.resumed(tmp_path) == TrainOptions(["pytorch"], seeds=2, dropout="off")
    (tmp_path / "invocation.json").write_text(json.dumps({"options": {"libraries": ["pytorch"], "seeds": "two"}}))
    with pytest.raises(BadInput, match="seeds: expected int"):
        train.resumed(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(BadInput, match="this run finished"):
        train.resumed(tmp_path)


@pytest.mark.slow
def test_the_gate_verifies_the_training_build_not_the_default_one(tmp_path):
    # with identical dropout, pytorch trains the harness-mask variant; the gate must build and verify that one
    from tests.conftest import run_training

    proc, folder, _ = run_training(tmp_path, "pytorch", "--epochs", "1", "--max-batches", "1", "--threads", "1",
                                   "--dropout", "identical")
    assert proc.returncode == 0, proc.stderr
    verified = json.loads((folder / "verification.json").read_text())
    assert verified["build_options"] == {"pytorch": {"dropout_masks": "harness"}}
    assert verified["libraries"]["pytorch"]["status"] == "pass"
