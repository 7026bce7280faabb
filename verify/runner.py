"""Runs one library's builder in its own worker process and environment; files in, files out."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import workers
from builders import resolve
from builders.worker import output_paths
from workers import Status

MODULE = "builders.worker"


@dataclass
class WorkerResult:
    library: str
    status: Status  # OK, or how the worker failed (workers.spawn)
    outputs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    message: str = ""
    wall_s: float = 0.0


def run_worker(library: str, job: Path, timeout: float) -> WorkerResult:
    """Run the worker of `library` on the job folder, which holds model.json, weights.npz, inputs.npz."""
    outcome = workers.run(MODULE, [library, job], resolve(library)[1], timeout, job / f"{library}.log")
    if outcome.status != Status.OK:
        return WorkerResult(library, outcome.status, message=outcome.reason, wall_s=outcome.wall_s)
    outputs_path, info_path = output_paths(job, library)
    try:
        with np.load(outputs_path) as npz:
            outputs = {k: npz[k] for k in npz.files}
        info = json.loads(info_path.read_text())
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the files, it costs this row only
        bad = outcome.malformed(f"{type(exc).__name__}: {workers.first_line(exc)}")
        return WorkerResult(library, bad.status, message=bad.reason, wall_s=bad.wall_s)
    finally:
        for path in (outputs_path, info_path):
            path.unlink(missing_ok=True)
    return WorkerResult(library, Status.OK, outputs, info, wall_s=outcome.wall_s)
