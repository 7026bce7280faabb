"""Training worker: `python -m trainers.worker LIBRARY JOB_DIR`, in the library's own environment.

Reads the job folder (spec.training.load_job). Streams events to stdout (workers.training: the orchestrator
draws progress from them and keeps every finished epoch even if the worker dies later), and ends with
JOB_DIR/LIBRARY.train.json (complete or absent). Exit codes (workers.ExitCode): OK, NON_FINITE on a
non-finite loss, FAILED on any other failure, BAD_INPUT on bad arguments.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from builders import NAMES, resolve
from spec import batchnorm
from spec.training import TrainingData, load_job  # noqa: F401 - TrainingData: what train() is handed
from trainers import LIBRARIES
from workers import ExitCode, lifeline, results
from workers.training import event_line, result_path, tensors_path, trained_path

CLOCK_FIELDS = ("cpu_s", "steal_s", "pressure_s")  # workers.clock's figures beside train_s in an epoch's record


class NonFiniteLoss(RuntimeError):
    pass


class Reporter:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.record = {"optimizer": None, "steps": [], "epochs": []}
        self.tensors = {}  # "grad/<step>/<param>" and "param/<step>/<param>" -> float32, canonical layout
        self.trained_params = {}  # "<node>.<param>" -> float32, canonical layout, after the last epoch

    def _emit(self, event: dict) -> None:
        self.stream.write(event_line(event))
        self.stream.flush()

    def optimizer(self, impl: str, lr: float, rho: float, eps: float, ms_init: float, eps_placement: str,
                  how: str = "", grad_clip_norm: float = 0.0) -> None:
        """What the library's RMSprop does: impl (class/kernel used), hyperparameters, where the mean
        square starts, 'inside sqrt' or 'outside sqrt', how it was made to match canonical, and any
        gradient clipping the library applies on its own (a global norm; 0 for none)."""
        self.record["optimizer"] = dict(impl=impl, lr=lr, rho=rho, eps=eps, ms_init=ms_init,
                                        eps_placement=eps_placement, how=how, grad_clip_norm=grad_clip_norm)
        self._emit({"type": "optimizer", **self.record["optimizer"]})

    def step(self, epoch: int, step: int, loss: float, batch_size: int) -> None:
        """The loss of optimizer step `step` of `epoch` (0-based), on that batch, before its update."""
        loss = float(loss)
        self.record["steps"].append({"epoch": epoch, "step": step, "loss": loss, "batch_size": batch_size})
        self._emit({"type": "step", "epoch": epoch, "step": step, "loss": loss})
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss} at epoch {epoch + 1}, step {step + 1}")

    def step_tensors(self, step: int, grads: dict, params: dict) -> None:
        """For config["dump_steps"] runs: the gradient the optimizer applied at global step `step` (0-based)
        and every parameter after that update, keyed "<layer>.weight"/"<layer>.bias", canonical layout."""
        for kind, tensors in (("grad", grads), ("param", params)):
            for name, value in tensors.items():
                self.tensors[f"{kind}/{step}/{name}"] = np.asarray(value, dtype=np.float32)

    def trained(self, params: dict) -> None:
        """After the last epoch: every parameter of the model as trained, BatchNorm's running statistics included,
        keyed "<node>.<param>", canonical layout; the worker writes the trained model (spec.onnx_export) from it."""
        self.trained_params = {name: np.asarray(value, dtype=np.float32) for name, value in params.items()}

    def epoch(self, epoch: int, train_s: float, train_loss: float, train_acc: float, eval_s: float,
              val_loss: float, val_acc: float, cost: dict | None = None) -> None:
        """One epoch: wall time of its training steps alone, training loss/accuracy as the library
        computed them during training, then evaluation time and validation loss/accuracy. cost: the training
        steps' workers.clock span (CPU, steal and pressure seconds beside the wall time)."""
        row = dict(epoch=epoch, train_s=train_s, train_loss=float(train_loss), train_acc=float(train_acc),
                   eval_s=eval_s, val_loss=float(val_loss), val_acc=float(val_acc),
                   **{key: (cost or {}).get(key) for key in CLOCK_FIELDS})
        self.record["epochs"].append(row)
        self._emit({"type": "epoch", **row})
        if not math.isfinite(row["train_loss"]):
            raise NonFiniteLoss(f"training loss became {row['train_loss']} in epoch {epoch + 1}")


def trained_spec(spec, params: dict, library: str):
    """The spec the library trained (its BatchNorm semantics, its epsilon included) holding the trained parameters;
    every parameter must be there, in its canonical shape."""
    missing = sorted(set(spec.weights) - set(params))
    wrong = sorted(k for k in set(spec.weights) & set(params) if params[k].shape != spec.weights[k].shape)
    if missing or wrong or set(params) - set(spec.weights):
        raise RuntimeError(f"{library} reported trained parameters that are not the model's: missing {missing[:3]}, "
                           f"shapes differ {wrong[:3]}, unknown {sorted(set(params) - set(spec.weights))[:3]}")
    return dataclasses.replace(spec, weights=dict(params))


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lifeline.die_with_parent()  # no orphan if the run that started this worker dies
    if len(argv) != 2 or argv[0] not in NAMES:
        print(f"usage: python -m trainers.worker {{{','.join(NAMES)}}} JOB_DIR", file=sys.stderr)
        return ExitCode.BAD_INPUT
    library, job = argv[0], Path(argv[1])
    reporter = Reporter()
    started = time.perf_counter()
    try:
        spec, data, config = load_job(job)
        base, _, options = resolve(library)
        module = importlib.import_module(LIBRARIES[base][0])
        builder = importlib.import_module(LIBRARIES[base][0].replace("trainers.", "builders."))
        spec = batchnorm.semantics(spec, builder.NATIVE_BATCHNORM, config.get("batchnorm", "canonical"))
        module.train(spec, data, {**config, "options": options}, reporter)
        trained = trained_spec(spec, reporter.trained_params, library)
        record = {**reporter.record, "versions": builder.versions(**options), "wall_s": time.perf_counter() - started,
                  "python": sys.version.split()[0], "peak_rss_mib": peak_rss_mib()}
    except NonFiniteLoss as exc:
        print(f"non-finite loss: {exc}", file=sys.stderr)
        return ExitCode.NON_FINITE
    except Exception as exc:
        traceback.print_exc()
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return ExitCode.FAILED
    trained_path(job, library).mkdir(exist_ok=True)
    trained.save(trained_path(job, library))
    if reporter.tensors:
        with results.atomic_file(tensors_path(job, library)) as handle:
            np.savez(handle, **reporter.tensors)
    results.write_json(result_path(job, library), record)
    return ExitCode.OK


if __name__ == "__main__":
    # run the imported module's main, not this __main__ copy, so that there is one Reporter and one
    # load_job in the process (instrumentation that patches trainers.worker then sees every call)
    from trainers.worker import main as module_main

    sys.exit(module_main())
