"""PyTorch, the tutorial loop: for x, y in batches: zero_grad, loss = crit(model(x), y), backward, step."""
from __future__ import annotations

import time

import numpy as np

import builders.pytorch as builder
from benchmarks.plain import EpochTimes, NullReport
from trainers.pytorch import _loss, _optimizer


def train(spec, data, config) -> EpochTimes:
    import torch
    # the harness trainer's thread knobs and seed (dropout masks)
    torch.set_num_threads(config["threads"])
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first inter-op parallel work of the process
        pass
    torch.manual_seed(config["seed"])

    model = builder.build(spec)
    optimizer = _optimizer(model.parameters(), config["optimizer"], NullReport())
    criterion = _loss  # canonical clipped cross-entropy on the softmax output
    x_train, y_train = torch.from_numpy(np.ascontiguousarray(data.x_train)), torch.from_numpy(data.y_train)
    batch_size = config["batch_size"]

    seconds = []
    for epoch in range(config["epochs"]):
        model.train()
        started = time.perf_counter()
        for idx in data.batches(epoch, batch_size):
            idx = torch.from_numpy(idx)
            x, y = x_train[idx], y_train[idx]
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return EpochTimes(seconds, loss.item(), "last batch")
