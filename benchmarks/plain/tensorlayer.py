"""tensorlayer 2, the tutorial idiom: model.train(), then a @tf.function step with tf.GradientTape over
model.trainable_weights and tf.optimizers.RMSprop (tensorlayer has none of its own), NHWC."""
from __future__ import annotations

from benchmarks.plain import EpochTimes, NullReport
from builders import layouts
from trainers import masks, tf_shared
from trainers.tensorlayer import optimizer, setup
from workers import clock


def train(spec, data, config) -> EpochTimes:
    # the harness trainer's threads, seed and build, with tensorlayer's own dropout
    tf, _, model = setup(spec, {**config, "dropout_masks": masks.LIBRARY})
    rmsprop = optimizer(tf, config["optimizer"], NullReport())
    weights = model.trainable_weights
    x_train = layouts.nchw_to_nhwc(data.x_train)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss, _ = tf_shared.loss_and_correct(tf, model(x)[-1], y)  # the builder's model outputs every layer
        grads = tape.gradient(loss, weights)
        rmsprop.apply_gradients(zip(grads, weights))
        return loss

    batch_size = config["batch_size"]
    seconds = []
    for epoch in range(config["epochs"]):
        model.train()
        started = clock.mark()
        for idx in data.batches(epoch, batch_size):
            loss = train_step(tf.constant(x_train[idx]), tf.constant(data.y_train[idx]))
        seconds.append(clock.span(started))
    return EpochTimes(seconds, float(loss), "last batch")
