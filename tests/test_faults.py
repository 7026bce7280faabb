"""Failing workers and interrupted runs, with real processes and real signals: each fault costs its own row
only, nothing is orphaned, an interrupted results folder is complete and --resume finishes only what is missing.
(SIGKILL, hang and NaN faults are in test_training.)"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT, run_cli, run_training

pytestmark = pytest.mark.slow  # starts library workers

PLANT = str(ROOT / "tests" / "planted")


@pytest.mark.parametrize("fault,status,reason", [
    ("malformed-output", "crashed", "malformed result"),
    ("env-missing", "not verified", "cannot start the worker")])
def test_a_worker_that_writes_garbage_or_cannot_start_costs_only_its_row(tmp_path, fault, status, reason):
    # the root too: the missing environment is planted in the orchestrator, started before it is on sys.path
    env = {"PYTHONPATH": os.pathsep.join((PLANT, str(ROOT))), "XV_PLANTED_BUG": f"{fault}:pytorch"}
    proc, folder, run = run_training(tmp_path, "pytorch", "tensorflow", "--epochs", "1", "--max-batches", "2",
                                     env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    bad, good = run["libraries"]["pytorch"], run["libraries"]["tensorflow"]
    assert bad["status"] == status and reason in bad["reason"], bad
    assert good["status"] == "ok" and len(good["record"]["steps"]) == 2
    if fault == "malformed-output":
        assert len(bad["record"]["steps"]) == 2  # the events it streamed before the bad file are kept
    assert f"| pytorch | {status} |" in (folder / "results.md").read_text()


def test_verify_survives_a_worker_that_writes_malformed_outputs(tmp_path):
    out = tmp_path / "report.json"
    env = {"PYTHONPATH": os.pathsep.join((PLANT, str(ROOT))), "XV_PLANTED_BUG": "malformed-layer-outputs:pytorch"}
    proc = run_cli("verify", "equivalence", "--libraries", "pytorch,tensorflow", "--json", out, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    rows = json.loads(out.read_text())["libraries"]
    assert rows["pytorch"]["status"] == "crashed" and "malformed result" in rows["pytorch"]["message"]
    assert rows["tensorflow"]["status"] == "pass"


def _wait_for(predicate, timeout=300, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_stops_its_workers_keeps_what_finished_and_resumes(tmp_path, signum):
    out = tmp_path / "results"
    # tensorflow hangs at its second step, so the signal always lands while its worker is training
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((PLANT, str(ROOT))), XV_PLANTED_BUG="hang:tensorflow")
    run = subprocess.Popen([sys.executable, "-m", "cli.train", "pytorch", "tensorflow", "keras-tensorflow",
                            "--epochs", "1", "--max-batches", "2", "--out", str(out)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def tensorflow_training():
            return any("trainers.worker" in " ".join(c.cmdline()) and "tensorflow" in c.cmdline()
                       for c in psutil.Process(run.pid).children(recursive=True))
        _wait_for(lambda: list(out.glob("*/rows/*/pytorch.json")) and tensorflow_training(), what="tensorflow")
        workers = psutil.Process(run.pid).children(recursive=True)
        run.send_signal(signum)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr, stderr
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {[p.cmdline() for p in alive]}"

    folder, = out.iterdir()
    result = json.loads((folder / "results.json").read_text())
    assert result["interrupted"]["signal"] == signal.Signals(signum).name
    assert result["interrupted"]["missing"] == ["tensorflow", "keras-tensorflow"]
    libraries = result["libraries"]
    assert libraries["pytorch"]["status"] == "ok" and len(libraries["pytorch"]["record"]["steps"]) == 2
    assert libraries["tensorflow"]["status"] == libraries["keras-tensorflow"]["status"] == "interrupted"
    assert (folder / "INTERRUPTED").exists() and "--resume" in (folder / "results.md").read_text()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".part")]

    resumed = run_cli("cli.train", "--resume", folder)  # without the planted hang
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 1 of 3 jobs already done" in resumed.stderr
    final = json.loads((folder / "results.json").read_text())
    assert "interrupted" not in final and not (folder / "INTERRUPTED").exists()
    assert all(row["status"] == "ok" for row in final["libraries"].values())
    assert final["libraries"]["pytorch"]["wall_s"] == libraries["pytorch"]["wall_s"]  # kept, not trained again


def test_an_interrupted_explanation_stops_and_says_how_to_finish(tmp_path):
    out = tmp_path / "results"
    run = subprocess.Popen([sys.executable, "-m", "cli.explain", "--seeds", "2", "--epochs", "1",
                            "--max-batches", "2", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(list(out.glob("*/rows/*/*.json"))) >= 2, what="the first sweep's first jobs")
        workers = psutil.Process(run.pid).children(recursive=True)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130 and "Traceback" not in stderr, stderr
    assert "interrupted in sweep native" in stderr and "--resume" in stderr, stderr
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {[p.cmdline() for p in alive]}"
    folder, = out.iterdir()  # the first sweep only, marked; no later sweep started, no explanation written
    assert (folder / "INTERRUPTED").exists() and (folder / "results.json").exists()


def test_resume_refuses_what_it_cannot_resume(tmp_path):
    from tests.conftest import assert_one_line_error

    assert_one_line_error(run_cli("cli.train", "--resume", tmp_path), "not a results folder")
    proc = run_cli("cli.train", "--resume", tmp_path, "pytorch")
    assert proc.returncode == 2 and "no other arguments" in proc.stderr


def test_two_runs_started_at_once_keep_to_their_own_folders(tmp_path):
    out = tmp_path / "results"
    args = [sys.executable, "-m", "cli.train", "pytorch", "--epochs", "1", "--max-batches", "1", "--out", str(out)]
    runs = [subprocess.Popen([*args, "--seed", str(seed)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for seed in (1, 2)]
    for run in runs:
        run.communicate(timeout=600)
        assert run.returncode == 0
    folders = sorted(out.iterdir())
    assert len(folders) == 2
    seeds = sorted(json.loads((f / "results.json").read_text())["config"]["seed"] for f in folders)
    assert seeds == [1, 2]


def test_a_results_folder_name_taken_in_the_same_second_gets_a_suffix(tmp_path):
    from trainers.dispatch import new_folder

    assert [new_folder(tmp_path, "run").name for _ in range(3)] == ["run", "run-2", "run-3"]


def test_two_processes_building_one_environment_build_it_once(tmp_path):
    # a copy of the environment manager with a one-package requirements file; both processes ask for it at once
    project = tmp_path / "project"
    shutil.copytree(ROOT / "envs", project / "envs", ignore=shutil.ignore_patterns("*.txt", "__pycache__"))
    (project / "envs" / "main.txt").write_text("six==1.17.0\n")
    (project / "envs" / "theano.txt").write_text("six==1.17.0\n")
    code = "import envs, sys; print(envs.ensure('main'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=project, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum(err.count("creating the 'main' environment") for _, err in outputs) == 1, outputs
    assert outputs[0][0] == outputs[1][0]
    python = project / ".envs" / "main" / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import six"]).returncode == 0
