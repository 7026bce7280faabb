"""One module per library: identical RMSprop epochs, that library's own training idiom.

Each trainer module defines:
    NAME                            the library's name (as in builders.LIBRARIES)
    train(spec, data, config, report)
        spec    the ModelSpec (dropout rates already 0 when the run has dropout off)
        data    spec.training.TrainingData: x_train/x_val float32 NCHW, y_train/y_val int64, and
                order: int array (epochs, m), row e = the training indices of epoch e in batch order;
                batches are consecutive chunks of config["batch_size"] (the last may be smaller)
        config  dict: epochs, batch_size, threads, seed, optimizer {mode: canonical|native, lr, rho, eps},
                dropout_masks: "library" (the library's own dropout, seeded by seed) or "harness" (apply
                exactly trainers.masks.step_masks(spec, seed, global step, n) at every step; see there),
                dump_steps (optional, default 0): call report.step_tensors for the first dump_steps steps,
                options: the fast path's builder options (builders.FAST_PATHS; {} for the library itself)
        report  trainers.worker.Reporter: report.optimizer(...) once, report.step(...) per optimizer
                step, report.epoch(...) per epoch, report.trained(...) once at the end (every parameter and
                BatchNorm statistic as trained, canonical layout: the worker writes the trained model from it)
The model comes from the library's builder (builders.<lib>.build); the loss is the canonical mean
categorical cross-entropy -mean(log(clip(p_y, LOSS_CLIP, 1 - LOSS_CLIP))) on the softmax output (spec.training).
"""
from builders import LIBRARIES as _BUILDERS

# library name -> (trainer module, worker environment)
LIBRARIES = {name: (f"trainers.{module.split('.')[-1]}", env) for name, (module, env) in _BUILDERS.items()}
