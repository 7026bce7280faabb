"""tflearn 0.5.0, the tutorial idiom: tflearn.regression on the builder's network, tflearn.DNN, then
DNN.fit(x, y, n_epoch=1, shuffle=False, show_metric=False) once per epoch on that epoch's arrays in the harness's
order, NHWC; no callbacks.

The traps of trainers/tflearn.py are kept, since they change the arithmetic or make a step racy: resource
variables turned back on after tflearn's import, the canonical RMSProp (mean square from 0) via that trainer's
optimizer, its canonical loss, and gradient clipping off in canonical mode. The network is built as that trainer
builds it: the builder's graph and weights, the builder's own session closed, then regression and a new DNN in that
graph with the weights set (trainable ones and BatchNorm's running statistics: trainers.tflearn.carried_weights).

final_loss: tflearn computes every step's raw loss for its TensorBoard summary anyway ("Loss/<scope>raw", written
to tensorboard_dir at each step); after training the last one is read back from that event file, so the loop
itself gains nothing."""
from __future__ import annotations

import glob
import os
import tempfile

import numpy as np

from benchmarks.plain import EpochTimes, NullReport
from builders import layouts
from trainers import masks
from trainers.tflearn import NATIVE_CLIP_NORM, carried_weights, loss_and_correct, optimizer, setup
from workers import clock


def _last_raw_loss(tf, logdir: str) -> float:
    """The raw-loss summary of the highest step in tflearn's event files under logdir."""
    step, value = -1, float("nan")
    for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag.endswith("Loss/raw") and event.step >= step:  # "<optimizer scope>/Loss/raw"
                    step, value = event.step, v.simple_value
    return value


def train(spec, data, config) -> EpochTimes:
    # the harness trainer's threads and build, with tflearn's own dropout masks
    tf, tflearn, built = setup(spec, {**config, "dropout_masks": masks.LIBRARY})
    batch_size = config["batch_size"]
    graph, net = built.session.graph, built.net
    kept, values = carried_weights(tf, built)  # BatchNorm's running statistics too, not only trainable variables

    logs = tempfile.TemporaryDirectory(prefix="tflearn_plain_logs_")
    with graph.as_default():
        def canonical_loss(y_pred, y_true):
            return loss_and_correct(tf, y_pred, y_true)[0]

        rmsprop = optimizer(tf, tflearn, config["optimizer"], NullReport())
        net = tflearn.regression(net, optimizer=rmsprop, loss=canonical_loss, metric=None,
                                 batch_size=batch_size, shuffle_batches=False)
        clip = 0.0 if config["optimizer"]["mode"] == "canonical" else NATIVE_CLIP_NORM
        model = tflearn.DNN(net, clip_gradients=clip, tensorboard_verbose=0, tensorboard_dir=logs.name + os.sep)
        for var, value in zip(kept, values):
            model.set_weights(var, value)

    x_train = layouts.nchw_to_nhwc(data.x_train)
    eye = np.eye(net.get_shape().as_list()[-1], dtype=np.float32)
    seconds = []
    with logs:
        for epoch in range(config["epochs"]):
            order = data.order[epoch]
            x, y = x_train[order], eye[data.y_train[order]]
            started = clock.mark()
            model.fit(x, y, n_epoch=1, batch_size=batch_size, shuffle=False, show_metric=False,
                      snapshot_epoch=False, snapshot_step=None)
            seconds.append(clock.span(started))
        final_loss = _last_raw_loss(tf, logs.name)
    return EpochTimes(seconds, final_loss, "last batch")
