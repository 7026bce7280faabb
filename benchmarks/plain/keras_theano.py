"""Keras 2.3.1 on Theano, the tutorial idiom: compile, then model.fit(x, y, batch_size, epochs=1, shuffle=False,
verbose=0) once per epoch on that epoch's NCHW (channels_first) arrays in the harness's order; no callbacks."""
from __future__ import annotations

import numpy as np

from benchmarks.plain import EpochTimes, NullReport
from trainers import masks
from trainers.keras_theano import optimizer, setup
from workers import clock


def train(spec, data, config) -> EpochTimes:
    config = {**config, "dropout_masks": masks.LIBRARY}  # a tutorial loop lets Dropout draw its own masks
    # the harness trainer's threads, seed and model (in canonical mode: max-pool gradient to the first maximum)
    keras, model = setup(spec, config)
    from keras.utils import to_categorical

    bs = int(config["batch_size"])
    # Keras 2's categorical_crossentropy is the canonical loss (clip to [1e-7, 1 - 1e-7]); metrics as in the
    # tutorials (and the harness's compile)
    model.compile(optimizer=optimizer(keras, config["optimizer"], NullReport()), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    classes = model.output_shape[-1]

    seconds = []
    for epoch in range(int(config["epochs"])):
        idx = data.order[epoch]
        x = np.ascontiguousarray(data.x_train[idx])  # NCHW, the builder's channels_first
        y = to_categorical(data.y_train[idx], classes).astype(np.float32)
        started = clock.mark()
        history = model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0)
        seconds.append(clock.span(started))
    return EpochTimes(seconds, history.history["loss"][-1], "last epoch (mean)")
