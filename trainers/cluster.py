"""`python -m trainers.cluster scheduler|worker [DASK OPTIONS]`: a Dask cluster that can run this project's jobs.

Starts Dask's own `dask scheduler` / `dask worker` in this checkout's main environment with the checkout on
PYTHONPATH, so its workers import this project wherever they were started. Every option after the word goes
to Dask unchanged (`--host`, `--port`, `--scheduler-file`, `--nworkers`, ...); workers default to one
thread each (a job only waits on its training subprocess) and no memory limit (that subprocess's memory is
not the worker's).

The functions below `main` are what a run sends to the cluster. They travel by value (executors.ByValue)
and import nothing of this project at module level, so a scheduler unpickles them without the project and
a worker locates its checkout before importing from it: on PYTHONPATH (as `worker` sets it), else the
folder the worker was started in, when that is a checkout (plain `dask worker` run there).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import sys
from pathlib import Path

ROLES = ("scheduler", "worker")
WORKER_DEFAULTS = ("--nthreads", "1", "--memory-limit", "0")  # the user's own options come later and win


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ROLES:
        print("error: usage: python -m trainers.cluster scheduler|worker [dask options] "
              "(see `dask scheduler --help`, `dask worker --help`)", file=sys.stderr)
        return 2
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""))
    defaults = WORKER_DEFAULTS if argv[0] == "worker" else ()
    os.execve(sys.executable, [sys.executable, "-m", "dask", argv[0], *defaults, *argv[1:]], env)


def find_project() -> str | None:
    """The root of the checkout this process imports the project from, or None when it has none: `trainers`
    on sys.path, else the working directory if it is a checkout (then put on sys.path)."""
    spec = importlib.util.find_spec("trainers")
    if spec is not None and spec.origin:
        return str(Path(spec.origin).resolve().parent.parent)
    cwd = Path.cwd()
    if (cwd / "trainers" / "__init__.py").is_file() and (cwd / "envs" / "__init__.py").is_file():
        sys.path.insert(0, str(cwd))
        return str(cwd)
    return None


def fingerprint(root) -> dict:
    """{path: sha256} of the files that decide what a job computes: the project's packages (not its tests)
    and the environments' pins."""
    root = Path(root)
    files = list(root.glob("envs/*.txt"))
    for package in root.iterdir():
        if package.name != "tests" and (package / "__init__.py").is_file():
            files += package.rglob("*.py")
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def probe(environments: list) -> dict:
    """Runs on a worker: what it can run. {"host", "root", "problem" ("" when it can run jobs that need
    `environments`), "files" (its fingerprint)}."""
    out = {"host": socket.gethostname(), "root": None, "problem": "", "files": {}}
    root = find_project()
    if root is None:
        out["problem"] = (f"it cannot import this project (started in {os.getcwd()}, which is no checkout, "
                          f"and nothing on its PYTHONPATH)")
        return out
    out["root"] = root
    try:
        import envs
        from trainers import executors  # noqa: F401  what a job runs there
    except (ImportError, AttributeError, SyntaxError, OSError) as exc:  # a checkout the worker's Python cannot import
        out["problem"] = f"importing this project from {root} fails there ({type(exc).__name__}: {exc})"
        return out
    missing = [name for name in environments if not envs.is_ready(name)]
    if missing:
        out["problem"] = (f"its checkout {root} lacks the environment(s) {', '.join(missing)} "
                          f"(run `python3 -m envs` there)")
    out["files"] = fingerprint(root)
    return out


def train(library: str, files: dict, threads: int, timeout: float) -> dict:
    """Runs on a worker: one training job (trainers.executors.train_remote) in the worker's checkout."""
    if find_project() is None:  # a worker that joined after the run's probe
        raise RuntimeError(f"worker on {socket.gethostname()} cannot import this project")
    from trainers.executors import train_remote

    return train_remote(library, files, threads, timeout)


if __name__ == "__main__":
    from envs import reexec_in_main

    reexec_in_main("trainers.cluster")
    sys.exit(main())
