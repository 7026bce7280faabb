"""Raw TensorFlow 2, the tutorial idiom: a @tf.function step with tf.GradientTape over the batches, on the
builder's tf.Module, RMSprop by the harness trainer's fused kernel (ResourceApplyRMSProp), NHWC."""
from __future__ import annotations

from benchmarks.plain import EpochTimes, NullReport
from builders import layouts
from builders.tensorflow import parameters
from trainers import tf_shared
from trainers.tensorflow import optimizer, setup
from workers import clock


def train(spec, data, config) -> EpochTimes:
    tf, model, function = setup(spec, config)  # the harness trainer's threads, seed, model, tf.function
    variables = list(parameters(model, spec).values())
    rmsprop = optimizer(tf, variables, config["optimizer"], NullReport())
    x_train = layouts.nchw_to_nhwc(data.x_train)

    @function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss, _ = tf_shared.loss_and_correct(tf, model(x, training=True)[-1], y)
        rmsprop.apply(tape.gradient(loss, variables))
        return loss

    batch_size = config["batch_size"]
    seconds = []
    for epoch in range(config["epochs"]):
        started = clock.mark()
        for idx in data.batches(epoch, batch_size):
            loss = train_step(tf.constant(x_train[idx]), tf.constant(data.y_train[idx]))
        seconds.append(clock.span(started))
    return EpochTimes(seconds, float(loss), "last batch")
