"""The one way a worker process is run: `python -m MODULE ARGS` in one of the project's environments, waited
for with a time limit, killed on a timeout or an interruption, its exit turned into a Status and a reason."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import envs
from workers import lifeline
from workers.status import ExitCode, Status
from workers.text import first_line, last_line

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a worker ended: `status` (OK, TIMEOUT, CRASHED, FAILED, UNSUPPORTED or NAN), why when not OK, and
    its wall time in seconds."""

    status: Status
    reason: str = ""
    wall_s: float = 0.0

    def malformed(self, problem) -> Outcome:
        """This outcome for a worker that exited 0 but left a result that cannot be read."""
        what = first_line(problem) if isinstance(problem, BaseException) else str(problem)
        return dataclasses.replace(self, status=Status.CRASHED, reason=f"worker wrote a malformed result ({what})")


def worker_env(threads: int | None = None, extra: dict | None = None) -> dict:
    """The environment of every worker: the project importable, quiet TensorFlow, fixed hashing, the parent's
    pid (workers die with it), with `threads` the thread variables the numeric libraries read, and `extra`."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(envs.ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONHASHSEED"] = "0"
    if threads is not None:
        env.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    return lifeline.child_env(env)


def run(module: str, args: list, env: str, timeout: float, log: Path | None = None,
        on_line: Callable[[str], None] | None = None, threads: int | None = None, extra: dict | None = None) -> Outcome:
    """Run `python -m module *args` in environment `env` (envs.ensure) from the project root and classify its
    exit. stderr goes to `log` (a temporary file when None); stdout goes there too, or, with `on_line`, each
    of its lines (without the newline) to on_line while the worker runs; `extra`: variables added to the worker's
    environment (workers.turns). An interruption (any exception while
    waiting) kills the worker and is re-raised."""
    if log is None:
        with tempfile.TemporaryDirectory(prefix="worker-") as tmp:
            return run(module, args, env, timeout, Path(tmp) / "worker.log", on_line, threads, extra)
    started = time.perf_counter()
    try:
        python = envs.ensure(env)
        with open(log, "w") as handle:
            proc = lifeline.spawn([str(python), "-m", module, *map(str, args)], cwd=envs.ROOT,
                                  env=worker_env(threads, extra), stdout=subprocess.PIPE if on_line else handle,
                                  stderr=handle if on_line else subprocess.STDOUT, text=True, errors="replace")
    except (envs.EnvError, OSError) as exc:  # an environment missing, broken or unbuildable
        return Outcome(Status.FAILED, f"cannot start the worker: {exc}")
    reader = _Reader(proc.stdout, on_line) if on_line else None
    code = lifeline.wait(proc, timeout)
    if reader:
        reader.join(timeout=10)
    outcome = Outcome(*_classify(code, timeout, log), wall_s=time.perf_counter() - started)
    if outcome.status == Status.OK and reader and reader.error:
        return outcome.malformed(reader.error)
    return outcome


class _Reader(threading.Thread):
    """Hands each stdout line to the callback; after a callback fails it keeps draining the pipe (a full pipe
    would block the worker) and keeps the first error."""

    def __init__(self, stream, on_line):
        super().__init__(daemon=True)
        self.stream, self.on_line, self.error = stream, on_line, None
        self.start()

    def run(self):
        for line in self.stream:
            if self.error is None:
                try:
                    self.on_line(line.rstrip("\n"))
                except Exception as exc:  # noqa: BLE001 - whatever the line was, it costs this worker only
                    self.error = exc


def _classify(code: int | None, timeout: float, log: Path) -> tuple:
    if code is None:
        return Status.TIMEOUT, f"no result within {timeout:.0f} s; worker killed"
    if code == ExitCode.OK:
        return Status.OK, ""
    if code < 0:
        return Status.CRASHED, f"worker killed by {_signal_name(-code)}"
    last = last_line(log.read_text(errors="replace"))
    if code == ExitCode.UNSUPPORTED:
        return Status.UNSUPPORTED, last
    if code == ExitCode.NON_FINITE:
        return Status.NAN, last
    return Status.CRASHED, f"worker exit {code}: {last}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
