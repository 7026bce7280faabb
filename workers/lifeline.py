"""Worker processes never outlive the run that started them.

The orchestrator starts every worker through `spawn` (its own process group, registered here) and, when it
is interrupted, `stop_all` kills those groups. Workers call `die_with_parent` first thing: Linux then
SIGKILLs them if the orchestrator dies without cleaning up (SIGKILL, a crash), so nothing is orphaned.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from workers.status import ExitCode

PARENT_VARIABLE = "XV_PARENT_PID"
_PR_SET_PDEATHSIG = 1

_live: set = set()
_lock = threading.Lock()


class Interrupted(Exception):
    """The run received SIGINT or SIGTERM; `signal_name` says which, `exit_status` is 128 + its number."""

    def __init__(self, signum: int):
        self.signal_name = signal.Signals(signum).name
        self.exit_status = ExitCode.of_signal(signum)
        super().__init__(f"interrupted by {self.signal_name}")


def _raise_interrupted(signum, _frame):
    raise Interrupted(signum)


def on_interrupt_raise() -> None:
    """From now on SIGINT and SIGTERM raise Interrupted in the main thread (where the run can tidy up)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupted)


def child_env(env: dict) -> dict:
    """`env` plus the variable by which a worker knows its parent."""
    return {**env, PARENT_VARIABLE: str(os.getpid())}


def spawn(args: list, **kwargs) -> subprocess.Popen:
    """Popen in a new process group (a Ctrl-C at the terminal reaches only the orchestrator, which then stops
    the workers itself), registered until `release`."""
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    with _lock:
        _live.add(proc)
    return proc


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of `proc` and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def release(proc: subprocess.Popen) -> None:
    with _lock:
        _live.discard(proc)


def wait(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit status of a spawned worker; None when it ran past `timeout` and was killed. A wait that is
    interrupted kills the worker too. Either way it is released."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        return None
    except BaseException:
        kill(proc)
        raise
    finally:
        release(proc)


def stop_all() -> int:
    """Kill every registered worker's process group; returns how many were still registered."""
    with _lock:
        procs = list(_live)
        _live.clear()
    for proc in procs:
        kill(proc)
    return len(procs)


def die_with_parent() -> None:
    """In a worker: be SIGKILLed when the process that started it (named by PARENT_VARIABLE) dies."""
    parent = os.environ.get(PARENT_VARIABLE)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent died before the line above took effect
        os._exit(1)
