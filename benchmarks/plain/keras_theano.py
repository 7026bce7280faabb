"""Keras 2.3.1 on Theano, the tutorial idiom: compile, then model.fit(x, y, batch_size, epochs=1, shuffle=False,
verbose=0) once per epoch on that epoch's NCHW (channels_first) arrays in the harness's order; no callbacks."""
from __future__ import annotations

import time

import numpy as np

from benchmarks.plain import EpochTimes, NullReport
from builders import keras_theano as builder
from trainers import keras_theano as trainer


def train(spec, data, config) -> EpochTimes:
    keras = trainer.setup(config)  # the harness trainer's threads and seed
    from keras.utils import to_categorical

    canonical = config["optimizer"]["mode"] == "canonical"
    bs = int(config["batch_size"])
    # the harness's canonical build: max-pool gradient to the first maximum only
    model = builder.build(spec, pool_gradient="single" if canonical else "theano")
    # Keras 2's categorical_crossentropy is the canonical loss (clip to [1e-7, 1 - 1e-7]); metrics as in the
    # tutorials (and the harness's compile)
    model.compile(optimizer=trainer.optimizer(keras, config["optimizer"], NullReport()),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    classes = model.output_shape[-1]

    seconds = []
    for epoch in range(int(config["epochs"])):
        idx = data.order[epoch]
        x = np.ascontiguousarray(data.x_train[idx])  # NCHW, the builder's channels_first
        y = to_categorical(data.y_train[idx], classes).astype(np.float32)
        started = time.perf_counter()
        history = model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0)
        seconds.append(time.perf_counter() - started)
    return EpochTimes(seconds, history.history["loss"][-1], "last epoch (mean)")
