"""Keras 3 on TensorFlow: model.compile + model.fit, one fit call per epoch on arrays in the harness's order.
The same code trains the Keras 3 fast paths on the JAX and PyTorch backends (config["options"]["backend"])."""
from __future__ import annotations

import os
import time

import numpy as np

from builders import keras_tensorflow as builder
from builders import layouts
from spec import ops
from spec.training import LOSS_CLIP, ends_in_logits
from trainers import masks
from workers import clock

NAME = "keras-tensorflow"


def loss(keras, logits: bool = False):
    """-log(clip(p_y, 1e-7, 1 - 1e-7)) per sample; Keras averages it over the batch. `logits`: the model ends in
    logits (spec.training.ends_in_logits) and the softmax over the classes is taken here.

    Keras 3's own 'categorical_crossentropy' on the TensorFlow backend does not clip here: it sees that
    the probabilities come from a Softmax op and takes the logits path (softmax_cross_entropy_with_logits)."""
    ops = keras.ops

    def categorical_crossentropy_clipped(y_true, y_pred):
        p = ops.sum(y_true * (ops.softmax(y_pred, axis=-1) if logits else y_pred), axis=-1)
        return -ops.log(ops.clip(p, LOSS_CLIP, 1.0 - LOSS_CLIP))

    return categorical_crossentropy_clipped


def optimizer(keras, opt: dict, report):
    if opt["mode"] == "canonical":
        rmsprop = keras.optimizers.RMSprop(learning_rate=opt["lr"], rho=opt["rho"], epsilon=opt["eps"])
        how = "keras.optimizers.RMSprop is canonical as it stands (v from 0, epsilon inside the sqrt)"
    elif opt["mode"] == "native":
        rmsprop = keras.optimizers.RMSprop()
        how = ""
    else:
        raise ValueError(f"unknown optimizer mode {opt['mode']!r}")
    if rmsprop.momentum or rmsprop.centered:
        raise RuntimeError("Keras RMSprop unexpectedly has momentum or centering on")
    # the learning rate lives in a float32 variable: report it as the float32 it is, shortest form
    lr = float(str(np.float32(keras.ops.convert_to_numpy(rmsprop.learning_rate))))
    report.optimizer("keras.optimizers.RMSprop", lr, float(rmsprop.rho), float(rmsprop.epsilon), 0.0,
                     "inside sqrt", how)
    return rmsprop


def _step_reporter(keras, report, epoch: int, sizes: list):
    """A callback turning fit's running batch-size-weighted mean loss back into each batch's own loss.

    It is async_safe: Keras 3 then hands each batch's logs to a thread pool instead of stopping the training
    loop to convert them, which otherwise made fit 28 % slower here (benchmarks/plain measured it). The pool
    may run the calls out of order, so the running means are collected by batch and turned into step
    losses in batch order, under a lock."""
    import threading

    class StepLosses(keras.callbacks.Callback):
        async_safe = True

        def on_epoch_begin(self, _epoch, logs=None):
            self.lock, self.means, self.next, self.seen, self.total = threading.Lock(), {}, 0, 0, 0.0

        def on_train_batch_end(self, batch, logs=None):
            with self.lock:
                self.means[batch] = float(logs["loss"])
                while self.next in self.means:
                    b = self.next
                    self.seen += sizes[b]
                    total = self.means.pop(b) * self.seen
                    self.next, loss, self.total = b + 1, (total - self.total) / sizes[b], total
                    report.step(epoch, b, loss, sizes[b])

    return StepLosses()


def _canonical_tensors(spec, native: dict) -> dict:
    """{(node name, param): value in Keras's layout} -> {"<node>.<param>": float32, canonical layout}."""
    return {f"{name}.{param}": np.asarray(builder.to_canonical(spec, spec.node(name), param, np.asarray(value)),
                                          dtype=np.float32)
            for (name, param), value in native.items()}


def _step_dumper(keras, spec, model, report, steps: int):
    """For config["dump_steps"]: wraps model.optimizer.apply_gradients to capture the (gradient, variable)
    pairs fit's train step hands the optimizer (run_eagerly, so they are concrete tensors), and reads every
    parameter in on_train_batch_end, after the update. One callback for all epochs: steps count across them."""
    trainable = {(kind, p.name) for kind, op in ops.REGISTRY.items() for p in op.params if p.trainable}
    # (node name, param) -> variable; BatchNormalization's moving statistics get no gradient from the optimizer:
    # the training forward moves them, and they are read after the step with the parameters
    everything = builder.parameters(model, spec)
    parameters = {key: variable for key, variable in everything.items() if (spec.node(key[0]).kind, key[1]) in trainable}
    slot = {id(variable): key for key, variable in parameters.items()}
    keras_optimizer = model.optimizer
    apply_gradients = keras_optimizer.apply_gradients
    captured = []

    def capturing_apply_gradients(grads_and_vars):
        grads_and_vars = list(grads_and_vars)
        captured.append({slot[id(v)]: keras.ops.convert_to_numpy(g) for g, v in grads_and_vars})
        return apply_gradients(grads_and_vars)

    keras_optimizer.apply_gradients = capturing_apply_gradients

    class StepTensors(keras.callbacks.Callback):
        step = 0

        def on_train_batch_end(self, batch, logs=None):
            if self.step >= steps:
                return
            if len(captured) != 1:
                raise RuntimeError(f"expected one optimizer update in step {self.step}, saw {len(captured)}")
            grads = captured.pop()
            missing = set(parameters) - set(grads)
            if missing:
                raise RuntimeError(f"no gradient captured for {sorted(missing)}")
            values = {key: keras.ops.convert_to_numpy(variable) for key, variable in everything.items()}
            report.step_tensors(self.step, _canonical_tensors(spec, grads), _canonical_tensors(spec, values))
            self.step += 1
            if self.step >= steps:
                keras_optimizer.apply_gradients = apply_gradients  # done: unwrap

    return StepTensors()


def _mask_setter(keras, spec, model, seed: int, sizes: list):
    """A callback handing, before each optimizer step, that step's harness masks to the model's harness dropout
    layers (builder option dropout_masks="harness"). sizes: every step's batch size, over the whole run; one
    callback for all epochs' fit calls, so its step counts across them."""

    class StepMasks(keras.callbacks.Callback):
        step = 0

        def on_train_batch_begin(self, batch, logs=None):
            # On JAX, fit carries the variables' values from step to step outside the variables, and reads
            # them back only after a sync: without one, every step after the first would reuse the first mask.
            if hasattr(model, "jax_state_sync"):
                model.jax_state_sync()
            builder.set_dropout_masks(model, spec, masks.step_masks(spec, seed, self.step, sizes[self.step]))
            self.step += 1

    return StepMasks()


def _set_threads(backend: str, threads: int) -> None:
    """The backend's own intra-op thread knob (inter-op 1), as the other trainers set theirs."""
    if backend == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif backend == "torch":
        import torch
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only settable before the first inter-op parallel work of the process
            pass
    elif backend == "jax" and threads == 1:  # XLA's CPU client has no thread-count knob but this one
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()


def build_options(config: dict) -> dict:
    """The fast path's backend, and with harness dropout masks the model whose dropout layers apply them."""
    options = dict(config.get("options", {}))
    if masks.uses_harness_masks(config):
        options.update(dropout_masks=masks.HARNESS, batch_size=int(config["batch_size"]))
    return options


def setup(spec, config) -> tuple:
    """(keras, model): backend, threads, seed and the model `build_options(config)` asks for, shared with the
    plain loop (benchmarks/plain), so that the overhead ratio compares like with like."""
    options = build_options(config)
    backend = options.get("backend", "tensorflow")
    _set_threads(backend, int(config["threads"]))  # before the backend starts
    keras = builder.library(backend)
    keras.utils.set_random_seed(int(config["seed"]))  # dropout masks
    return keras, builder.build(spec, **options)


def train(spec, data, config, report):
    keras, model = setup(spec, config)
    bs = int(config["batch_size"])
    setter = []
    if masks.uses_harness_masks(config):
        sizes = [len(b) for epoch in range(int(config["epochs"])) for b in data.batches(epoch, bs)]
        setter = [_mask_setter(keras, spec, model, int(config["seed"]), sizes)]
    dump_steps = int(config.get("dump_steps", 0))
    # dump mode runs the train step eagerly, so that the gradients reaching the optimizer are concrete tensors
    model.compile(optimizer=optimizer(keras, config["optimizer"], report), loss=loss(keras, ends_in_logits(spec)),
                  metrics=["accuracy"],
                  **({"run_eagerly": True} if dump_steps > 0 else {}))
    dumper = [_step_dumper(keras, spec, model, report, dump_steps)] if dump_steps > 0 else []

    classes = model.output_shape[-1]
    x_val = layouts.nchw_to_nhwc(data.x_val)
    y_val = keras.utils.to_categorical(data.y_val, classes).astype(np.float32)
    for epoch in range(int(config["epochs"])):
        idx = data.order[epoch]
        x = data.images(epoch, idx, layouts.nchw_to_nhwc)
        y = keras.utils.to_categorical(data.y_train[idx], classes).astype(np.float32)
        sizes = [len(b) for b in data.batches(epoch, bs)]
        callback = _step_reporter(keras, report, epoch, sizes)

        started = clock.mark()
        history = model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0,
                            callbacks=[*setter, callback, *dumper])
        cost = clock.span(started)  # wall, CPU, steal and pressure seconds of the training steps
        train_s = cost["wall_s"]

        started = time.perf_counter()
        val = model.evaluate(x_val, y_val, batch_size=bs, verbose=0, return_dict=True)
        eval_s = time.perf_counter() - started
        report.epoch(epoch, train_s, history.history["loss"][-1], history.history["accuracy"][-1], eval_s,
                     val["loss"], val["accuracy"], cost=cost)
    if hasattr(model, "jax_state_sync"):  # JAX's fit carries the values outside the variables until synced
        model.jax_state_sync()
    report.trained(_canonical_tensors(spec, {key: keras.ops.convert_to_numpy(variable)
                                             for key, variable in builder.parameters(model, spec).items()}))
