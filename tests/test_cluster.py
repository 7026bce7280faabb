"""The "existing cluster" path as a user takes it: a Dask scheduler and workers started as separate processes in
another checkout (loopback only), `python -m cli.train ... --executor dask --scheduler ADDRESS` from this one."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.slow  # starts library workers

DASK = Path(sys.executable).with_name("dask")  # the main environment's own `dask` command
START_S = 90  # for a scheduler or its workers to come up on a busy machine
RUN_S = 600  # for one small training run
RUN = ["pytorch", "--epochs", "1", "--max-batches", "2", "--threads", "1"]
LINKED = (".envs",)  # a checkout's environments, shared with this one (the compile caches are per user already)


def _checkout(target: Path, environments: bool = True) -> Path:
    """Another checkout of this project: its files, and unless told otherwise this one's environments."""
    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
        ".git", *LINKED, "results", "data", "__pycache__", ".pytest_cache", ".ruff_cache"))
    for name in LINKED if environments else ():
        if (ROOT / name).exists():
            (target / name).symlink_to((ROOT / name).resolve())
    return target


class Cluster:
    """Scheduler and worker processes, each in a process group of its own, all ended at close()."""

    def __init__(self, folder: Path):
        self.folder, self.procs, self.address = folder, [], None
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a user's plain shell

    def _start(self, name: str, command: list, cwd: Path, env: dict | None = None) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "w") as log:
            proc = subprocess.Popen(command, cwd=cwd, env={**self.env, **(env or {})}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def scheduler(self, command: list, cwd: Path) -> str:
        """Start a scheduler on a free loopback port; its address."""
        path = self.folder / "scheduler.json"
        proc = self._start("scheduler", [*command, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                         "--scheduler-file", str(path)], cwd)
        deadline = time.monotonic() + START_S
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, self.log("scheduler")
            time.sleep(0.2)
        self.address = json.loads(path.read_text())["address"]
        return self.address

    def worker(self, command: list, cwd: Path, processes: int = 1, env: dict | None = None) -> None:
        """Start `processes` workers and wait until the scheduler has them."""
        from distributed import Client

        before = self.workers()
        self._start(f"worker{len(self.procs)}", [*command, self.address, "--host", "127.0.0.1", "--no-dashboard",
                                                 "--nworkers", str(processes)], cwd, env)
        with Client(self.address, timeout=START_S) as client:
            client.wait_for_workers(before + processes, timeout=START_S)

    def workers(self) -> int:
        from distributed import Client

        with Client(self.address, timeout=START_S) as client:
            return len(client.scheduler_info()["workers"])

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                if proc.poll() is not None:
                    break
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue


@pytest.fixture
def cluster(tmp_path):
    started = Cluster(tmp_path)
    yield started
    started.close()


@pytest.fixture(scope="module")
def other_checkout(tmp_path_factory):
    return _checkout(tmp_path_factory.mktemp("elsewhere") / "checkout")


def _train(tmp_path: Path, *args):
    """`cli.train RUN ARGS` from this checkout: (process, results.json or None)."""
    out = tmp_path / "results"
    proc = run_cli("cli.train", *RUN, *args, "--out", out, timeout=RUN_S)
    folders = list(out.iterdir()) if out.exists() else []
    return proc, (json.loads((folders[0] / "results.json").read_text()) if folders else None)


def _losses(run: dict) -> dict:
    return {(seed, name): [s["loss"] for s in row["record"]["steps"]]
            for seed, rows in run["runs"].items() for name, row in rows.items()}


def test_a_cluster_started_in_another_checkout_trains_as_here(cluster, other_checkout, tmp_path):
    module = [sys.executable, "-m", "trainers.cluster"]
    address = cluster.scheduler([*module, "scheduler"], other_checkout)
    cluster.worker([*module, "worker"], other_checkout, processes=2)
    proc, remote = _train(tmp_path / "remote", "--seeds", "2", "--executor", "dask", "--scheduler", address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"dask: 2 jobs on {address} (2 workers)" in proc.stderr
    _, local = _train(tmp_path / "local", "--seeds", "2")
    for key, losses in _losses(local).items():
        assert losses and _losses(remote)[key] == pytest.approx(losses, rel=1e-6), key
    assert {row["executor"]["kind"] for rows in remote["runs"].values() for row in rows.values()} == {"dask"}
    for name in ("scheduler", "worker1"):  # the scheduler unpickled the jobs, no worker lost data
        assert "Traceback" not in cluster.log(name) and "KeyError" not in cluster.log(name), cluster.log(name)


def test_the_plain_dask_commands_started_in_a_checkout_run_the_jobs(cluster, other_checkout, tmp_path):
    """What a new user tries first: `dask scheduler` and `dask worker` in a checkout with its environments."""
    address = cluster.scheduler([str(DASK), "scheduler"], other_checkout)
    cluster.worker([str(DASK), "worker"], other_checkout)
    proc, run = _train(tmp_path, "--executor", "dask", "--scheduler", address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = run["runs"][str(run["seeds"][0])]["pytorch"]
    assert row["status"] == "ok" and row["executor"]["kind"] == "dask" and len(row["record"]["steps"]) == 2


def test_a_job_the_cluster_cannot_run_becomes_a_failed_row(cluster, other_checkout, tmp_path):
    from trainers.executors import Job, run_dask

    address = cluster.scheduler([sys.executable, "-m", "trainers.cluster", "scheduler"], other_checkout)
    cluster.worker([sys.executable, "-m", "trainers.cluster", "worker"], other_checkout)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "config.json").write_text("{}")
    ((job, row),) = run_dask([Job("no-such-library", "0", tmp_path / "job", 1)], 1, 60, tmp_path, address, 1)
    assert row["status"] == "failed" and "no-such-library" in row["reason"], row
    assert row["executor"]["kind"] == "dask" and job.library == "no-such-library"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _changed_checkout(target: Path) -> Path:
    checkout = _checkout(target)
    with open(checkout / "spec" / "training.py", "a") as handle:
        handle.write("\n# a local edit\n")
    return checkout


REFUSALS = {  # what the cluster's worker is, and what the one error line must say
    "unreachable": (None, "cannot reach the Dask scheduler"),
    "no workers": ("none", "has no workers"),
    "no project": ("plain dask in an empty folder", "cannot import this project"),
    "no environments": ("plain dask in a checkout without .envs", "lacks the environment(s) main"),
    "another version": ("a checkout with an edited spec/training.py", "spec/training.py"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_cluster_that_cannot_run_the_jobs_is_refused_before_anything_runs(case, cluster, tmp_path):
    worker, expected = REFUSALS[case]
    if worker is None:
        address = f"tcp://127.0.0.1:{_free_port()}"
    else:  # Dask's own scheduler, outside any checkout: it needs nothing of this project
        address = cluster.scheduler([str(DASK), "scheduler"], tmp_path)
    if case == "no project":
        (tmp_path / "empty").mkdir()
        cluster.worker([str(DASK), "worker"], tmp_path / "empty")
    elif case == "no environments":
        # were it not refused, its job would build the environment there: let pip fail fast instead
        cluster.worker([str(DASK), "worker"], _checkout(tmp_path / "bare", environments=False),
                       env={"PIP_NO_INDEX": "1"})
    elif case == "another version":
        cluster.worker([sys.executable, "-m", "trainers.cluster", "worker"], _changed_checkout(tmp_path / "edited"))
    proc = run_cli("cli.train", *RUN, "--executor", "dask", "--scheduler", address, "--out", tmp_path / "results",
                   timeout=RUN_S)
    assert_one_line_error(proc, expected)
    assert not (tmp_path / "results").exists()  # nothing written, nothing verified or trained
