"""Runs one library's builder in its own worker process and environment; files in, files out."""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import envs
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
    return env


def run_worker(framework: str, job: Path, timeout: float) -> WorkerResult:
    """Run the worker of `framework` on the job folder, which holds model.json, weights.npz, inputs.npz."""
    started = time.perf_counter()
    try:
        python = envs.ensure(resolve(framework)[1])
    except envs.EnvError as exc:
        return WorkerResult(framework, "error", message=str(exc))
    log = job / f"{framework}.log"
    try:
        with open(log, "w") as handle:
            proc = subprocess.run([str(python), "-m", "builders.worker", framework, str(job)], cwd=ROOT,
                                  env=worker_env(), stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return WorkerResult(framework, "error", message=f"worker timed out after {timeout:.0f} s",
                            wall_s=time.perf_counter() - started)
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if proc.returncode == EXIT_UNSUPPORTED:
        return WorkerResult(framework, "unsupported", message=_last_line(text), wall_s=wall)
    if proc.returncode != 0:
        return WorkerResult(framework, "error", message=f"worker failed (exit {proc.returncode}): {_last_line(text)}",
                            wall_s=wall)
    outputs_path, info_path = output_paths(job, framework)
    with np.load(outputs_path) as npz:
        outputs = {k: npz[k] for k in npz.files}
    info = json.loads(info_path.read_text())
    outputs_path.unlink()
    info_path.unlink()
    return WorkerResult(framework, "ok", outputs, info, wall_s=wall)
