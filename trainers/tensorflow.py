"""Raw TensorFlow 2: a tf.function train step with tf.GradientTape on the builder's tf.Module, RMSprop applied with
TensorFlow's own fused kernel (tf.raw_ops.ResourceApplyRMSProp; native mode: tf.optimizers.RMSprop), NHWC. With
config["dropout_masks"] == "harness" the step takes the step's dropout masks as an argument and the model
multiplies by them instead of calling tf.nn.dropout."""
from __future__ import annotations

import functools
import time

import numpy as np

import builders.tensorflow as builder
from builders import layouts
from spec.training import ends_in_logits
from trainers import masks, tf_shared
from workers import clock

NAME = "tensorflow"


class _RMSprop:
    """The ResourceApplyRMSProp kernel (what tf.compat.v1.train.RMSPropOptimizer runs for resource variables):
        ms = rho*ms + (1-rho)*g^2;  mom = momentum*mom + lr*g/sqrt(ms+eps);  w -= mom
    with momentum 0 and the mean-square slots starting at `ms_init` (0: canonical; 1: TF1's own)."""

    def __init__(self, tf, variables, lr, rho, eps, ms_init):
        self.tf, self.variables = tf, list(variables)
        self.ms = [tf.Variable(tf.fill(v.shape, tf.constant(ms_init, v.dtype)), trainable=False)
                   for v in self.variables]
        self.mom = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.lr, self.rho, self.eps = (tf.constant(x, tf.float32) for x in (lr, rho, eps))
        self.momentum = tf.constant(0.0, tf.float32)

    def apply(self, grads):
        for var, ms, mom, grad in zip(self.variables, self.ms, self.mom, grads):
            self.tf.raw_ops.ResourceApplyRMSProp(var=var.handle, ms=ms.handle, mom=mom.handle, lr=self.lr,
                                                 rho=self.rho, momentum=self.momentum, epsilon=self.eps, grad=grad)


class _KerasRMSprop:
    """tf.optimizers.RMSprop behind _RMSprop's apply(grads)."""

    def __init__(self, optimizer, variables):
        self.optimizer, self.variables = optimizer, list(variables)
        optimizer.build(self.variables)  # its slots now, not while a tf.function is traced

    def apply(self, grads):
        self.optimizer.apply_gradients(zip(grads, self.variables))


def optimizer(tf, variables, opt: dict, report):
    if opt["mode"] == "canonical":
        report.optimizer("tf.raw_ops.ResourceApplyRMSProp", opt["lr"], opt["rho"], opt["eps"], 0.0, "inside sqrt",
                         "TensorFlow's own RMSProp kernel with momentum 0 and the mean-square slots initialised to 0")
        return _RMSprop(tf, variables, opt["lr"], opt["rho"], opt["eps"], 0.0)
    if opt["mode"] != "native":
        raise ValueError(f"unknown optimizer mode {opt['mode']!r}")
    # native: the RMSprop the library's own API offers in the version we run, with its defaults. TensorFlow 2's is
    # tf.optimizers.RMSprop (Keras 3's); TF1's tf.train.RMSPropOptimizer survives only under tf.compat.v1.
    optimizer = tf.optimizers.RMSprop()
    if optimizer.centered or optimizer.momentum or optimizer.get_config()["weight_decay"]:
        raise ValueError("expected a plain RMSprop: uncentered, no momentum, no weight decay")
    lr = float(str(np.float32(optimizer.learning_rate)))  # a float32 variable: 0.001, not 0.0010000000474974513
    report.optimizer(f"{type(optimizer).__module__}.{type(optimizer).__name__} (tf.optimizers.RMSprop)", lr,
                     float(optimizer.rho), float(optimizer.epsilon), 0.0, "inside sqrt", "")
    return _KerasRMSprop(optimizer, variables)


def _canonical_tensors(spec, keys: list, values) -> dict:
    """Values of the parameters `keys` ((node name, param), in that order) in the builder's layout ->
    {"<node>.<param>": float32 in the canonical layout}."""
    return {f"{name}.{param}": np.asarray(builder.to_canonical(spec, spec.node(name), param, np.asarray(value)),
                                          dtype=np.float32)
            for (name, param), value in zip(keys, values)}


def build_options(config: dict) -> dict:
    """The fast path's options; harness dropout masks need none: they are an argument of the model's call."""
    return dict(config.get("options", {}))


def setup(spec, config) -> tuple:
    """(tf, the model, a tf.function decorator with the fast path's options): threads, seed and model, shared
    with the plain loop (benchmarks/plain), so that the overhead ratio compares like with like."""
    tf = builder.library()
    tf.config.threading.set_intra_op_parallelism_threads(config["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(config["seed"])  # dropout masks (the library's own)
    options = build_options(config)
    return tf, builder.build(spec, **options), functools.partial(builder.function, **options)


def train(spec, data, config, report) -> None:
    tf, model, function = setup(spec, config)
    parameters = builder.parameters(model, spec)  # (node name, param) -> tf.Variable
    keys, variables = list(parameters), list(parameters.values())
    state = builder.state(model, spec)  # moved by the training forward, read after each dumped step
    logits = ends_in_logits(spec)
    rmsprop = optimizer(tf, variables, config["optimizer"], report)

    x_val = layouts.nchw_to_nhwc(data.x_val)
    # harness dropout masks: the step functions take the step's masks as a third argument, a dict of tensors;
    # without, dropout draws its own masks (tf.nn.dropout)
    harness_masks = masks.uses_harness_masks(config)

    def step_masks(global_step, n) -> tuple:
        return (tf_shared.step_masks(tf, spec, config["seed"], global_step, n),) if harness_masks else ()

    def forward(x, dropout_masks):
        """The training forward pass's probabilities, with the harness's masks when the step was given them."""
        return model(x, training=True, masks=dropout_masks[0] if dropout_masks else None)[-1]

    @function  # tf.function, no input_signature: see tf_shared
    def train_step(x, y, *dropout_masks):
        with tf.GradientTape() as tape:
            loss, correct = tf_shared.loss_and_correct(tf, forward(x, dropout_masks), y, logits)
        rmsprop.apply(tape.gradient(loss, variables))
        return loss, correct

    @function
    def train_step_with_grads(x, y, *dropout_masks):
        """train_step that also returns the tape's gradients it applied (dump_steps runs only)."""
        with tf.GradientTape() as tape:
            loss, correct = tf_shared.loss_and_correct(tf, forward(x, dropout_masks), y, logits)
        grads = tape.gradient(loss, variables)
        rmsprop.apply(grads)
        return loss, correct, grads

    dump_steps, global_step = config.get("dump_steps", 0), 0

    @function
    def eval_step(x, y):
        return tf_shared.loss_and_correct(tf, model(x)[-1], y, logits)

    batch_size = config["batch_size"]
    for epoch in range(config["epochs"]):
        loss_sum, correct, seen = 0.0, 0, 0
        started = clock.mark()
        for step, idx in enumerate(data.batches(epoch, batch_size)):
            x, y = tf.constant(data.images(epoch, idx, layouts.nchw_to_nhwc)), tf.constant(data.y_train[idx])
            dropout_masks = step_masks(global_step, len(idx))
            if global_step < dump_steps:
                loss, n_correct, grads = train_step_with_grads(x, y, *dropout_masks)
                report.step_tensors(global_step, _canonical_tensors(spec, keys, [g.numpy() for g in grads]),
                                    _canonical_tensors(spec, keys + list(state),
                                                       [v.numpy() for v in variables + list(state.values())]))
            else:
                loss, n_correct = train_step(x, y, *dropout_masks)
            global_step += 1
            batch_loss, n = float(loss), len(idx)
            report.step(epoch, step, batch_loss, n)
            loss_sum += batch_loss * n
            correct += int(n_correct)
            seen += n
        cost = clock.span(started)  # wall, CPU, steal and pressure seconds of the training steps
        train_s = cost["wall_s"]

        started = time.perf_counter()
        val_loss, val_acc = tf_shared.evaluate(tf, eval_step, x_val, data.y_val, batch_size)
        report.epoch(epoch, train_s, loss_sum / seen, correct / seen, time.perf_counter() - started,
                     val_loss, val_acc, cost=cost)
    report.trained(_canonical_tensors(spec, keys + list(state), [v.numpy() for v in variables + list(state.values())]))
