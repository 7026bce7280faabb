"""Keras 3 on TensorFlow, the tutorial idiom: compile, then model.fit(x, y, batch_size, epochs=1, shuffle=False,
verbose=0) once per epoch on that epoch's arrays in the harness's order; no callbacks."""
from __future__ import annotations

import numpy as np

from benchmarks.plain import EpochTimes, NullReport
from builders import layouts
from trainers import masks
from trainers.keras_tensorflow import loss, optimizer, setup
from workers import clock


def train(spec, data, config) -> EpochTimes:
    # the harness trainer's backend, threads, seed and model, with Keras's own dropout (no harness masks here)
    keras, model = setup(spec, {**config, "dropout_masks": masks.LIBRARY})
    bs = int(config["batch_size"])
    # metrics=["accuracy"] as in Keras's tutorials (and the harness's compile)
    model.compile(optimizer=optimizer(keras, config["optimizer"], NullReport()), loss=loss(keras),
                  metrics=["accuracy"])
    classes = model.output_shape[-1]

    seconds = []
    for epoch in range(int(config["epochs"])):
        idx = data.order[epoch]
        x = layouts.nchw_to_nhwc(data.x_train[idx])
        y = keras.utils.to_categorical(data.y_train[idx], classes).astype(np.float32)
        started = clock.mark()
        history = model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0)
        seconds.append(clock.span(started))
    return EpochTimes(seconds, history.history["loss"][-1], "last epoch (mean)")
