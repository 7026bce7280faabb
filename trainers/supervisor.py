"""Runs one library's training worker: progress bar from its events, time limit, failure reasons.

Whatever happens to the worker (crash, signal, hang, non-finite loss), the caller gets a row with
every epoch the worker finished and the reason it stopped.
"""
from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

from tqdm import tqdm

import envs
import lifeline
from builders import resolve
from trainers.worker import EVENT_PREFIX, EXIT_NAN, result_path
from verify.runner import worker_env


def thread_env(threads: int) -> dict:
    env = worker_env()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _last_line(path: Path) -> str:
    lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else "no message"


def train_one(framework: str, job: Path, steps_total: int, threads: int, timeout: float, stderr_path: Path,
              progress: bool = True, label: str = "") -> dict:
    """Train `framework` on the job folder; returns its row (status, record, reason, wall_s). The worker's
    stderr goes to `stderr_path`; `progress` shows a bar (labelled `label`, default the framework)."""
    row = {"status": "ok", "reason": "", "record": {"optimizer": None, "steps": [], "epochs": []}}
    started = time.perf_counter()
    stderr = open(stderr_path, "w")
    try:
        python = envs.ensure(resolve(framework)[1])
        proc = lifeline.spawn([str(python), "-m", "trainers.worker", framework, str(job)], cwd=envs.ROOT,
                              env=thread_env(threads), stdout=subprocess.PIPE, stderr=stderr, text=True)
    except (envs.EnvError, OSError) as exc:  # an environment missing, broken or unbuildable: this row only
        stderr.close()
        return {**row, "status": "failed", "reason": f"cannot start the worker: {exc}", "wall_s": 0.0}
    with stderr, tqdm(total=steps_total, desc=f"{label or framework:<21}", unit="step", leave=True,
                      dynamic_ncols=True, disable=not progress) as bar:
        events = row["record"]

        def pump():
            for line in proc.stdout:
                if not line.startswith(EVENT_PREFIX):
                    continue
                event = json.loads(line[len(EVENT_PREFIX):])
                kind = event.pop("type")
                if kind == "step":
                    events["steps"].append(event)
                    bar.update(1)
                    bar.set_postfix(loss=f"{event['loss']:.4f}", refresh=False)
                elif kind == "epoch":
                    events["epochs"].append(event)
                elif kind == "optimizer":
                    events["optimizer"] = event

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        code, _ = lifeline.wait(proc, timeout)  # None: ran past the timeout, killed
        reader.join(timeout=10)
    row["wall_s"] = time.perf_counter() - started
    result = result_path(job, framework)
    if code is None:
        row.update(status="timeout", reason=f"no result within {timeout:.0f} s; worker killed")
    elif code == EXIT_NAN:
        row.update(status="nan", reason=_last_line(stderr_path))
    elif code < 0:
        row.update(status="crashed", reason=f"worker killed by {signal.Signals(-code).name}")
    elif code != 0 or not result.exists():
        row.update(status="crashed", reason=f"worker exit {code}: {_last_line(stderr_path)}")
    else:
        try:
            record = json.loads(result.read_text())
            if not (isinstance(record, dict) and isinstance(record.get("steps"), list)
                    and isinstance(record.get("epochs"), list)):
                raise ValueError("no steps and epochs")
            row["record"] = record
        except (ValueError, OSError) as exc:  # the events streamed so far stay in the row
            row.update(status="crashed", reason=f"worker wrote a malformed result ({_first_line(exc)})")
    return row


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
