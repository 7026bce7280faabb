"""Where the (library, seed) training jobs of a run execute: here, one after another, or on a Dask cluster.

Both executors take the same jobs and return the same rows. A job is a folder written by
spec.training.write_job; the Dask executor ships its files to the cluster as bytes (identical files,
such as the data shared by every seed, travel once), so workers need the project and its environments
but no shared file system. What it runs there (trainers.cluster) travels by value: the scheduler needs
nothing of this project, and `check_cluster` refuses a cluster whose workers cannot run the jobs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from builders import resolve
from workers import progress, turns
from workers.plain import run_plain
from workers.training import train_one

LOG_LIMIT = 200_000  # characters of a remote worker's stderr brought back with its row
CONNECT_S = 10  # to reach a scheduler
WORKERS_WAIT_S = 5  # for a scheduler's first worker, which may still be registering


class ClusterError(Exception):
    """A Dask cluster that cannot run this run's jobs: the message says why and what to do."""


@dataclass(frozen=True)
class Job:
    library: str
    run: str  # which run of the library this is: its key in the results' "runs" (a seed, or "repeat2")
    folder: Path
    steps_total: int
    tag: str = ""  # how labels and log names tell this run from the library's others; "" when it has one run
    plain: bool = False  # the library's plain tutorial loop (benchmarks.plain) instead of the harness
    epochs: int = 0  # for the progress lines; 0: not said
    images: int = 0  # training images per epoch, for the progress lines' images/s; 0: not said

    @property
    def label(self) -> str:
        return f"{self.library} {self.tag}" if self.tag else self.library

    @property
    def stem(self) -> str:
        """The library, and the run where it has several: what the job's files in the results folder are named."""
        return f"{self.library}.{self.tag.replace(' ', '')}" if self.tag else self.library

    @property
    def log_name(self) -> str:
        return f"{self.stem}.plain.stderr.log" if self.plain else f"{self.stem}.stderr.log"


def run_local(jobs: list, threads: int, timeout: float, log_dir: Path, shown: str = "auto"):
    """Yield (job, row) for each job, trained one at a time on this machine, its progress shown as `shown`
    (workers.progress.MODES) says. A harness job followed by its own plain loop runs side by side with it, the two
    taking turns epoch by epoch (workers.turns): one trains while the other waits."""
    queue = list(jobs)
    while queue:
        job = queue.pop(0)
        if not job.plain and queue and queue[0] == dataclasses.replace(job, plain=True):
            yield from _taking_turns(job, queue.pop(0), threads, timeout, log_dir, shown)
        elif job.plain:
            print(f"{job.label}: plain loop", file=sys.stderr, flush=True)
            yield job, _plain(job, threads, timeout, log_dir)
        else:
            yield job, _harness(job, threads, timeout, log_dir, shown)


def _plain(job: Job, threads: int, timeout: float, log_dir: Path, extra: dict | None = None) -> dict:
    return run_plain(job.library, resolve(job.library)[1], job.folder, threads, timeout, log_dir / job.log_name,
                     extra)


def _harness(job: Job, threads: int, timeout: float, log_dir: Path, shown: str, extra: dict | None = None) -> dict:
    work = progress.Work(job.steps_total, job.epochs, job.images)
    row = train_one(job.library, resolve(job.library)[1], job.folder, threads, timeout, log_dir / job.log_name,
                    progress.training(shown, job.label, work), extra)
    row["executor"] = {"kind": "local", "host": socket.gethostname(), "shared": False}
    return row


def _taking_turns(job: Job, plain: Job, threads: int, timeout: float, log_dir: Path, shown: str):
    """The harness job and its plain loop in two processes at once, one epoch at a time each, the harness first."""
    print(f"{plain.label}: plain loop, taking turns with the harness epoch by epoch", file=sys.stderr, flush=True)
    rows = {}
    with turns.Referee(["harness", "plain"]) as referee:
        def plain_side():
            try:
                rows["plain"] = _plain(plain, threads, timeout, log_dir, referee.env("plain"))
            finally:
                referee.gone("plain")

        side = threading.Thread(target=plain_side, name=f"plain {plain.label}", daemon=True)
        side.start()
        try:
            row = _harness(job, threads, timeout, log_dir, shown, referee.env("harness"))
        finally:
            referee.gone("harness")
        side.join()
    yield job, row
    yield plain, rows.get("plain", {"status": "crashed", "reason": "the plain loop's thread ended without a result"})


def train_remote(library: str, files: dict, threads: int, timeout: float) -> dict:
    """Runs on a Dask worker: materialise the job folder, train, return the row with the worker's stderr."""
    with tempfile.TemporaryDirectory(prefix="dask-train-") as tmp:
        folder = Path(tmp)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        log = folder / "worker.stderr.log"
        row = train_one(library, resolve(library)[1], folder, threads, timeout, log)
        row["log"] = log.read_text(errors="replace")[-LOG_LIMIT:] if log.exists() else ""
    row["executor"] = {"kind": "dask", "host": socket.gethostname(), "shared": True}
    return row


class ByValue:
    """`function`, pickled by value: whoever unpickles it, the scheduler included,
    needs cloudpickle but not this project (Dask pickles a task graph by reference otherwise). Used like
    the function: submit(ByValue(f), ...)."""

    def __init__(self, function):
        import cloudpickle

        module = sys.modules[function.__module__]
        cloudpickle.register_pickle_by_value(module)
        try:
            self.payload = cloudpickle.dumps(function)
        finally:
            cloudpickle.unregister_pickle_by_value(module)
        self.function = function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __reduce__(self):
        return pickle.loads, (self.payload,)


def _connect(address: str):
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_S)
    except (OSError, ValueError, TypeError) as exc:  # refused, timed out, not an address
        raise ClusterError(f"cannot reach the Dask scheduler at {address} ({exc})") from None


def check_cluster(address: str, libraries: list) -> None:
    """Refuse (ClusterError) the cluster at `address` unless it has workers and every one of them can run
    jobs of `libraries`: this project importable there, the environments these libraries need built,
    and the same version of the project as here (trainers.cluster.fingerprint)."""
    from builders import resolve
    from trainers import cluster

    environments = sorted({resolve(name)[1] for name in libraries})
    with _connect(address) as client:
        try:
            client.wait_for_workers(1, timeout=WORKERS_WAIT_S)
        except TimeoutError:
            raise ClusterError(f"the Dask scheduler at {address} has no workers; start them with "
                               f"`python -m trainers.cluster worker {address}` in a checkout") from None
        reports = client.run(ByValue(cluster.probe), environments, on_error="return")
    here = cluster.fingerprint(Path(cluster.__file__).resolve().parent.parent)
    for worker, report in sorted(reports.items()):
        if isinstance(report, BaseException):
            raise ClusterError(f"worker {worker} cannot be probed ({type(report).__name__}: {report})")
        if report["problem"]:
            raise ClusterError(f"worker {worker} cannot run the jobs: {report['problem']}; start workers with "
                               f"`python -m trainers.cluster worker {address}` in a checkout with its environments")
        differ = sorted(k for k in here.keys() | report["files"].keys() if here.get(k) != report["files"].get(k))
        if differ:
            raise ClusterError(f"worker {worker} runs another version of this project: its checkout "
                               f"{report['root']} differs from this one in {len(differ)} file(s) "
                               f"({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''})")


def _lost(job: Job, exc: BaseException) -> dict:
    """The row of a job the cluster could not run (a worker lost, a worker without the project)."""
    message = (str(exc).strip().splitlines() or [""])[0]
    return {"status": "failed", "reason": f"the cluster could not run it: {type(exc).__name__}: {message}",
            "wall_s": 0.0, "record": {"optimizer": None, "steps": [], "epochs": []},
            "executor": {"kind": "dask", "host": None, "shared": True}}


def start_local_cluster(workers: int):
    """A Dask LocalCluster of `workers` single-threaded worker processes (each waits on one training
    subprocess); no dashboard, no memory limit (the training subprocesses are not the worker's memory)."""
    import logging

    from distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                        memory_limit=0, silence_logs=logging.ERROR)


def run_dask(jobs: list, threads: int, timeout: float, log_dir: Path, address: str | None, workers: int,
             shown: str = "auto"):
    """Yield (job, row) as the cluster at `address` finishes them (a local cluster of `workers`
    processes when address is None), each shown as it finishes as `shown` (workers.progress.MODES) says."""
    from distributed import Client, as_completed

    from trainers import cluster as remote

    cluster = start_local_cluster(workers) if address is None else None
    try:
        with Client(cluster) if cluster else _connect(address) as client:
            shipped, futures, train = {}, {}, ByValue(remote.train)
            for job in jobs:
                files = {}
                for path in sorted(job.folder.iterdir()):
                    data = path.read_bytes()
                    digest = hashlib.sha256(data).hexdigest()
                    if digest not in shipped:
                        shipped[digest] = client.scatter(data, broadcast=True, hash=False)
                    files[path.name] = shipped[digest]
                future = client.submit(train, job.library, files, threads, timeout,
                                       key=f"train-{job.library}-{job.tag.replace(' ', '') or 'run'}", pure=False)
                futures[future] = job
            print(f"dask: {len(jobs)} jobs on {client.scheduler.address} "
                  f"({len(client.scheduler_info()['workers'])} workers)", file=sys.stderr, flush=True)
            with progress.Jobs(shown, len(jobs)) as bar:
                for future in as_completed(futures):
                    job = futures[future]
                    try:
                        row = future.result()
                    except Exception as exc:  # noqa: BLE001  a remote error of any type: the job has no row of its own
                        row = _lost(job, exc)
                    (log_dir / job.log_name).write_text(row.pop("log", ""))
                    bar.finished(job.label, row["status"])
                    yield job, row
    finally:
        if cluster is not None:
            cluster.close()
