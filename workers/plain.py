"""The plain-loop side of the harness-overhead ratio: `python -m benchmarks.plain LIBRARY JOB_DIR` run in the
library's own environment with the training thread settings; its last stdout line is its JSON result."""
from __future__ import annotations

import json
from pathlib import Path

from workers import spawn
from workers.status import Status

MODULE = "benchmarks.plain"


def run_plain(library: str, env: str, job: Path, threads: int, timeout: float, log: Path,
              extra: dict | None = None) -> dict:
    """{"status": "ok", "wall_s": ..., "epoch_s": [...], "final_loss": ..., ...} or {"status": ..., "reason": ...}."""
    lines = []
    outcome = spawn.run(MODULE, [library, job], env, timeout, log, lines.append, threads, extra)
    if outcome.status == Status.OK:
        try:
            result = json.loads(([line for line in lines if line.strip()] or ["null"])[-1])
            [float(s) for s in result["epoch_s"]]
            return {**result, "status": outcome.status, "wall_s": outcome.wall_s}
        except (ValueError, KeyError, TypeError) as exc:
            outcome = outcome.malformed(exc)
    return {"status": outcome.status, "reason": outcome.reason}
