"""Runs one library's builder in its own worker process and environment; files in, files out."""
from __future__ import annotations

import json
from collections.abc import Mapping
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
    # {node: output}, read from the worker's npz one node per access (numpy's NpzFile), until close()
    outputs: Mapping = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    message: str = ""
    wall_s: float = 0.0
    path: Path | None = None  # the outputs file, removed by close()

    def malformed(self, exc: BaseException) -> WorkerResult:
        """This result for outputs that could not be read."""
        return WorkerResult(self.library, Status.CRASHED, message=f"worker wrote a malformed result "
                            f"({type(exc).__name__}: {workers.first_line(exc)})", wall_s=self.wall_s)

    def close(self) -> None:
        if hasattr(self.outputs, "close"):
            self.outputs.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def run_worker(library: str, job: Path, timeout: float) -> WorkerResult:
    """Run the worker of `library` on the job folder, which holds model.json, weights.npz, inputs.npz.
    An OK result holds its outputs open: the caller reads the nodes it needs and calls close()."""
    outcome = workers.run(MODULE, [library, job], resolve(library)[1], timeout, job / f"{library}.log")
    if outcome.status != Status.OK:
        return WorkerResult(library, outcome.status, message=outcome.reason, wall_s=outcome.wall_s)
    outputs_path, info_path = output_paths(job, library)
    try:
        info = json.loads(info_path.read_text())
        outputs = np.load(outputs_path)  # the zip's directory only; each array is read when asked for
        if not hasattr(outputs, "files"):
            raise ValueError(f"{outputs_path.name} holds one array, not an npz of every node's")
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the files, it costs this row only
        outputs_path.unlink(missing_ok=True)
        bad = outcome.malformed(f"{type(exc).__name__}: {workers.first_line(exc)}")
        return WorkerResult(library, bad.status, message=bad.reason, wall_s=bad.wall_s)
    finally:
        info_path.unlink(missing_ok=True)
    return WorkerResult(library, Status.OK, outputs, info, wall_s=outcome.wall_s, path=outputs_path)
