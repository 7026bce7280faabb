"""tensorlayer 2 (eager TensorFlow 2): the tensorlayer 2 idiom of a tf.function train step with tf.GradientTape
over model.trainable_weights, model.train() for training and model.eval() for evaluation, on the builder's
static tl.models.Model, NHWC. tensorlayer has no RMSprop of its own: its users take tf.optimizers.RMSprop.

With config["dump_steps"] > 0 the train step also returns the tape's gradients (the very tensors passed to
apply_gradients), and the first dump_steps steps report them and the weights after the update, canonical layout.

With config["dropout_masks"] == "harness" the model is the builder's identical-dropout variant (build_options): a small
tensorlayer layer in place of each Dropout multiplies, in training mode, by a mask variable that the train step assigns
from the step's masks (an argument of the step); in evaluation mode it is the identity."""
from __future__ import annotations

import functools
import time

import numpy as np

import builders.tensorlayer as builder
from builders import layouts
from spec import ops
from spec.training import ends_in_logits
from trainers import masks, tf_shared
from workers import clock

NAME = "tensorlayer"


def optimizer(tf, opt: dict, report):
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


def _canonical_params(spec, model, trainable: bool):
    """[(weight, "<node>.<param>", to canonical layout)] for every parameter of the builder's model, or only for
    its trainable ones (not BatchNorm's running statistics, which have no gradient)."""
    found = []
    for node in spec.parametric():
        for param in ops.get(node.kind).params:
            if trainable and not param.trainable:
                continue
            convert = functools.partial(builder.to_canonical, spec, node, param.name)
            found.append((model.spec_params[f"{node.name}.{param.name}"], f"{node.name}.{param.name}", convert))
    return found


def build_options(config: dict) -> dict:
    """The builder options of the model this config trains: the identical-dropout variant."""
    harness = {"dropout_masks": masks.HARNESS} if masks.uses_harness_masks(config) else {}
    return {**config.get("options", {}), **harness}


def setup(spec, config) -> tuple:
    """(tf, tl, the builder's model of build_options(config)) with the run's threads and seed; shared with the plain
    loop (benchmarks/plain)."""
    import tensorflow as tf
    # before tensorlayer is imported: its import runs TensorFlow ops, after which the thread pools are fixed
    tf.config.threading.set_intra_op_parallelism_threads(config["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf, tl = builder.library()
    tf.random.set_seed(config["seed"])  # dropout masks (the library's own)
    return tf, tl, builder.build(spec, **build_options(config))


def train(spec, data, config, report) -> None:
    tf, _, model = setup(spec, config)
    harness_masks, holders = masks.uses_harness_masks(config), model.harness_masks
    rmsprop = optimizer(tf, config["optimizer"], report)
    weights = model.trainable_weights
    logits = ends_in_logits(spec)
    dump_steps = config.get("dump_steps", 0)
    if dump_steps > 0:
        params, trained = _canonical_params(spec, model, False), _canonical_params(spec, model, True)
        position = [next(j for j, w in enumerate(weights) if w is var) for var, _, _ in trained]
        if sorted(position) != list(range(len(weights))):
            raise RuntimeError("the model's trainable weights are not the spec's parameters")

    x_val = layouts.nchw_to_nhwc(data.x_val)
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
            loss, correct = tf_shared.loss_and_correct(tf, model(x)[-1], y, logits)  # the builder's model outputs every layer
        grads = tape.gradient(loss, weights)
        rmsprop.apply_gradients(zip(grads, weights))
        if dump_steps > 0:
            return loss, correct, grads  # the gradients just applied (dump runs only)
        return loss, correct

    @tf.function
    def eval_step(x, y):
        return tf_shared.loss_and_correct(tf, model(x)[-1], y, logits)

    batch_size = config["batch_size"]
    global_step = 0
    for epoch in range(config["epochs"]):
        loss_sum, correct, seen = 0.0, 0, 0
        model.train()
        started = clock.mark()
        for step, idx in enumerate(data.batches(epoch, batch_size)):
            dropout_masks = step_masks(global_step, len(idx))
            x = tf.constant(data.images(epoch, idx, layouts.nchw_to_nhwc))
            loss, n_correct, *applied = train_step(x, tf.constant(data.y_train[idx]), *dropout_masks)
            if global_step < dump_steps:
                grads = applied[0]
                report.step_tensors(global_step,
                                    {key: convert(grads[j].numpy()) for j, (_, key, convert) in zip(position, trained)},
                                    {key: convert(var.numpy()) for var, key, convert in params})
            global_step += 1
            batch_loss, n = float(loss), len(idx)
            report.step(epoch, step, batch_loss, n)
            loss_sum += batch_loss * n
            correct += int(n_correct)
            seen += n
        cost = clock.span(started)  # wall, CPU, steal and pressure seconds of the training steps
        train_s = cost["wall_s"]

        model.eval()
        started = time.perf_counter()
        val_loss, val_acc = tf_shared.evaluate(tf, eval_step, x_val, data.y_val, batch_size)
        report.epoch(epoch, train_s, loss_sum / seen, correct / seen, time.perf_counter() - started,
                     val_loss, val_acc, cost=cost)
    report.trained({key: convert(weight.numpy()) for weight, key, convert in _canonical_params(spec, model, False)})
