"""The plain-loop side of the harness-overhead ratio: `python -m benchmarks.plain` run in the library's own
environment with the training thread settings, its epoch times read back."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import envs
import lifeline
from builders import resolve
from trainers.supervisor import thread_env


def run_plain(framework: str, job: Path, threads: int, timeout: float, stderr_path: Path) -> dict:
    """{"status": "ok", "epoch_s": [...], "final_loss": ...} or {"status": "failed"/"timeout", "reason": ...}."""
    started = time.perf_counter()
    try:
        python = envs.ensure(resolve(framework)[1])
        with open(stderr_path, "w") as stderr:
            proc = lifeline.spawn([str(python), "-m", "benchmarks.plain", framework, str(job)], cwd=envs.ROOT,
                                  env=thread_env(threads), stdout=subprocess.PIPE, stderr=stderr, text=True)
    except (envs.EnvError, OSError) as exc:
        return {"status": "failed", "reason": f"cannot start the plain loop: {exc}"}
    code, out = lifeline.wait(proc, timeout, communicate=True)
    if code is None:
        return {"status": "timeout", "reason": f"plain loop took over {timeout:.0f} s"}
    lines = out.strip().splitlines()
    if code != 0 or not lines:
        last = [l for l in stderr_path.read_text(errors="replace").splitlines() if l.strip()]
        return {"status": "failed", "reason": f"exit {code}: {last[-1] if last else 'no message'}"}
    try:
        result = json.loads(lines[-1])
        [float(s) for s in result["epoch_s"]]
    except (ValueError, KeyError, TypeError) as exc:
        return {"status": "failed", "reason": f"plain loop printed a malformed result ({exc})"}
    return {"status": "ok", "wall_s": time.perf_counter() - started, **result}
