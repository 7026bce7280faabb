"""tensorlayer 2 (eager TensorFlow 2): the tensorlayer 2 idiom of a tf.function train step with tf.GradientTape
over model.trainable_weights, model.train() for training and model.eval() for evaluation, on the builder's
static tl.models.Model, NHWC. tensorlayer has no RMSprop of its own: its users take tf.optimizers.RMSprop.

With config["dump_steps"] > 0 the train step also returns the tape's gradients (the very tensors passed to
apply_gradients), and the first dump_steps steps report them and the weights after the update, canonical layout.

With config["dropout_masks"] == "harness" the builder puts a small tensorlayer layer in place of each Dropout: in
training mode it multiplies by a mask variable that the train step assigns from the step's masks (an argument with an
in evaluation mode it is the identity."""
from __future__ import annotations

import time

import numpy as np

import builders.tensorlayer as builder
from builders import layouts
from trainers import masks, tf_shared

NAME = "tensorlayer"


def _optimizer(tf, opt: dict, report):
    if opt["mode"] == "canonical":
        # Keras 3's RMSprop is the canonical update itself: v = rho*v + (1-rho)*g^2 from 0; w -= lr*g/sqrt(v+eps)
        optimizer = tf.optimizers.RMSprop(learning_rate=opt["lr"], rho=opt["rho"], epsilon=opt["eps"])
        how = "tf.optimizers.RMSprop (Keras 3) already is the canonical update; the experiment's lr/rho/eps passed"
    elif opt["mode"] == "native":
        # native: the RMSprop the library's own API offers in the version we run, with its defaults; tensorlayer 2
        # has none and its users take TensorFlow 2's, as raw TensorFlow's native mode does: lr 1e-3, rho 0.9, eps 1e-7
        optimizer = tf.optimizers.RMSprop()
        how = ""
    else:
        raise ValueError(f"unknown optimizer mode {opt['mode']!r}")
    if optimizer.centered or optimizer.momentum or optimizer.get_config()["weight_decay"]:
        raise ValueError("expected a plain RMSprop: uncentered, no momentum, no weight decay")
    lr = float(str(np.float32(optimizer.learning_rate)))  # a float32 variable: 0.001, not 0.0010000000474974513
    report.optimizer(f"{type(optimizer).__module__}.{type(optimizer).__name__} (tf.optimizers.RMSprop)",
                     lr, float(optimizer.rho), float(optimizer.epsilon), 0.0, "inside sqrt", how)
    return optimizer


def _harness_dropout(tf, tl):
    """The builder's `dropout` for harness masks: at each dropout layer a tensorlayer layer that, in training mode,
    multiplies its input by the mask held in a variable (open batch size) and, in evaluation mode, is the identity,
    like tl.layers.Dropout. Returns (that callable, {spec layer name: its mask variable}); the train step assigns
    the step's masks to those variables before the forward pass."""

    class HarnessDropout(tl.layers.Layer):
        def __init__(self, mask, name=None):
            super().__init__(name)
            self.mask = mask
            self.build()
            self._built = True

        def build(self, inputs_shape=None):
            pass

        def forward(self, inputs):
            return inputs * self.mask if self.is_train else inputs

    holders = {}

    def dropout(index, layer, net):
        shape = layouts.native_shape(layer.output_shape)
        # ones of batch 1 while the static model is built (tl.layers.Input forwards ones of batch 1 through it)
        holders[layer.name] = tf.Variable(tf.ones((1, *shape)), shape=tf.TensorShape([None, *shape]),
                                          trainable=False, name=layouts.safe_name(layer.name) + "_mask")
        return HarnessDropout(holders[layer.name], name=layouts.safe_name(layer.name))(net)

    return dropout, holders


def _canonical_params(spec, model):
    """[(variable, "<layer>.weight"/"<layer>.bias", to_canonical)] for every trainable weight: the inverses of
    the builder's conv_kernel / dense_kernel (HWIO -> OIHW; dense rows from NHWC (H, W, C) order to (C, H, W))."""
    found = []
    for i, layer in enumerate(spec.layers):
        if layer.kind not in ("conv", "dense"):
            continue
        convert = (lambda index: lambda w: layouts.kernel_to_canonical(spec, index, w))(i)
        lyr = model.get_layer(name=layouts.safe_name(layer.name))
        found += [(lyr.W, f"{layer.name}.weight", convert), (lyr.b, f"{layer.name}.bias", np.asarray)]
    return found


def setup(config) -> tuple:
    """(tf, tl) with the run's threads and seed; shared with the plain loop (benchmarks/plain)."""
    import tensorflow as tf
    # before tensorlayer is imported: its import runs TensorFlow ops, after which the thread pools are fixed
    tf.config.threading.set_intra_op_parallelism_threads(config["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf, tl = builder._import()
    tf.random.set_seed(config["seed"])  # dropout masks (the library's own)
    return tf, tl


def train(spec, data, config, report) -> None:
    tf, tl = setup(config)

    harness_masks = masks.uses_harness_masks(config)
    dropout, holders = _harness_dropout(tf, tl) if harness_masks else (None, {})
    model = builder.build(spec, dropout=dropout)
    optimizer = _optimizer(tf, config["optimizer"], report)
    weights = model.trainable_weights
    dump_steps = config.get("dump_steps", 0)
    if dump_steps > 0:
        params = _canonical_params(spec, model)
        position = [next(j for j, w in enumerate(weights) if w is var) for var, _, _ in params]
        if sorted(position) != list(range(len(weights))):
            raise RuntimeError("the model's trainable weights are not the spec's conv/dense weights and biases")

    x_train, x_val = layouts.nchw_to_nhwc(data.x_train), layouts.nchw_to_nhwc(data.x_val)
    # harness dropout masks: train_step takes the step's masks as a third argument, a dict of tensors, and assigns
    # them to the mask layers' variables

    def step_masks(global_step, n) -> tuple:
        return (tf_shared.step_masks(tf, spec, config["seed"], global_step, n),) if harness_masks else ()

    # The model's mode is a Python attribute read while tracing: each function is traced (once per batch shape,
    # see tf_shared) only in the mode it is meant for, train_step after model.train(), eval_step after
    # model.eval().
    @tf.function
    def train_step(x, y, *dropout_masks):
        for name, mask in (dropout_masks[0].items() if dropout_masks else ()):
            holders[name].assign(mask)
        with tf.GradientTape() as tape:
            loss, correct = tf_shared.loss_and_correct(tf, model(x)[-1], y)  # the builder's model outputs every layer
        grads = tape.gradient(loss, weights)
        optimizer.apply_gradients(zip(grads, weights))
        if dump_steps > 0:
            return loss, correct, grads  # the gradients just applied (dump runs only)
        return loss, correct

    @tf.function
    def eval_step(x, y):
        return tf_shared.loss_and_correct(tf, model(x)[-1], y)

    batch_size = config["batch_size"]
    global_step = 0
    for epoch in range(config["epochs"]):
        loss_sum, correct, seen = 0.0, 0, 0
        model.train()
        started = time.perf_counter()
        for step, idx in enumerate(data.batches(epoch, batch_size)):
            dropout_masks = step_masks(global_step, len(idx))
            loss, n_correct, *applied = train_step(tf.constant(x_train[idx]), tf.constant(data.y_train[idx]),
                                                   *dropout_masks)
            if global_step < dump_steps:
                grads = applied[0]
                report.step_tensors(global_step,
                                    {key: convert(grads[j].numpy()) for j, (_, key, convert) in zip(position, params)},
                                    {key: convert(var.numpy()) for var, key, convert in params})
            global_step += 1
            batch_loss, n = float(loss), len(idx)
            report.step(epoch, step, batch_loss, n)
            loss_sum += batch_loss * n
            correct += int(n_correct)
            seen += n
        train_s = time.perf_counter() - started

        model.eval()
        started = time.perf_counter()
        val_loss, val_acc = tf_shared.evaluate(tf, eval_step, x_val, data.y_val, batch_size)
        report.epoch(epoch, train_s, loss_sum / seen, correct / seen, time.perf_counter() - started,
                     val_loss, val_acc)
