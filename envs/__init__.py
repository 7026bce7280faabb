"""The pinned worker environments, created on demand under .envs/ at the project root.

Standard library only: this runs before any environment exists.

    main    the modern libraries (PyTorch, TensorFlow, Keras 3, tflearn, tensorlayer) plus onnx,
            onnxruntime and the test tools; the orchestrator and most workers run here
    theano  Theano 1.0.5 + Keras 2.3.1, which need numpy < 1.24 and can share nothing with main

An environment counts as ready only when its stamp matches the sha256 of its requirements file,
so an interrupted or outdated build is rebuilt instead of half-used.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVS_DIR = ROOT / ".envs"
REQUIREMENTS = {"main": ROOT / "envs" / "main.txt", "theano": ROOT / "envs" / "theano.txt"}
PYTHON_VERSION = (3, 11)


class EnvError(RuntimeError):
    """An environment cannot be created or used; the message says what to do."""


def env_dir(name: str) -> Path:
    return ENVS_DIR / name


def python_of(name: str) -> Path:
    return env_dir(name) / "bin" / "python"


def _wanted_stamp(name: str) -> str:
    return hashlib.sha256(REQUIREMENTS[name].read_bytes()).hexdigest()


def is_ready(name: str) -> bool:
    stamp = env_dir(name) / ".requirements.sha256"
    return python_of(name).exists() and stamp.exists() and stamp.read_text().strip() == _wanted_stamp(name)


@contextlib.contextmanager
def _lock():
    ENVS_DIR.mkdir(exist_ok=True)
    with open(ENVS_DIR / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _base_python() -> str:
    if sys.version_info[:2] == PYTHON_VERSION:
        return sys.executable
    found = shutil.which("python3.11")
    if found:
        return found
    raise EnvError(f"the environments need Python 3.11 (this is {sys.version.split()[0]}); "
                   f"install Python 3.11 and run `python3.11 -m envs`")


def create(name: str, log=sys.stderr) -> Path:
    """Build environment `name` if it is missing or outdated; returns its python."""
    if name not in REQUIREMENTS:
        raise EnvError(f"unknown environment {name!r}; known: {', '.join(REQUIREMENTS)}")
    with _lock():
        if is_ready(name):
            return python_of(name)
        target = env_dir(name)
        print(f"[envs] creating the {name!r} environment in {target.relative_to(ROOT)} "
              f"from {REQUIREMENTS[name].relative_to(ROOT)} (a few minutes, once)", file=log, flush=True)
        started = time.monotonic()
        shutil.rmtree(target, ignore_errors=True)
        steps = [
            [_base_python(), "-m", "venv", str(target)],
            [str(python_of(name)), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "on",
             "-r", str(REQUIREMENTS[name])],
        ]
        for step in steps:
            result = subprocess.run(step, stdout=log, stderr=log)
            if result.returncode:
                shutil.rmtree(target, ignore_errors=True)
                raise EnvError(f"building the {name!r} environment failed at `{' '.join(step[-3:])}` "
                               f"(exit {result.returncode}); see the pip output above")
        (target / ".requirements.sha256").write_text(_wanted_stamp(name) + "\n")
        print(f"[envs] {name!r} ready in {time.monotonic() - started:.0f} s", file=log, flush=True)
        return python_of(name)


def ensure(name: str) -> Path:
    return python_of(name) if is_ready(name) else create(name)


def reexec_in_main(module: str) -> None:
    """Run `python -m module ...` inside the main environment, building it first if needed.

    Lets users type `python3 -m verify ...` with any Python: if this interpreter is not the
    main environment's, replace the process with the main environment's interpreter.
    """
    if Path(sys.prefix).resolve() == env_dir("main").resolve() and is_ready("main"):
        return
    try:
        python = ensure("main")
    except EnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    os.execv(str(python), [str(python), "-m", module, *sys.argv[1:]])
