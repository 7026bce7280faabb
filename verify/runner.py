"""Runs one library's builder in its own worker process and environment; files in, files out."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import envs
import lifeline
from builders import resolve
from builders.worker import output_paths

ROOT = envs.ROOT
EXIT_UNSUPPORTED = 3


@dataclass
class WorkerResult:
    framework: str
    status: str  # "ok", "unsupported" or "error"
    outputs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    message: str = ""
    wall_s: float = 0.0


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONHASHSEED"] = "0"
    return lifeline.child_env(env)


def run_worker(framework: str, job: Path, timeout: float) -> WorkerResult:
    """Run the worker of `framework` on the job folder, which holds model.json, weights.npz, inputs.npz."""
    started = time.perf_counter()
    log = job / f"{framework}.log"
    try:
        python = envs.ensure(resolve(framework)[1])
        with open(log, "w") as handle:
            proc = lifeline.spawn([str(python), "-m", "builders.worker", framework, str(job)], cwd=ROOT,
                                  env=worker_env(), stdout=handle, stderr=subprocess.STDOUT)
    except (envs.EnvError, OSError) as exc:  # an environment missing, broken or unbuildable: this row only
        return WorkerResult(framework, "error", message=f"cannot start the worker: {exc}")
    code, _ = lifeline.wait(proc, timeout)
    if code is None:
        return WorkerResult(framework, "error", message=f"worker timed out after {timeout:.0f} s",
                            wall_s=time.perf_counter() - started)
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if code == EXIT_UNSUPPORTED:
        return WorkerResult(framework, "unsupported", message=_last_line(text), wall_s=wall)
    if code != 0:
        reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        return WorkerResult(framework, "error", message=f"worker failed ({reason}): {_last_line(text)}", wall_s=wall)
    outputs_path, info_path = output_paths(job, framework)
    try:
        with np.load(outputs_path) as npz:
            outputs = {k: npz[k] for k in npz.files}
        info = json.loads(info_path.read_text())
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the files, it costs this row only
        return WorkerResult(framework, "error", message=f"worker wrote malformed output: {type(exc).__name__}: "
                                                        f"{str(exc).splitlines()[0] if str(exc) else ''}"[:300],
                            wall_s=wall)
    finally:
        for path in (outputs_path, info_path):
            path.unlink(missing_ok=True)
    return WorkerResult(framework, "ok", outputs, info, wall_s=wall)
