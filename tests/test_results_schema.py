"""Typed results (records.py): JSON round trips, refusals that say where, docs/results-schema.md listing exactly
the fields of each class, and the files a real run writes reading back through the classes unchanged."""
import dataclasses
import json
import re

import pytest

from tests.conftest import ROOT, run_training
from trainers import dispatch
from trainers.executors import Job
from trainers.plan import TrainOptions
from workers import records
from workers.records import (
    Epoch,
    Executor,
    Interruption,
    Optimizer,
    PlainRow,
    Record,
    Step,
    Summary,
    TrainingResults,
    TrainingRow,
    VerifyReport,
    VerifyRow,
)

SCHEMA_DOC = ROOT / "docs" / "results-schema.md"
CLASSES = (*records.SCHEMA, TrainOptions)


def _row(status="ok", loss=2.3) -> TrainingRow:
    optimizer = Optimizer("torch.optim.RMSprop", 1e-3, 0.9, 1e-7, 0.0, "inside sqrt", "a subclass", 0.0)
    record = Record(optimizer, [Step(0, 0, loss, 128), Step(0, 1, loss - 0.1)],
                    [Epoch(0, 1.5, 2.2, 0.1, 0.2, 2.25, 0.12)], {"torch": "2.13.0"}, 3.0, "3.11.9", 480.0)
    summary = Summary(1, 1.5, None, None, 170.0, 480.0, 2.2, 0.1, 2.25, 0.12)
    return TrainingRow(status, "", record, 3.5, Executor("local", "host", False), summary, ["lr 0.01 (canonical 0.001)"])


def _results() -> TrainingResults:
    rows = {"pytorch": _row(), "tensorflow": TrainingRow.without_record("not verified", "forward equivalence mismatch")}
    return TrainingResults(
        experiment="seed-2017", experiment_spec={"epochs": 5}, model="spec/seed_cnn.onnx", config={"epochs": 1},
        images_per_epoch=256, init="fixed", validation="validation on ...", shuffled=False,
        environment={"cores": 2}, executor="local", seeds=[2017], runs={"2017": rows}, fast_paths={},
        libraries=rows, step_agreement={"agree": None}, plain={"2017": {"pytorch": PlainRow("ok", "", 1.0, "pytorch",
                                                                                            [0.5, 0.4], 2.1, "last batch")}},
        interrupted=Interruption("SIGINT", ["tensorflow"]))


def test_results_round_trip_through_json_unchanged():
    run = _results()
    text = json.dumps(run.to_json())
    assert TrainingResults.from_json(json.loads(text)) == run
    assert json.dumps(TrainingResults.from_json(json.loads(text)).to_json()) == text
    assert "executor" not in json.loads(text)["runs"]["2017"]["tensorflow"]  # optional and absent: not written
    assert json.loads(text)["runs"]["2017"]["tensorflow"]["record"]["optimizer"] is None  # always: written as null
    options = TrainOptions(["pytorch"], seeds=3, data="x.npz")
    assert TrainOptions.from_json(json.loads(json.dumps(options.to_json()))) == options


def test_verify_rows_round_trip_and_name_why_a_library_may_not_train():
    divergent = {"status": "mismatch", "message": "", "wall_s": 1.2, "versions": {"torch": "2"},
                 "output": {"max_abs": 0.5, "max_rel": 0.9, "allclose": False, "argmax_agree": 60, "samples": 64,
                            "argmax_disagree_decided": 4},
                 "first_divergent_layer": {"name": "conv1", "kind": "conv", "scaled": 0.3},
                 "layers": [{"max_abs": 0.5, "scaled": 0.3, "name": "conv1", "kind": "conv"},
                            {"shape": [1, 2], "ref_shape": [2, 1], "max_abs": None, "scaled": float("inf"),
                             "name": "fc", "kind": "dense"}],
                 "policy": {"layer_scaled_tol": 1e-4}}
    failed = {"status": "timeout", "message": "worker timed out after 9 s", "wall_s": 9.0, "versions": {}}
    doc = {"model": "m.onnx", "parameters": 10, "inputs": "64 images", "environment": {}, "wall_s": 10.0,
           "passed": False, "libraries": {"pytorch": divergent, "tflearn": failed}}
    report = VerifyReport.from_json(doc)
    assert VerifyReport.from_json(json.loads(json.dumps(report.to_json()))) == report
    assert report.to_json()["libraries"]["pytorch"] == divergent
    assert report.libraries["pytorch"].why_not() == "forward equivalence mismatch: first divergent layer conv1"
    assert report.libraries["tflearn"].why_not() == "forward equivalence timeout: worker timed out after 9 s"
    assert VerifyRow.from_json({**failed, "status": "pass"}).why_not() == ""


@pytest.mark.parametrize("plant,where", [
    (lambda d: d["runs"]["2017"]["pytorch"]["record"]["steps"][1].update(loss="2.2"),
     "TrainingResults.runs.2017.pytorch.record.steps[1].loss: expected float, got str"),
    (lambda d: d["runs"]["2017"]["pytorch"]["record"]["epochs"][0].pop("val_acc"),
     "TrainingResults.runs.2017.pytorch.record.epochs[0]: missing field val_acc"),
    (lambda d: d["libraries"]["pytorch"].update(lost=1),
     "TrainingResults.libraries.pytorch: unknown field(s) lost"),
    (lambda d: d["runs"]["2017"]["tensorflow"].update(status="fine"),
     "TrainingResults.runs.2017.tensorflow: status 'fine' is none of"),
    (lambda d: d["plain"]["2017"]["pytorch"].update(epoch_s=[0.5, True]),
     "TrainingResults.plain.2017.pytorch.epoch_s[1]: expected float, got bool"),
    (lambda d: d.update(seeds="2017"), "TrainingResults.seeds: expected a list, got str")])
def test_a_document_that_breaks_the_schema_is_refused_at_the_broken_field(plant, where):
    doc = _results().to_json()
    plant(doc)
    with pytest.raises(ValueError) as caught:
        TrainingResults.from_json(doc)
    assert str(caught.value).startswith(where), str(caught.value)


def test_a_worker_row_that_breaks_the_schema_becomes_a_failed_row_and_saved_rows_read_back(tmp_path):
    job = Job("pytorch", "2017", tmp_path, 2)
    broken = {**_row().to_json(), "record": {"optimizer": None, "steps": [{"epoch": 0}], "epochs": []}}
    row = dispatch.typed_row(job, broken)
    assert row.status == "crashed" and "record.steps[0]: missing field step" in row.reason
    ledger = dispatch.Ledger(tmp_path)
    ledger.save(job, _row())
    assert ledger.load(job) == _row()
    plain = Job("pytorch", "2017", tmp_path, 2, plain=True)
    assert ledger.load(plain) is None
    ledger.save(plain, PlainRow("timeout", "plain loop took over 9 s"))
    assert ledger.load(plain) == PlainRow("timeout", "plain loop took over 9 s")


def documented_fields() -> dict:
    """{class name: [field names]} from the tables of docs/results-schema.md."""
    out, current = {}, None
    for line in SCHEMA_DOC.read_text().splitlines():
        heading = re.match(r"### (\w+)$", line)
        if heading:
            current = out.setdefault(heading.group(1), [])
        elif current is not None and re.match(r"\| `\w", line):
            current.append(line.split("`")[1])
        elif current is not None and line.startswith("## "):
            current = None
    return out


def test_the_schema_document_lists_exactly_the_fields_of_every_class():
    documented = documented_fields()
    assert set(documented) == {cls.__name__ for cls in CLASSES}
    for cls in CLASSES:
        assert documented[cls.__name__] == [f.name for f in dataclasses.fields(cls)], cls.__name__


def test_the_schema_check_catches_an_undocumented_field():
    # the check above fails when a class gains a field the document does not list
    extended = dataclasses.make_dataclass("Epoch", [("lr_now", float, dataclasses.field(default=0.0))],
                                          bases=(Epoch,))
    documented = documented_fields()
    assert documented["Epoch"] != [f.name for f in dataclasses.fields(extended)]


def _check_keys(obj, cls, documented, where):
    """Every key of `obj` is a documented field of `cls`, recursively through typed fields."""
    assert set(obj) <= set(documented[cls.__name__]), (where, set(obj) - set(documented[cls.__name__]))
    for f in dataclasses.fields(cls):
        value = obj.get(f.name)
        hint = str(f.type)
        for name in documented:
            if value is None or not re.search(rf"\b{name}\b", hint):
                continue
            if hint.startswith("dict[str, dict[str,"):
                items = [(f"{where}.{f.name}.{k}.{n}", v) for k, by in value.items() for n, v in by.items()]
            elif hint.startswith("dict[str,"):
                items = [(f"{where}.{f.name}.{k}", v) for k, v in value.items()]
            elif hint.startswith("list["):
                items = [(f"{where}.{f.name}[{i}]", v) for i, v in enumerate(value)]
            else:
                items = [(f"{where}.{f.name}", value)]
            for path, item in items:
                _check_keys(item, getattr(records, name), documented, path)


@pytest.mark.slow
@pytest.mark.parametrize("args", [("--no-dropout",), ("--seeds", "2", "--init", "seeded")], ids=["single", "sweep"])
def test_a_real_run_writes_files_that_validate_against_the_documented_fields(tmp_path, args):
    proc, folder, doc = run_training(tmp_path, "pytorch", "--epochs", "1", "--max-batches", "2", "--threads", "1",
                                     *args)
    assert proc.returncode == 0, proc.stderr
    documented = documented_fields()
    assert TrainingResults.from_json(doc).to_json() == doc
    _check_keys(doc, TrainingResults, documented, "results.json")
    verification = json.loads((folder / "verification.json").read_text())
    assert VerifyReport.from_json(verification).to_json() == verification
    _check_keys(verification, VerifyReport, documented, "verification.json")
    invocation = json.loads((folder / "invocation.json").read_text())
    assert set(invocation) == {"options", "argv"} and "--out" in invocation["argv"]
    assert TrainOptions.from_json(invocation["options"]).to_json() == invocation["options"]
    for path in (folder / "rows").rglob("*.json"):
        row = json.loads(path.read_text())
        assert TrainingRow.from_json(row).to_json() == row
    mode_fields = {"libraries", "step_agreement"} if "--seeds" not in args else {"varies", "sweep", "drift",
                                                                                    "significance"}
    assert mode_fields <= set(doc)


def test_the_key_check_finds_an_undocumented_key_deep_in_a_document():
    doc = _results().to_json()
    _check_keys(doc, TrainingResults, documented_fields(), "results.json")
    doc["runs"]["2017"]["pytorch"]["record"]["steps"][0]["lr_now"] = 1e-3
    with pytest.raises(AssertionError, match=r"results.json.runs.2017.pytorch.record.steps\[0\]"):
        _check_keys(doc, TrainingResults, documented_fields(), "results.json")
