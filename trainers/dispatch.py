"""Dispatching a planned run: the results folder, the job files, the executor, the ledger of finished jobs
(what makes --resume run only the missing ones) and interruptions. Returns typed rows; reporting them is
the analysis package's part."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trainers.plan import BadInput, Plan
from workers import lifeline, results
from workers.records import PlainRow, TrainingRow
from workers.training import TRAINED

MODELS = "models"  # the results folder's trained models, <library>[.<run>].onnx


def check_out(out) -> None:
    """BadInput unless results folders can be made under `out` (an existing folder, or one that can be made)."""
    path = Path(out)
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise BadInput(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"--out {out}: {existing} is not writable")


def new_folder(out: Path, name: str) -> Path:
    """out/name, or out/name-2, -3, ... when a run started in the same second already took it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            folder = out / (name if i == 1 else f"{name}-{i}")
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue
    except OSError as exc:
        raise BadInput(f"--out {out}: cannot make a results folder there ({exc.strerror or exc})") from None
    raise BadInput(f"{out}: too many results folders named {name}")


class Ledger:
    """Every finished job's row, saved in the results folder the moment it arrives (rows/), so that an
    interrupted run loses nothing and --resume runs only what is missing."""

    def __init__(self, folder: Path):
        self.folder = folder / "rows"

    def _path(self, job) -> Path:
        return self.folder / job.run / f"{job.library}{'.plain' if job.plain else ''}.json"

    def load(self, job):
        """The job's saved row, or None when it has none (or one this version cannot read: it runs again)."""
        path = self._path(job)
        if not path.exists():
            return None
        try:
            return (PlainRow if job.plain else TrainingRow).from_json(json.loads(path.read_text()))
        except ValueError as exc:
            print(f"{path}: unreadable ({exc}); {job.label} runs again", file=sys.stderr)
            return None

    def save(self, job, row) -> None:
        results.write_json(self._path(job), row.to_json())


@dataclass
class Outcome:
    """The rows of a dispatched run: runs[run key][library] and, with --repeat, plain[run key][library]."""
    runs: dict
    plain: dict
    peaks: list = field(default_factory=list)  # machine peaks measured before and after the jobs
    interrupted: lifeline.Interrupted | None = None
    missing: list = field(default_factory=list)  # labels of the jobs that did not finish

    def add(self, job, row) -> None:
        (self.plain if job.plain else self.runs)[job.run][job.library] = row

    def has(self, job) -> bool:
        return job.library in (self.plain if job.plain else self.runs)[job.run]

    def ordered(self, names: list) -> Outcome:
        """The same rows with every run's libraries in the order of `names`."""
        def order(rows):
            return {key: {n: by_name[n] for n in names if n in by_name} for key, by_name in rows.items()}
        return Outcome(order(self.runs), order(self.plain), self.peaks, self.interrupted, self.missing)


def jobs_of(plan: Plan, names: list, tmp: Path) -> list:
    """The executor jobs of `names` (the libraries that passed the gate), in the order they run."""
    from trainers.executors import Job

    jobs = []
    for run in plan.runs:
        for name in names:
            job = Job(name, run.key, tmp / f"seed-{run.seed}", plan.steps_total, run.tag, epochs=plan.epochs,
                      images=plan.images)
            jobs.append(job)
            if plan.mode == "benchmark" and plan.options.plain:  # alternate harness and plain runs
                jobs.append(dataclasses.replace(job, plain=True))
    return jobs


def write_job_files(plan: Plan, seed: int, folder: Path) -> None:
    from spec import training as harness

    if folder.exists():
        return
    config = plan.configs[seed]
    spec = plan.spec if plan.options.init == "fixed" else harness.reinitialised(plan.spec, seed)
    spec = spec if config["dropout"] else harness.without_dropout(spec)
    order = harness.batch_order(len(plan.arrays[0]), plan.epochs, plan.experiment["shuffle"], seed, plan.limit)
    harness.write_job(folder, spec, plan.arrays, order, config)


def run(plan: Plan, folder: Path, names: list, rejected: dict, measure=None, wanted=None) -> Outcome:
    """Train `names` in every run of the plan; `rejected` ({library: row}) are the libraries the gate refused,
    their rows kept as they are. Jobs already in the folder's ledger are not run again. `measure()`, when
    given, is called before the jobs and after each run's (a benchmark's machine peak). An interruption stops every
    worker; the outcome then says which jobs are missing and gives them 'interrupted' rows. `wanted(outcome)`,
    when given, is asked before each run (a benchmark with --target-ci) which libraries still need runs: the run
    trains only those, and once none are left the runs not started are dropped from the outcome."""
    outcome = Outcome({r.key: dict(rejected) for r in plan.runs}, {r.key: {} for r in plan.runs})
    for name, row in rejected.items():
        print(f"{name}: not trained ({row.reason})", file=sys.stderr)
    ledger = Ledger(folder)
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        jobs, skipped = jobs_of(plan, names, Path(tmp)), []
        try:
            _run_jobs(plan, folder, Path(tmp), jobs, ledger, outcome, measure, wanted, skipped)
        except lifeline.Interrupted as exc:
            stopped = lifeline.stop_all()
            outcome.interrupted = exc
            print(f"\n{exc}: stopped {stopped} worker(s); writing what finished", file=sys.stderr, flush=True)
        jobs = [job for job in jobs if job not in skipped]  # not wanted: neither missing nor interrupted
        for key in {job.run for job in skipped} - {job.run for job in jobs}:  # runs left with no job at all
            del outcome.runs[key], outcome.plain[key]
    for job in jobs:
        if not outcome.has(job):
            outcome.missing.append(job.label + (" (plain loop)" if job.plain else ""))
            reason = "did not finish: the run was interrupted"
            outcome.add(job, PlainRow("interrupted", reason) if job.plain else
                        TrainingRow.without_record("interrupted", reason))
    return outcome.ordered(plan.names)


def _resume(jobs: list, ledger: Ledger, outcome: Outcome) -> list:
    """The jobs still to run; the rows of the others come from the ledger."""
    todo = []
    for job in jobs:
        row = ledger.load(job)
        if row is None:
            todo.append(job)
        else:
            outcome.add(job, row)
    if len(todo) < len(jobs):
        print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} jobs already done", file=sys.stderr)
    return todo


def _run_jobs(plan: Plan, folder: Path, tmp: Path, jobs: list, ledger: Ledger, outcome: Outcome, measure,
              wanted, skipped: list) -> None:
    """Run the jobs not in the ledger; the jobs `wanted` made unnecessary go to `skipped` as they are decided."""
    from trainers.executors import run_dask, run_local

    todo = _resume(jobs, ledger, outcome)
    pending = {job.run for job in todo}
    for run in plan.runs:
        if run.key in pending:
            write_job_files(plan, run.seed, tmp / f"seed-{run.seed}")
    if measure:
        outcome.peaks.append({**measure(), "after_run": None})
    o = plan.options
    # a benchmark measures the machine's peak between its runs too, so that each run has a same-moment peak
    groups = [[job for job in todo if job.run == run.key] for run in plan.runs] if measure else [todo]
    groups = [group for group in groups if group]
    for i, group in enumerate(groups):
        if wanted is not None:
            libraries = set(wanted(outcome))
            if not libraries:
                skipped += [job for later in groups[i:] for job in later]
                return
            skipped += [job for job in group if job.library not in libraries]
            group = [job for job in group if job.library in libraries]
            if not group:  # resumed: this run's other jobs are in the ledger
                continue
        if o.executor == "dask":
            finished = run_dask(group, plan.threads, o.timeout, folder, o.scheduler, o.workers, o.progress)
        else:
            finished = run_local(group, plan.threads, o.timeout, folder, o.progress)
        for job, raw in finished:
            _finished(folder, job, raw, ledger, outcome)
        if measure:
            outcome.peaks.append({**measure(), "after_run": group[0].run})


def _finished(folder: Path, job, raw: dict, ledger: Ledger, outcome: Outcome) -> None:
    """A job's row: typed, its trained model written, saved in the ledger."""
    trained = raw.pop(TRAINED, None)
    row = typed_row(job, raw)
    if trained is not None and row.status == "ok":
        row.model = write_model(folder, job, trained)
    ledger.save(job, row)
    outcome.add(job, row)
    if row.status != "ok":
        print(f"{job.label}: {row.status} — {row.reason}", file=sys.stderr)


def write_model(folder: Path, job, files: dict) -> str | None:
    """The job's trained model (the worker's ModelSpec files) as ONNX in the results folder; its path there, or None
    with a line on stderr when it cannot be written."""
    from spec import onnx_export
    from spec.ir import ModelSpec

    name = job.stem
    path = folder / MODELS / f"{name}.onnx"
    try:
        with tempfile.TemporaryDirectory(prefix="trained-") as tmp:
            for file, data in files.items():
                (Path(tmp) / Path(file).name).write_bytes(data)
            spec = ModelSpec.load(Path(tmp))
        model = onnx_export.to_onnx(spec, name=name, doc=f"{spec.source or 'model'} as {job.label} trained it")
        path.parent.mkdir(exist_ok=True)
        results.write_atomic(path, model.SerializeToString())
    except Exception as exc:  # noqa: BLE001  the training itself finished: keep its row, say why there is no model
        print(f"{job.label}: trained model not written ({type(exc).__name__}: {exc})".splitlines()[0], file=sys.stderr)
        return None
    return f"{MODELS}/{path.name}"


def typed_row(job, raw: dict):
    """The executor's row as a PlainRow or TrainingRow; one that does not fit the schema is a failed row."""
    try:
        return (PlainRow if job.plain else TrainingRow).from_json(raw)
    except ValueError as exc:
        reason = f"the worker's result does not fit the results schema ({exc})"
        return PlainRow("failed", reason) if job.plain else TrainingRow.without_record("crashed", reason)
