"""Planning a training run: the options (what `python -m cli.train` parses, and what `cli.explain` builds),
every one of them checked, the experiment, model and data loaded and checked, and the (library, seed) runs
decided, all before anything is written or started."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workers.progress import MODES as PROGRESS_MODES
from workers.records import Typed

if TYPE_CHECKING:
    from spec.convert import Converted
    from spec.ir import ModelSpec

OPTIMIZERS = ("canonical", "native")
DROPOUTS = ("own", "identical", "off")
INITS = ("fixed", "seeded")
EXECUTORS = ("local", "dask")
DROPOUT_SUFFIX = {"own": "", "identical": "-identicaldropout", "off": "-nodropout"}
TRAINING_KEYS = ("model", "train_images", "validation", "shuffle", "seed", "batch_size", "epochs", "optimizer",
                 "preprocess")


class BadInput(Exception):
    """A user error: one line, exit 2."""


@dataclass(frozen=True)
class TrainOptions(Typed):
    """Everything a training run is asked to do; the defaults are the train command's."""
    libraries: list[str]
    experiment: str = "seed-2017"
    model: str | None = None  # a model in place of the experiment's: ONNX, or converted to it (spec.convert)
    optimizer: str = "canonical"
    epochs: int | None = None
    train_images: int | None = None  # the first N training images in place of the experiment's count
    batch_size: int | None = None
    seed: int | None = None
    dropout: str = "own"
    max_batches: int | None = None
    seeds: int = 1
    repeat: int = 1
    plain: bool = True  # with repeat > 1: also time the plain tutorial-style loops
    target_ci: float | None = None  # with repeat > 1: stop once every harness/plain interval is this narrow
    init: str = "fixed"
    augment: bool = False  # the experiment's random crop and flip, drawn by the harness
    batchnorm: str = "canonical"  # spec.batchnorm.MODES
    executor: str = "local"
    scheduler: str | None = None
    workers: int = 2
    threads: int | None = None
    timeout: float = 3600.0
    out: str = "results"
    data: str | None = None
    progress: str = "auto"  # PROGRESS_MODES (workers.progress): how stderr shows each library's training

    def check(self) -> None:
        """BadInput naming the first option that cannot work (the data, model and libraries are checked by
        `make`)."""
        problem = next(self._problems(), None)
        if problem:
            raise BadInput(problem)

    def _problems(self):
        if not self.libraries:
            yield "name the libraries to train ('all', 'fast-paths' or names)"
        for name, allowed in (("optimizer", OPTIMIZERS), ("dropout", DROPOUTS), ("init", INITS),
                              ("executor", EXECUTORS), ("progress", PROGRESS_MODES)):
            if getattr(self, name) not in allowed:
                yield f"--{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}"
        for name in ("epochs", "train_images", "batch_size", "max_batches", "threads", "seeds", "workers", "repeat"):
            value = getattr(self, name)
            if value is not None and value < 1:
                yield f"--{name.replace('_', '-')} must be at least 1"
        if self.seed is not None and self.seed < 0:
            yield "--seed must be at least 0"
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            yield f"--timeout must be a positive number of seconds, not {self.timeout:g}"
        if self.repeat > 1 and self.seeds > 1:
            yield "--repeat and --seeds do not combine: a benchmark repeats one seed"
        if self.target_ci is not None and not (self.repeat > 1 and self.plain and 0 < self.target_ci < 1):
            yield ("--target-ci needs --repeat N (the most runs to make, at least 2), the plain loops, and a "
                   "percentage between 0 and 100")
        if self.repeat > 1 and self.executor == "dask":
            yield "--repeat needs --executor local: timings from several jobs at once are not a benchmark"
        if self.scheduler and self.executor != "dask":
            yield "--scheduler needs --executor dask"
        from spec.batchnorm import MODES

        if self.batchnorm not in MODES:
            yield f"--batchnorm must be one of {', '.join(MODES)}, not {self.batchnorm!r}"
        if self.repeat > 1 and (self.augment or self.batchnorm != "canonical"):
            yield ("--repeat times the canonical, un-augmented loop (the plain loops have no other): drop --augment "
                   "and --batchnorm")
        if self.model and self.init != "fixed":
            yield "--init seeded redraws the seed CNN's Glorot-uniform weights; a --model trains its own weights"


@dataclass(frozen=True)
class Run:
    """One run of every library: its key in the results' "runs", its seed, and the tag of its labels."""
    key: str
    seed: int
    tag: str


@dataclass
class Plan:
    options: TrainOptions
    names: list[str]  # the libraries and fast paths, in the order the user named them
    experiment: dict
    model_path: Path
    spec: ModelSpec
    arrays: tuple  # x_train, y_train, x_val, y_val as the experiment preprocesses them
    epochs: int
    batch_size: int
    threads: int
    dropout: str  # own | identical | off
    seeds: list[int]
    runs: list[Run]
    configs: dict[int, dict]  # seed -> spec.training.config_for configuration
    conversion: Converted | None = None  # how a --model that is not ONNX became model_path (spec.convert)

    @property
    def mode(self) -> str:
        """single (one run), sweep (--seeds K) or benchmark (--repeat N)."""
        return "benchmark" if self.options.repeat > 1 else "sweep" if len(self.seeds) > 1 else "single"

    @property
    def base_seed(self) -> int:
        return self.seeds[0]

    @property
    def config(self) -> dict:
        return self.configs[self.base_seed]

    @property
    def limit(self) -> int | None:
        """Training images per epoch when --max-batches cuts the epoch short."""
        return self.options.max_batches * self.batch_size if self.options.max_batches else None

    @property
    def images(self) -> int:
        n = len(self.arrays[0])
        return n if self.limit is None else min(self.limit, n)

    @property
    def steps_total(self) -> int:
        return self.epochs * -(-self.images // self.batch_size)

    def folder_name(self, stamp: str) -> str:
        o = self.options
        suffix = {"sweep": f"-{len(self.seeds)}seeds", "benchmark": f"-repeat{o.repeat}"}.get(self.mode, "")
        model = f"-{Path(o.model).stem}" if o.model else ""
        bn = "" if o.batchnorm == "canonical" else f"-bn-{o.batchnorm}"
        augment = "-augment" if o.augment else ""
        return f"{stamp}-{o.experiment}{model}-{o.optimizer}{bn}{augment}{DROPOUT_SUFFIX[self.dropout]}{suffix}"


def make(options: TrainOptions, like: Plan | None = None, folder: Path | None = None) -> Plan:
    """The plan for `options`, or BadInput naming the option, library, experiment, model or data that is wrong.
    `like`: a plan of the same experiment and data, whose model and data are taken instead of loaded again.
    `folder`: the results folder of a run resumed, whose kept conversion of the model is the one trained."""
    from builders import select
    from spec import experiments
    from spec import training as harness

    options.check()
    try:
        names = select(options.libraries)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    experiment = _experiment(options.experiment)
    if options.train_images:
        experiment = {**experiment, "train_images": options.train_images}
    same = (options.experiment, options.model, options.data, options.train_images)
    if like is not None and (like.options.experiment, like.options.model, like.options.data,
                             like.options.train_images) == same:
        model_path, conversion, spec, arrays = like.model_path, like.conversion, like.spec, like.arrays
    else:
        conversion = _conversion(options.model, folder) if options.model else None
        model_path = conversion.onnx_path if conversion else experiments.model_path(experiment)
        spec, arrays = _model(model_path), _data(options.data, experiment, asked=bool(options.train_images))
    epochs = options.epochs or experiment["epochs"]
    batch_size = options.batch_size or experiment["batch_size"]
    base_seed = experiment["seed"] if options.seed is None else options.seed
    seeds = [base_seed + i for i in range(options.seeds)]
    if options.repeat > 1:  # the same seed again, each time in fresh processes
        runs = [Run(f"repeat{r}", base_seed, f"repeat {r}") for r in range(1, options.repeat + 1)]
    else:
        runs = [Run(str(seed), seed, f"seed {seed}" if len(seeds) > 1 else "") for seed in seeds]
    threads = options.threads or _default_threads(options)
    try:
        configs = {seed: harness.config_for(experiment, epochs, batch_size, options.optimizer, threads, seed,
                                            dropout=options.dropout != "off",
                                            dropout_masks="harness" if options.dropout == "identical" else "library",
                                            augment=options.augment, batchnorm=options.batchnorm)
                   for seed in seeds}
    except ValueError as exc:  # --augment for an experiment without an [augment] table
        raise BadInput(f"--augment: {exc}") from None
    return Plan(options, names, experiment, model_path, spec, arrays, epochs, batch_size, threads, options.dropout,
                seeds, runs, configs, conversion if conversion and conversion.converted else None)


def _experiment(name: str) -> dict:
    from spec import experiments

    try:
        experiment = experiments.load(name)
    except KeyError as exc:
        raise BadInput(exc.args[0]) from None
    if not all(key in experiment for key in TRAINING_KEYS):
        raise BadInput(f"experiment {name!r} is not one to train (it lacks "
                       f"{', '.join(k for k in TRAINING_KEYS if k not in experiment)})")
    return experiment


def _conversion(model: str, folder: Path | None) -> Converted:
    """The --model as an ONNX file: as it is, converted into a temporary file (kept in the results folder once
    there is one, `keep_conversion`), or on resuming the conversion kept in `folder`; BadInput when it cannot be."""
    from spec import convert
    from spec.onnx_import import ModelError

    try:
        if convert.kind(model) != "onnx" and folder is not None and (folder / convert.kept_name(model)).is_file():
            return convert.kept(model, folder / convert.kept_name(model))
        return convert.to_temporary(model)
    except ModelError as exc:
        raise BadInput(str(exc)) from None


def keep_conversion(plan: Plan, folder: Path) -> dict | None:
    """A converted model copied into the new results folder, which the plan then names; said on stderr. The
    conversion's facts for the results, or None when the model was ONNX already."""
    import sys

    from spec import convert

    if plan.conversion is None:
        return None
    plan.conversion = convert.keep(plan.conversion, folder)
    plan.model_path = plan.conversion.onnx_path
    print(plan.conversion.line(), file=sys.stderr)
    return plan.conversion.to_json()


def _model(path: Path):
    """The model to train (spec.training.cifar_model), or BadInput."""
    from spec.onnx_import import ModelError
    from spec.training import cifar_model

    try:
        return cifar_model(path)
    except ModelError as exc:
        raise BadInput(str(exc)) from None


def _data(path, experiment: dict, asked: bool = False) -> tuple:
    """The experiment's arrays, or BadInput; `asked`: the training-image count is the user's --train-images."""
    import cifar10
    from spec import training as harness

    try:
        return harness.datasets(cifar10.find(path, **harness.needs(experiment)), experiment)
    except cifar10.TooFewImages as exc:
        raise BadInput(f"{exc}: ask for at most what the data holds" if asked else
                       f"{exc} (the experiment trains on {experiment['train_images']}; --train-images N takes the "
                       f"first N)") from None
    except cifar10.DataError as exc:
        raise BadInput(str(exc)) from None


def _default_threads(options: TrainOptions) -> int:
    """All cores, or with a local Dask cluster the cores divided among its workers."""
    cores = os.cpu_count() or 1
    local_cluster = options.executor == "dask" and not options.scheduler
    return max(1, cores // options.workers) if local_cluster else cores
