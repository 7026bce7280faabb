"""Typed results: what the verification gate and the training workers report per library, and the results
document a training run writes (results.json), with their JSON forms.

Every class is a dataclass with `to_json()` (plain JSON data) and `from_json(data)`, which refuses a missing,
unknown or mistyped field with a ValueError saying where (`TrainingRow.record.epochs[2].val_acc: ...`).
docs/results-schema.md documents every field; tests/test_results_schema.py holds the two to each other.
A field whose metadata is OMIT_NONE is left out of the JSON while it is None; every other field is always
written, None as null.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from workers.status import Status

S = Status
TRAINING_STATUSES = tuple(map(str, (S.OK, S.FAILED, S.CRASHED, S.TIMEOUT, S.NAN, S.NOT_VERIFIED, S.INTERRUPTED)))
PLAIN_STATUSES = tuple(map(str, (S.OK, S.FAILED, S.CRASHED, S.TIMEOUT, S.INTERRUPTED)))
VERIFY_STATUSES = tuple(map(str, (S.PASS, S.MISMATCH, S.UNSUPPORTED, S.CRASHED, S.TIMEOUT, S.FAILED)))


OMIT_NONE = {"omit_if_none": True}  # field metadata: the field is absent from the JSON while it is None


class Typed:
    """JSON conversion for the dataclasses below, checked against their type hints."""

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_if_none"):
                continue
            out[f.name] = _dump(value)
        return out

    @classmethod
    def from_json(cls, data, where: str = ""):
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        fields = dataclasses.fields(cls)
        unknown = sorted(set(data) - {f.name for f in fields})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in fields:
            if f.name in data:
                values[f.name] = _load(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing field {f.name}")
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def _dump(value):
    if isinstance(value, Typed):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


_SCALARS = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _load(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _load(inner, value, where)
    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, Typed):
        return hint.from_json(value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        return [_load(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _load(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else value
    accepted = _SCALARS[hint]
    if isinstance(value, bool) and hint is not bool or not isinstance(value, accepted):
        raise ValueError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r:.40}")
    return float(value) if hint is float else value


def _one_of(value: str, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is none of {', '.join(allowed)}")


# --- training --------------------------------------------------------------------------------------------

@dataclass
class Optimizer(Typed):
    """What a library's RMSprop does (trainers.worker.Reporter.optimizer)."""
    impl: str
    lr: float
    rho: float
    eps: float
    ms_init: float
    eps_placement: str
    how: str = ""
    grad_clip_norm: float = 0.0


@dataclass
class Step(Typed):
    """One optimizer step: its loss on its batch, before its update. The events a worker streamed before it
    died have no batch_size."""
    epoch: int
    step: int
    loss: float
    batch_size: int | None = field(default=None, metadata=OMIT_NONE)


@dataclass
class Epoch(Typed):
    epoch: int
    train_s: float
    train_loss: float
    train_acc: float
    eval_s: float
    val_loss: float
    val_acc: float
    cpu_s: float | None = field(default=None, metadata=OMIT_NONE)  # workers.clock, over the same steps as train_s
    steal_s: float | None = field(default=None, metadata=OMIT_NONE)
    pressure_s: float | None = field(default=None, metadata=OMIT_NONE)


@dataclass
class Record(Typed):
    """What a training worker reported: its optimizer, every step and epoch, and (from a worker that
    finished) its library versions, wall time, Python and peak memory."""
    optimizer: Optimizer | None
    steps: list[Step]
    epochs: list[Epoch]
    versions: dict[str, str] | None = field(default=None, metadata=OMIT_NONE)
    wall_s: float | None = field(default=None, metadata=OMIT_NONE)
    python: str | None = field(default=None, metadata=OMIT_NONE)
    peak_rss_mib: float | None = field(default=None, metadata=OMIT_NONE)

    @classmethod
    def empty(cls) -> Record:
        return cls(optimizer=None, steps=[], epochs=[])


@dataclass
class Executor(Typed):
    kind: str  # "local" or "dask"
    host: str
    shared: bool  # trained beside other jobs, so its speed is not comparable


@dataclass
class Summary(Typed):
    """Figures of one row, derived from its record by the report (analysis.report.summary)."""
    epochs_done: int
    first_epoch_s: float | None
    steady_epoch_s: float | None
    images_per_s: float | None
    first_epoch_images_per_s: float | None
    peak_rss_mib: float | None
    train_loss: float | None
    train_acc: float | None
    val_loss: float | None
    val_acc: float | None


JUDGE_VERDICTS = ("agrees", "differs", "no model", "failed")


@dataclass
class Judgement(Typed):
    """onnxruntime's evaluation of a library's trained model (models/<name>.onnx) on the validation images, beside
    the library's own last evaluation (verify.judge)."""
    verdict: str  # agrees | differs (the library's own evaluation is not the model's) | no model | failed
    reason: str = ""
    val_loss: float | None = field(default=None, metadata=OMIT_NONE)
    val_acc: float | None = field(default=None, metadata=OMIT_NONE)
    loss_diff: float | None = field(default=None, metadata=OMIT_NONE)  # the library's own minus the judge's
    acc_diff: float | None = field(default=None, metadata=OMIT_NONE)
    loss_tolerance: float | None = field(default=None, metadata=OMIT_NONE)
    acc_tolerance: float | None = field(default=None, metadata=OMIT_NONE)  # near ties / images, see verify.judge
    near_ties: int | None = field(default=None, metadata=OMIT_NONE)

    def __post_init__(self):
        _one_of(self.verdict, JUDGE_VERDICTS, "verdict")


@dataclass
class TrainingRow(Typed):
    """One library's training job: how it ended, why, and what its worker reported."""
    status: str
    reason: str
    record: Record
    wall_s: float = 0.0
    executor: Executor | None = field(default=None, metadata=OMIT_NONE)
    summary: Summary | None = field(default=None, metadata=OMIT_NONE)
    departures: list[str] | None = field(default=None, metadata=OMIT_NONE)
    model: str | None = field(default=None, metadata=OMIT_NONE)  # the trained model as ONNX, in the results folder
    judge: Judgement | None = field(default=None, metadata=OMIT_NONE)

    def __post_init__(self):
        _one_of(self.status, TRAINING_STATUSES, "status")

    @classmethod
    def without_record(cls, status: str, reason: str) -> TrainingRow:
        return cls(status=status, reason=reason, record=Record.empty())


@dataclass
class PlainRow(Typed):
    """One run of a library's plain tutorial-style loop (benchmarks.overhead.run_plain)."""
    status: str
    reason: str = ""
    wall_s: float | None = field(default=None, metadata=OMIT_NONE)
    library: str | None = field(default=None, metadata=OMIT_NONE)
    epoch_s: list[float] | None = field(default=None, metadata=OMIT_NONE)
    final_loss: float | None = field(default=None, metadata=OMIT_NONE)
    final_loss_of: str | None = field(default=None, metadata=OMIT_NONE)
    epoch_cpu_s: list[float] | None = field(default=None, metadata=OMIT_NONE)  # workers.clock, per epoch
    epoch_steal_s: list[float | None] | None = field(default=None, metadata=OMIT_NONE)
    epoch_pressure_s: list[float | None] | None = field(default=None, metadata=OMIT_NONE)
    turns: str | None = field(default=None, metadata=OMIT_NONE)  # "epoch": took turns with the harness (workers.turns)

    def __post_init__(self):
        _one_of(self.status, PLAIN_STATUSES, "status")


@dataclass
class Interruption(Typed):
    signal: str
    missing: list[str]  # the jobs that did not finish, as labelled on the console


@dataclass
class TrainingResults(Typed):
    """results.json of a training run. `runs` holds every row by run key (a seed, or "repeat1", ...) and
    library; the mode adds its own part: `libraries` (+ `step_agreement`) for a single run, `varies`,
    `sweep`, `drift` and `significance` for a seed sweep, `plain` and `benchmark` for --repeat."""
    experiment: str
    experiment_spec: dict
    model: str
    config: dict
    images_per_epoch: int
    init: str
    validation: str
    shuffled: bool
    environment: dict
    executor: str
    seeds: list[int]
    runs: dict[str, dict[str, TrainingRow]]
    fast_paths: dict
    libraries: dict[str, TrainingRow] | None = field(default=None, metadata=OMIT_NONE)
    step_agreement: dict | None = field(default=None, metadata=OMIT_NONE)
    varies: list[str] | None = field(default=None, metadata=OMIT_NONE)
    sweep: dict | None = field(default=None, metadata=OMIT_NONE)
    drift: dict | None = field(default=None, metadata=OMIT_NONE)
    significance: dict | None = field(default=None, metadata=OMIT_NONE)
    plain: dict[str, dict[str, PlainRow]] | None = field(default=None, metadata=OMIT_NONE)
    benchmark: dict | None = field(default=None, metadata=OMIT_NONE)
    interrupted: Interruption | None = field(default=None, metadata=OMIT_NONE)
    converted: dict | None = field(default=None, metadata=OMIT_NONE)  # a --model converted to ONNX (spec.convert)


# --- verification ----------------------------------------------------------------------------------------

@dataclass
class OutputStats(Typed):
    max_abs: float
    max_rel: float
    allclose: bool
    argmax_agree: int
    samples: int
    argmax_disagree_decided: int
    atol: float | None = field(default=None, metadata=OMIT_NONE)  # the allclose atol applied (envelope-aware)
    argmax_margin: float | None = field(default=None, metadata=OMIT_NONE)  # a top-2 margin beyond this is decided


@dataclass
class LayerError(Typed):
    name: str
    kind: str
    max_abs: float | None  # None when the shapes differ
    scaled: float
    shape: list[int] | None = field(default=None, metadata=OMIT_NONE)
    ref_shape: list[int] | None = field(default=None, metadata=OMIT_NONE)
    bound: float | None = field(default=None, metadata=OMIT_NONE)  # scaled must not exceed it
    envelope: float | None = field(default=None, metadata=OMIT_NONE)  # None: judged by the fixed bound
    envelopes: float | None = field(default=None, metadata=OMIT_NONE)  # scaled / envelope
    numerics: str | None = field(default=None, metadata=OMIT_NONE)  # "within numerics", "3.2e+04 envelopes off"


@dataclass
class Divergence(Typed):
    name: str
    kind: str
    scaled: float
    shape: list[int] | None = field(default=None, metadata=OMIT_NONE)
    ref_shape: list[int] | None = field(default=None, metadata=OMIT_NONE)
    bound: float | None = field(default=None, metadata=OMIT_NONE)
    envelopes: float | None = field(default=None, metadata=OMIT_NONE)
    numerics: str | None = field(default=None, metadata=OMIT_NONE)


@dataclass
class VerifyRow(Typed):
    """One library's forward pass against onnxruntime (verify.equivalence)."""
    status: str
    message: str
    wall_s: float
    versions: dict[str, str]
    output: OutputStats | None = None
    first_divergent_layer: Divergence | None = None
    layers: list[LayerError] | None = field(default=None, metadata=OMIT_NONE)  # absent when the worker gave no outputs
    policy: dict | None = field(default=None, metadata=OMIT_NONE)

    def __post_init__(self):
        _one_of(self.status, VERIFY_STATUSES, "status")

    def why_not(self) -> str:
        """Why this library may not train ("" when it passed)."""
        if self.status == "pass":
            return ""
        where = self.first_divergent_layer
        return f"forward equivalence {self.status}: {self.message or f'first divergent layer {where and where.name}'}"


@dataclass
class VerifyReport(Typed):
    """verification.json of a training run: verify equivalence's report on the libraries it trains."""
    model: str
    parameters: int
    inputs: str
    environment: dict
    libraries: dict[str, VerifyRow]
    wall_s: float
    passed: bool
    build_options: dict = field(default_factory=dict)
    envelope: dict | None = field(default=None, metadata=OMIT_NONE)  # how each node's bound was set
    converted: dict | None = field(default=None, metadata=OMIT_NONE)  # the model's conversion (spec.convert)


SCHEMA = (TrainingResults, TrainingRow, Record, Optimizer, Step, Epoch, Executor, Summary, Judgement, PlainRow, Interruption,
          VerifyReport, VerifyRow, OutputStats, Divergence, LayerError)
