"""Plain, tutorial-style training loops: the yardstick for the harness's overhead.

`python -m benchmarks.plain LIBRARY JOB_DIR`, in that library's environment (keras-theano: the theano one),
cwd = the repository root, thread variables (OMP_NUM_THREADS, ...) set by the caller as the harness sets them.
It reads the job folder the harness wrote (spec.training.load_job), builds the model with the library's builder,
sets threads with the knobs the harness trainer uses, and trains config["epochs"] epochs over the harness's batch
order with the harness trainer's own optimizer and loss helpers (identical arithmetic) in the library's tutorial
idiom and nothing else: no per-step events, conversions, callbacks, tensor dumps or harness dropout masks.
It prints one JSON line to stdout:
    {"library": ..., "epoch_s": [...], "epoch_cpu_s": [...], "epoch_steal_s": [...], "epoch_pressure_s": [...],
     "final_loss": ..., "final_loss_of": "last batch" | "last epoch (mean)", "turns": "epoch" | null}
epoch_s: each epoch's training alone (the same boundaries as the harness trainer's train_s). final_loss: the last
batch's loss where the idiom hands it out for free; the fit-based Keras loops get only fit's History, whose
loss is the epoch's batch-size-weighted mean (compare it with the harness's record["epochs"][-1]["train_loss"]).
turns: "epoch" when every epoch took its turn with the harness's (workers.turns), else null.

Each module benchmarks.plain.<module> defines train(spec, data, config) -> EpochTimes (a list of epoch seconds
carrying .final_loss and .final_loss_of).
"""
from builders import LIBRARIES as _BUILDERS
from builders import NAMES, resolve

# library name -> plain module
_MODULES = {name: f"benchmarks.plain.{module.split('.')[-1]}" for name, (module, _env) in _BUILDERS.items()}
# library or fast path -> (plain module, the fast path's options, which the loop finds in config["options"])
LIBRARIES = {name: (_MODULES[resolve(name)[0]], resolve(name)[2]) for name in NAMES}


class EpochTimes(list):
    """Seconds of each epoch's training; spans: each epoch's workers.clock span (CPU, steal and pressure seconds
    too) where the loop measured them; final_loss: the loss the run ended on, as a float, and final_loss_of: "last
    batch" or "last epoch (mean)"."""

    def __init__(self, seconds=(), final_loss=float("nan"), final_loss_of="last batch"):
        spans = [s for s in seconds if isinstance(s, dict)]
        super().__init__(float(s["wall_s"] if isinstance(s, dict) else s) for s in seconds)
        self.spans = spans if len(spans) == len(self) else []
        self.final_loss, self.final_loss_of = float(final_loss), final_loss_of


class NullReport:
    """Stands in for trainers.worker.Reporter where a trainer's helper (its optimizer) wants one: reports nothing."""

    def optimizer(self, *args, **kwargs) -> None:
        pass
