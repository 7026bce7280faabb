"""Keras 3 on TensorFlow: model.compile + model.fit, one fit call per epoch on arrays in the harness's order."""
from __future__ import annotations

import time

import numpy as np

from builders import keras_tensorflow as builder
from builders import layouts
from trainers import LOSS_CLIP

NAME = "keras-tensorflow"


def _canonical_loss(keras):
    """-log(clip(p_y, 1e-7, 1 - 1e-7)) per sample; Keras averages it over the batch.

    Keras 3's own 'categorical_crossentropy' on the TensorFlow backend does not clip here: it sees that
    the probabilities come from a Softmax op and takes the logits path (softmax_cross_entropy_with_logits)."""
    ops = keras.ops

    def categorical_crossentropy_clipped(y_true, y_pred):
        p = ops.sum(y_true * y_pred, axis=-1)
        return -ops.log(ops.clip(p, LOSS_CLIP, 1.0 - LOSS_CLIP))

    return categorical_crossentropy_clipped


def _optimizer(keras, opt: dict, report):
    if opt["mode"] == "canonical":
        optimizer = keras.optimizers.RMSprop(learning_rate=opt["lr"], rho=opt["rho"], epsilon=opt["eps"])
        how = "keras.optimizers.RMSprop is canonical as it stands (v from 0, epsilon inside the sqrt)"
    elif opt["mode"] == "native":
        optimizer = keras.optimizers.RMSprop()
        how = ""
    else:
        raise ValueError(f"unknown optimizer mode {opt['mode']!r}")
    if optimizer.momentum or optimizer.centered:
        raise RuntimeError("Keras RMSprop unexpectedly has momentum or centering on")
    # the learning rate lives in a float32 variable: report it as the float32 it is, shortest form
    lr = float(str(np.float32(optimizer.learning_rate.numpy())))
    report.optimizer("keras.optimizers.RMSprop", lr, float(optimizer.rho), float(optimizer.epsilon), 0.0,
                     "inside sqrt", how)
    return optimizer


def _step_reporter(keras, report, epoch: int, sizes: list):
    """A callback turning fit's running batch-size-weighted mean loss back into each batch's own loss."""

    class StepLosses(keras.callbacks.Callback):
        def on_epoch_begin(self, _epoch, logs=None):
            self.seen, self.total = 0, 0.0

        def on_train_batch_end(self, batch, logs=None):
            self.seen += sizes[batch]
            total = float(logs["loss"]) * self.seen
            report.step(epoch, batch, (total - self.total) / sizes[batch], sizes[batch])
            self.total = total

    return StepLosses()


def train(spec, data, config, report):
    keras = builder._keras()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(config["threads"]))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(int(config["seed"]))  # dropout masks

    model = builder.build(spec)
    optimizer = _optimizer(keras, config["optimizer"], report)
    model.compile(optimizer=optimizer, loss=_canonical_loss(keras), metrics=["accuracy"])

    classes = model.output_shape[-1]
    bs = int(config["batch_size"])
    x_val = layouts.nchw_to_nhwc(data.x_val)
    y_val = keras.utils.to_categorical(data.y_val, classes).astype(np.float32)
    for epoch in range(int(config["epochs"])):
        idx = data.order[epoch]
        x = layouts.nchw_to_nhwc(data.x_train[idx])
        y = keras.utils.to_categorical(data.y_train[idx], classes).astype(np.float32)
        sizes = [len(b) for b in data.batches(epoch, bs)]
        callback = _step_reporter(keras, report, epoch, sizes)

        started = time.perf_counter()
        history = model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
        train_s = time.perf_counter() - started

        started = time.perf_counter()
        val = model.evaluate(x_val, y_val, batch_size=bs, verbose=0, return_dict=True)
        eval_s = time.perf_counter() - started
        report.epoch(epoch, train_s, history.history["loss"][-1], history.history["accuracy"][-1], eval_s,
                     val["loss"], val["accuracy"])
