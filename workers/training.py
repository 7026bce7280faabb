"""The training worker's protocol, both sides of it: `python -m trainers.worker LIBRARY JOB_DIR` streams
events to stdout as lines EVENT_PREFIX + JSON and leaves its record in result_path (and, when asked, the
step tensors in tensors_path) and the trained model in trained_path; train_one runs it and turns all that into a
row (the trained model's files under TRAINED, for the orchestrator to write out as ONNX).

Whatever happens to the worker (crash, signal, hang, non-finite loss), the row keeps every step and epoch
the worker reported and says why it stopped.
"""
from __future__ import annotations

import json
from pathlib import Path

from workers import progress, spawn
from workers.status import Status

MODULE = "trainers.worker"
EVENT_PREFIX = "@@event "


def event_line(event: dict) -> str:
    """One event as the worker writes it: {"type": "optimizer" | "step" | "epoch", ...fields}."""
    return EVENT_PREFIX + json.dumps(event) + "\n"


def result_path(job: Path, library: str) -> Path:
    return job / f"{library}.train.json"


def tensors_path(job: Path, library: str) -> Path:
    return job / f"{library}.steps.npz"


def trained_path(job: Path, library: str) -> Path:
    """The folder (ModelSpec.save: model.json, weights.npz) of the model as `library` trained it."""
    return job / f"{library}.trained"


TRAINED_FILES = ("model.json", "weights.npz")
TRAINED = "trained"  # the row's {file name: bytes} of the trained model, taken out before the row is stored


def empty_record() -> dict:
    return {"optimizer": None, "steps": [], "epochs": []}


def train_one(library: str, env: str, job: Path, threads: int, timeout: float, log: Path,
              shown: progress.Silent | None = None, extra: dict | None = None) -> dict:
    """Train `library` (in environment `env`) on the job folder; returns its row: status, reason, record
    (optimizer, steps, epochs, ...) and wall_s. The worker's stderr goes to `log`; its events go to `shown`
    (workers.progress.training; None shows nothing); `extra`: variables added to its environment (workers.turns)."""
    record = empty_record()
    with shown or progress.Silent() as reporter:
        def on_line(line: str) -> None:
            if line.startswith(EVENT_PREFIX):
                _record_event(record, json.loads(line[len(EVENT_PREFIX):]), reporter)

        outcome = spawn.run(MODULE, [library, job], env, timeout, log, on_line, threads, extra)
        trained = None
        if outcome.status == Status.OK:
            try:
                record = _read_record(result_path(job, library))
                trained = {name: (trained_path(job, library) / name).read_bytes() for name in TRAINED_FILES}
            except (ValueError, OSError) as exc:  # the events streamed so far stay in the row
                outcome = outcome.malformed(exc)
        reporter.end(str(outcome.status), outcome.wall_s)
    row = {"status": outcome.status, "reason": outcome.reason, "record": record, "wall_s": outcome.wall_s}
    return row if trained is None else {**row, TRAINED: trained}


def _record_event(record: dict, event: dict, reporter: progress.Silent) -> None:
    kind = event.pop("type")
    if kind == "step":
        record["steps"].append(event)
        reporter.step(event)
    elif kind == "epoch":
        record["epochs"].append(event)
        reporter.epoch(event)
    elif kind == "optimizer":
        record["optimizer"] = event


def _read_record(path: Path) -> dict:
    record = json.loads(path.read_text())
    if not (isinstance(record, dict) and isinstance(record.get("steps"), list)
            and isinstance(record.get("epochs"), list)):
        raise ValueError("no steps and epochs")
    return record
