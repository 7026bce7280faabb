"""tflearn 0.5.0 (TF1 graph mode, in a process of its own): tflearn.regression on the builder's network, then
tflearn.DNN(...).fit(n_epoch=1, shuffle=False) once per epoch, NHWC.

tflearn facts this module works around (tflearn 0.5.0 sources, checked numerically):
- its categorical_crossentropy renormalises and clips at 1e-10: the loss is a custom function, the canonical one;
- DNN clips gradients to a global norm of 5.0 by default: canonical mode turns that off, native keeps it;
- importing tflearn turns resource variables off, and reference variables make a training step racy: they are
  turned back on before the builder runs;
- its RMSProp is tf.compat.v1.train.RMSPropOptimizer, whose mean square starts at 1: canonical mode uses a
  subclass whose slot starts at 0, wrapped as a tflearn Optimizer;
- the loss its callbacks see (training_state.loss_value) is an exponential moving average read from the summary
  string, not the batch loss, and its training accuracy likewise: the batch loss and correct count of each step's
  own forward pass are kept in a variable by the loss function, and a tflearn Callback reads them after the step;
- DNN.evaluate averages per-batch means without weighting the smaller last batch: validation runs the loss
  tensor batch by batch in inference mode (tflearn.is_training(False)).
- config["dump_steps"] > 0 (steps compared with a float64 reference): the TF1 optimizer's apply_gradients is
  wrapped before tflearn.DNN builds its train op, so that the op also copies each gradient it applies (tflearn's
  own tf.gradients of its loss, after its clipping if any) into a non-trainable variable, under a control
  dependency of the update; the callback reads those copies and the weights after the step.
- config["dropout_masks"] == "harness": the model is the builder's identical-dropout variant (build_options), whose
  dropout layers multiply by a variable holding the step's mask padded to the full batch (the first n rows used),
  under tflearn's training-mode switch; a tflearn Callback's on_batch_begin assigns each step's masks in the
  session before tflearn runs the step.
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time

import numpy as np

import builders.tflearn as builder
from builders import layouts
from spec import ops
from spec.training import LOSS_CLIP, ends_in_logits
from trainers import masks
from workers import clock

NAME = "tflearn"


def _canonical_rmsprop(tf, tflearn):
    """tflearn's RMSProp optimizer building a TF1 RMSPropOptimizer whose mean-square slot ('rms') starts at 0
    (TF1 starts it at 1). The update is TF1's own kernel: ms = rho*ms + (1-rho)*g^2; w -= lr*g/sqrt(ms+eps)."""

    class ZeroInitRMSPropOptimizer(tf.train.RMSPropOptimizer):
        def _create_slots(self, var_list):
            for v in var_list:
                self._zeros_slot(v, "rms", self._name)
                if self._centered:
                    self._zeros_slot(v, "mg", self._name)
                self._zeros_slot(v, "momentum", self._name)

    class CanonicalRMSProp(tflearn.optimizers.RMSProp):
        def build(self, step_tensor=None):
            self.built = True
            self.tensor = ZeroInitRMSPropOptimizer(
                learning_rate=self.learning_rate, decay=self.decay, momentum=self.momentum, epsilon=self.epsilon,
                use_locking=self.use_locking, name=self.name)

    return CanonicalRMSProp


NATIVE_CLIP_NORM = 5.0  # tflearn.DNN's default clip_gradients


def optimizer(tf, tflearn, opt: dict, report):
    if opt["mode"] == "canonical":
        optimizer = _canonical_rmsprop(tf, tflearn)(learning_rate=opt["lr"], decay=opt["rho"], epsilon=opt["eps"])
        ms_init = 0.0
        how = ("tflearn RMSProp building a tf.compat.v1.train.RMSPropOptimizer subclass whose _create_slots "
               "starts the mean square at 0 (TF1: 1)")
    elif opt["mode"] == "native":
        optimizer = tflearn.optimizers.RMSProp()  # tflearn's defaults: lr 1e-3, decay 0.9, momentum 0, eps 1e-10
        ms_init, how = 1.0, ""
    else:
        raise ValueError(f"unknown optimizer mode {opt['mode']!r}")
    if optimizer.momentum:
        raise ValueError("expected RMSProp without momentum")
    report.optimizer(f"{type(optimizer).__name__}(tflearn.optimizers.RMSProp) -> "
                     f"tf.compat.v1.train.RMSPropOptimizer" + (" subclass" if ms_init == 0.0 else ""),
                     float(optimizer.learning_rate), float(optimizer.decay), float(optimizer.epsilon), ms_init,
                     "inside sqrt", how, grad_clip_norm=0.0 if ms_init == 0.0 else NATIVE_CLIP_NORM)
    return optimizer


def _capture_applied_gradients(tf, tf_optimizer):
    """Make tf_optimizer's apply_gradients also store every gradient it applies in a variable; returns a dict
    filled, once tflearn.DNN has built its train op, with {variable name: variable holding its last gradient}."""
    captured = {}
    apply_gradients = tf_optimizer.apply_gradients

    def capturing_apply_gradients(grads_and_vars, *args, **kwargs):
        grads_and_vars = list(grads_and_vars)
        stores = []
        for grad, var in grads_and_vars:
            name = var.name.split(":")[0]
            copy = tf.Variable(tf.zeros(var.shape, var.dtype.base_dtype), trainable=False,
                               name=f"applied_gradient/{name}")
            captured[var.name] = copy
            stores.append(copy.assign(grad))
        with tf.control_dependencies(stores):
            return apply_gradients(grads_and_vars, *args, **kwargs)

    tf_optimizer.apply_gradients = capturing_apply_gradients
    return captured


def _canonical_params(spec, model, trainable: bool = True):
    """[(variable, "<node>.<param>", to canonical layout)] for every trainable parameter of the builder's network
    (the ones with gradients), or with trainable False for the others (BatchNorm's running statistics)."""
    found = []
    for node in spec.parametric():
        for param in (p.name for p in ops.get(node.kind).params if p.trainable == trainable):
            convert = functools.partial(builder.to_canonical, spec, node, param)
            found.append((model.spec_params[f"{node.name}.{param}"], f"{node.name}.{param}", convert))
    return found


def loss_and_correct(tf, p, y_onehot, logits: bool = False):
    """Canonical mean categorical cross-entropy on probabilities, and the number of correct predictions.
    `logits`: the model ends in logits (spec.training.ends_in_logits); the softmax over the classes is taken here."""
    p = tf.nn.softmax(p, axis=1) if logits else p
    p_y = tf.reduce_sum(p * y_onehot, axis=1)  # exactly p[label]: one-hot rows hold a single 1
    loss = -tf.reduce_mean(tf.math.log(tf.clip_by_value(p_y, LOSS_CLIP, 1 - LOSS_CLIP)))
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(p, axis=1), tf.argmax(y_onehot, axis=1)), tf.float32))
    return loss, correct


def carried_weights(tf, built) -> tuple:
    """(variables, their values) of the builder's model to set in a new tflearn.DNN on its graph, whose session
    initialises every variable afresh: the trainable ones and the spec's parameters that are not trainable
    (BatchNorm's running statistics). Closes the builder's session."""
    with built.session.graph.as_default():
        weights = tf.trainable_variables()
        kept = weights + [v for v in built.spec_params.values() if v.name not in {w.name for w in weights}]
        values = built.session.run(kept)
    built.session.close()
    return kept, values


def build_options(config: dict) -> dict:
    """The builder options of the model this config trains: the graph seed, and the identical-dropout variant."""
    options = {**config.get("options", {}), "seed": config["seed"]}
    if masks.uses_harness_masks(config):
        options.update(dropout_masks=masks.HARNESS, batch_size=config["batch_size"])
    return options


def setup(spec, config) -> tuple:
    """(tf, tflearn, the builder's model of build_options(config)) with the run's threads; shared with the plain
    loop (benchmarks/plain)."""
    import tensorflow as tf2
    # before tflearn's import and the builder's session: the first session fixes the process's thread pools,
    # and a tf.compat.v1.Session created without a config (tflearn.DNN's) takes this global one
    tf2.config.threading.set_intra_op_parallelism_threads(config["threads"])
    tf2.config.threading.set_inter_op_parallelism_threads(1)
    tf, tflearn = builder.library()
    return tf, tflearn, builder.build(spec, **build_options(config))


def train(spec, data, config, report) -> None:
    tf, tflearn, built = setup(spec, config)
    batch_size = config["batch_size"]
    harness_masks = masks.uses_harness_masks(config)
    holders = built.harness_masks
    # the builder's graph and weights; regression and a DNN with its train op are added below
    graph, net = built.session.graph, built.net
    with graph.as_default():
        weights = tf.trainable_variables()
    kept, values = carried_weights(tf, built)
    dump_steps = config.get("dump_steps", 0)
    params = _canonical_params(spec, built) if dump_steps > 0 else []
    state = _canonical_params(spec, built, trainable=False) if dump_steps > 0 else []
    logits = ends_in_logits(spec)
    if dump_steps > 0 and sorted(var.name for var, _, _ in params) != sorted(var.name for var in weights):
        raise RuntimeError("the graph's trainable variables are not the spec's parameters")

    with graph.as_default():
        stats = tf.Variable([0.0, 0.0], trainable=False, name="batch_loss_and_correct")

        def canonical_loss(y_pred, y_true):
            loss, correct = loss_and_correct(tf, y_pred, y_true, logits)
            with tf.control_dependencies([tf.assign(stats, tf.stack([loss, correct]))]):
                return tf.identity(loss)

        rmsprop = optimizer(tf, tflearn, config["optimizer"], report)
        targets = tf.placeholder(tf.float32, net.get_shape().as_list(), name="targets")  # one-hot labels
        net = tflearn.regression(net, placeholder=targets, optimizer=rmsprop, loss=canonical_loss, metric=None,
                                 batch_size=batch_size, shuffle_batches=False)
        # regression() built the TF1 optimizer; tflearn.DNN calls its apply_gradients
        applied = _capture_applied_gradients(tf, rmsprop.get_tensor()) if dump_steps > 0 else {}
        eval_loss, eval_correct = loss_and_correct(tf, net, targets, logits)
        logs = tempfile.TemporaryDirectory(prefix="tflearn_logs_")
        clip = 0.0 if config["optimizer"]["mode"] == "canonical" else NATIVE_CLIP_NORM
        model = tflearn.DNN(net, clip_gradients=clip, tensorboard_verbose=0, tensorboard_dir=logs.name + os.sep)
        for var, value in zip(kept, values):
            model.set_weights(var, value)
    session, x_in, y_in = model.session, model.inputs[0], targets
    if dump_steps > 0:
        if sorted(applied) != sorted(var.name for var in weights):
            raise RuntimeError(f"tflearn applied gradients to {sorted(applied)}, not to every trainable variable")
        dump_fetches = ([applied[var.name] for var, _, _ in params], [var for var, _, _ in params + state])

    class StepReporter(tflearn.callbacks.Callback):
        """Each optimizer step's loss and correct count, from that step's own forward pass."""

        def __init__(self):
            self.global_step = 0  # optimizer steps across epochs, for dump_steps

        def on_epoch_begin(self, training_state):
            self.step, self.loss_sum, self.correct, self.seen = 0, 0.0, 0.0, 0

        def on_batch_end(self, training_state, snapshot=False):
            loss, correct = session.run(stats)
            n = sizes[self.step]
            if self.global_step < dump_steps:
                grads, after = session.run(dump_fetches)
                report.step_tensors(self.global_step,
                                    {key: convert(g) for g, (_, key, convert) in zip(grads, params)},
                                    {key: convert(w) for w, (_, key, convert) in zip(after, params + state)})
            self.global_step += 1
            report.step(epoch, self.step, loss, n)
            self.loss_sum += float(loss) * n
            self.correct += float(correct)
            self.seen += n
            self.step += 1

    class MaskLoader(tflearn.callbacks.Callback):
        """Before each optimizer step, loads the harness's masks of that step into the dropout layers' variables."""

        def __init__(self):
            self.global_step = 0
            self.sources = layouts.flatten_sources(spec)

        def on_epoch_begin(self, training_state):
            self.step = 0

        def on_batch_begin(self, training_state):
            step_masks = masks.step_masks(spec, config["seed"], self.global_step, sizes[self.step])
            feed = {holders[layer.name][0]: masks.padded(layouts.from_canonical(step_masks[layer.name],
                                                                                 self.sources[i]), batch_size)
                    for i, layer in masks.dropout_layers(spec)}
            session.run([assign for _, assign in holders.values()], feed_dict=feed)
            self.global_step += 1
            self.step += 1

    x_val = layouts.nchw_to_nhwc(data.x_val)
    eye = np.eye(net.get_shape().as_list()[-1], dtype=np.float32)
    callback = StepReporter()
    callbacks = [MaskLoader(), callback] if harness_masks else callback
    with logs, open(os.devnull, "w") as quiet:
        for epoch in range(config["epochs"]):
            order = data.order[epoch]
            sizes = [len(idx) for idx in data.batches(epoch, batch_size)]
            x, y = data.images(epoch, order, layouts.nchw_to_nhwc), eye[data.y_train[order]]
            with contextlib.redirect_stdout(quiet):  # tflearn prints its run id and progress to stdout
                started = clock.mark()
                model.fit(x, y, n_epoch=1, batch_size=batch_size, shuffle=False, show_metric=False,
                          snapshot_epoch=False, snapshot_step=None, callbacks=callbacks)
                cost = clock.span(started)  # wall, CPU, steal and pressure seconds of the training steps
                train_s = cost["wall_s"]
            if callback.step != len(sizes):
                raise RuntimeError(f"tflearn ran {callback.step} steps, the epoch has {len(sizes)} batches")

            started = time.perf_counter()
            with graph.as_default():
                tflearn.is_training(False, session=session)
            val_loss, val_correct = 0.0, 0.0
            for i in range(0, len(x_val), batch_size):
                labels = data.y_val[i:i + batch_size]
                loss, correct = session.run([eval_loss, eval_correct],
                                            feed_dict={x_in: x_val[i:i + batch_size], y_in: eye[labels]})
                val_loss += float(loss) * len(labels)
                val_correct += float(correct)
            eval_s = time.perf_counter() - started
            report.epoch(epoch, train_s, callback.loss_sum / callback.seen, callback.correct / callback.seen,
                         eval_s, val_loss / len(x_val), val_correct / len(x_val), cost=cost)
    everything = _canonical_params(spec, built) + _canonical_params(spec, built, trainable=False)
    values = session.run([variable for variable, _, _ in everything])
    report.trained({key: convert(value) for value, (_, key, convert) in zip(values, everything)})
