"""PyTorch, the tutorial loop: for x, y in batches: zero_grad, loss = crit(model(x), y), backward, step."""
from __future__ import annotations

import numpy as np

import builders.pytorch as builder
from benchmarks.plain import EpochTimes, NullReport
from trainers import masks
from trainers.pytorch import build_options, loss, optimizer, setup
from workers import clock


def train(spec, data, config) -> EpochTimes:
    import torch

    config = {**config, "dropout_masks": masks.LIBRARY}  # a tutorial loop lets nn.Dropout draw its own masks
    options = build_options(config)
    model = setup(spec, config)  # the harness trainer's threads, seed and model
    rmsprop = optimizer(model.parameters(), config["optimizer"], NullReport())
    forward = builder.runnable(model, **options)
    criterion = loss  # canonical clipped cross-entropy on the softmax output
    x_train, y_train = torch.from_numpy(np.ascontiguousarray(data.x_train)), torch.from_numpy(data.y_train)
    batch_size = config["batch_size"]

    seconds = []
    for epoch in range(config["epochs"]):
        model.train()
        started = clock.mark()
        for idx in data.batches(epoch, batch_size):
            idx = torch.from_numpy(idx)
            x, y = builder.inputs(x_train[idx], **options), y_train[idx]
            rmsprop.zero_grad()
            batch = criterion(forward(x), y)
            batch.backward()
            rmsprop.step()
        seconds.append(clock.span(started))
    return EpochTimes(seconds, batch.item(), "last batch")
