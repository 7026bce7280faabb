"""The verification gate of a training run: every library's forward pass is checked against onnxruntime
(verify equivalence) before it may train; one that fails gets a 'not verified' row saying why."""
from __future__ import annotations

import sys
from pathlib import Path

from trainers.plan import BadInput, Plan
from workers import results
from workers.records import TrainingRow, VerifyReport

VERIFICATION = "verification.json"  # in every results folder: the gate's report


def preflight(plan: Plan) -> None:
    """BadInput unless the verification inputs can be made from the run's data and model (checked before
    anything is written: verification needs its own test images)."""
    import cifar10
    from verify.equivalence import make_inputs

    try:
        make_inputs(plan.spec, plan.options.data)
    except cifar10.DataError as exc:
        raise BadInput(str(exc)) from None


def verify(plan: Plan, folder: Path | None = None) -> VerifyReport:
    """The gate's report: read from `folder` when a resumed run was verified before, else run now."""
    import cifar10
    from spec.onnx_import import ModelError
    from verify import equivalence

    if folder is not None and (folder / VERIFICATION).exists():
        try:
            return VerifyReport.from_json(results.read_json(folder / VERIFICATION))
        except ValueError as exc:
            raise BadInput(f"{folder / VERIFICATION}: unreadable ({exc})") from None
    print(f"verifying forward equivalence of {len(plan.names)} libraries first", file=sys.stderr, flush=True)
    try:
        report = equivalence.run(plan.model_path, plan.names, plan.options.data, build_options=trained_builds(plan))
    except (ModelError, cifar10.DataError) as exc:
        raise BadInput(str(exc)) from None
    return VerifyReport.from_json(report)


def trained_builds(plan: Plan) -> dict:
    """{library: the builder options of the model it will train} (its trainer's build_options of the run's
    configuration), so that the gate verifies exactly the model that trains, not a default build."""
    import importlib

    from builders import LIBRARIES, resolve

    config = next(iter(plan.configs.values()))
    options = {}
    for name in plan.names:
        base, _, fast_path = resolve(name)
        trainer = importlib.import_module(f"trainers.{LIBRARIES[base][0].split('.')[-1]}")
        options[name] = trainer.build_options({**config, "options": fast_path})
    return options


def verdicts(report: VerifyReport, names: list) -> tuple:
    """(the libraries that may train, {library: its 'not verified' row} for the others)."""
    passed = [n for n in names if report.libraries[n].status == "pass"]
    refused = {n: TrainingRow.without_record("not verified", report.libraries[n].why_not())
               for n in names if n not in passed}
    return passed, refused
