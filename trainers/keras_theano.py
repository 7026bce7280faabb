"""Keras 2.3.1 on Theano: model.compile + model.fit, one fit call per epoch on NCHW (channels_first) arrays in
the harness's order."""
from __future__ import annotations

import os
import time

import numpy as np

from builders import keras_theano as builder
from builders import layouts
from spec import ops
from spec.training import ends_in_logits
from trainers import masks
from workers import clock

NAME = "keras-theano"


def _canonical_rmsprop_class(keras):
    """Keras 2.3.1's RMSprop with epsilon inside the square root: w -= lr * g / sqrt(v + eps)."""
    from keras import backend as K
    from keras.legacy import interfaces

    class CanonicalRMSprop(keras.optimizers.RMSprop):
        @interfaces.legacy_get_updates_support
        @K.symbolic
        def get_updates(self, loss, params):
            # Keras 2.3.1's RMSprop.get_updates with one change: K.sqrt(new_a + eps), not K.sqrt(new_a) + eps.
            grads = self.get_gradients(loss, params)
            accumulators = [K.zeros(K.int_shape(p), dtype=K.dtype(p), name='accumulator_' + str(i))
                            for (i, p) in enumerate(params)]
            self.weights = [self.iterations] + accumulators
            self.updates = [K.update_add(self.iterations, 1)]

            lr = self.learning_rate
            if self.initial_decay > 0:
                lr = lr * (1. / (1. + self.decay * K.cast(self.iterations, K.dtype(self.decay))))

            for p, g, a in zip(params, grads, accumulators):
                new_a = self.rho * a + (1. - self.rho) * K.square(g)
                self.updates.append(K.update(a, new_a))
                new_p = p - lr * g / K.sqrt(new_a + self.epsilon)
                if getattr(p, 'constraint', None) is not None:
                    new_p = p.constraint(new_p)
                self.updates.append(K.update(p, new_p))
            return self.updates

    return CanonicalRMSprop


def optimizer(keras, opt: dict, report):
    from keras import backend as K

    if opt["mode"] == "canonical":
        cls = _canonical_rmsprop_class(keras)
        optimizer = cls(learning_rate=opt["lr"], rho=opt["rho"], epsilon=opt["eps"])
        impl, placement = "keras.optimizers.RMSprop subclass (CanonicalRMSprop)", "inside sqrt"
        how = ("subclass of Keras 2.3.1 RMSprop whose get_updates puts epsilon inside the sqrt "
               "(stock: sqrt(v) + eps); max pooling is a MaxPooling2D subclass sending each window's gradient "
               "to its first maximum only, as the other libraries do (Theano's goes to every tied maximum)")
    elif opt["mode"] == "native":
        optimizer = keras.optimizers.RMSprop()
        impl, placement, how = "keras.optimizers.RMSprop", "outside sqrt", ""
    else:
        raise ValueError(f"unknown optimizer mode {opt['mode']!r}")
    if optimizer.initial_decay:
        raise RuntimeError("Keras RMSprop unexpectedly has learning-rate decay on")
    # hyperparameters live in float32 variables: report them as the float32 they are, shortest form
    as_f32 = lambda v: float(str(np.float32(v)))  # noqa: E731
    report.optimizer(impl, as_f32(K.get_value(optimizer.learning_rate)), as_f32(K.get_value(optimizer.rho)),
                     float(optimizer.epsilon), 0.0, placement, how)
    return optimizer


def _step_reporter(keras, report, epoch: int):
    """Keras 2.3.1 gives each batch's own loss (computed before that batch's update) in on_batch_end."""

    class StepLosses(keras.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            report.step(epoch, batch, logs["loss"], int(logs["size"]))

    return StepLosses()


def _canonical(spec, values: dict) -> dict:
    """{(node name, param): value as Keras holds it} -> {"<node>.<param>": float32, canonical}."""
    return {f"{name}.{param}": builder.to_canonical(spec, spec.node(name), param, np.asarray(v, dtype=np.float32))
            for (name, param), v in values.items()}


def _step_dumper(keras, spec, model, report, steps: int):
    """For config["dump_steps"]: the optimizer's own symbolic gradients (captured from its get_gradients while
    Keras builds the train function, the same expression its updates use) compiled into a K.function that is
    fed each step's exact inputs just before the train function runs on them; parameters are read in
    on_batch_end, after the update. Call after compile, before fit; one callback serves all epochs."""
    from keras import backend as K

    rmsprop = model.optimizer
    get_gradients = rmsprop.get_gradients
    captured = []

    def capturing_get_gradients(loss, params):
        grads = get_gradients(loss, params)
        captured.append((list(params), list(grads)))
        return grads

    rmsprop.get_gradients = capturing_get_gradients
    try:
        model._make_train_function()  # what fit does first; builds the updates (and gradients) now
    finally:
        rmsprop.get_gradients = get_gradients
    if len(captured) != 1:
        raise RuntimeError(f"expected the optimizer to take gradients once, it did {len(captured)} times")
    params, grads = captured[0]

    variables = {(node.name, param): variable for node in spec.parametric()
                 for param, variable in builder.native_parameters(model, node).items()}
    slot = {id(variable): key for key, variable in variables.items()}
    taken = {id(p) for p in params}
    trainable = {(node.name, p.name) for node in spec.parametric() for p in ops.get(node.kind).params if p.trainable}
    missing = sorted(f"{name}.{param}" for key, (name, param) in slot.items()
                     if key not in taken and (name, param) in trainable)  # BatchNorm's statistics take none
    if missing:
        raise RuntimeError(f"the optimizer takes no gradient for {missing}")
    # the train function's own inputs, as Keras 2.3.1's _make_train_function lists them
    inputs = model._feed_inputs + model._feed_targets + model._feed_sample_weights
    if model._uses_dynamic_learning_phase():
        inputs += [K.learning_phase()]
    gradient_function = K.function(inputs, grads, name="step_gradients")
    train_function = model.train_function
    pending = []

    class StepTensors(keras.callbacks.Callback):
        step = 0

        def on_batch_end(self, batch, logs=None):
            if self.step >= steps:
                return
            if len(pending) != 1:
                raise RuntimeError(f"expected one optimizer update in step {self.step}, saw {len(pending)}")
            applied = {slot[id(p)]: g for p, g in zip(params, pending.pop()) if id(p) in slot}
            after = {key: K.get_value(variable) for key, variable in variables.items()}  # BatchNorm's statistics too
            report.step_tensors(self.step, _canonical(spec, applied), _canonical(spec, after))
            self.step += 1
            if self.step >= steps:
                model.train_function = train_function  # done: unwrap

    dumper = StepTensors()

    def gradients_then_train(ins):
        if dumper.step < steps:
            pending.append(gradient_function(ins))  # same batch, weights before this step's update
        return train_function(ins)

    model.train_function = gradients_then_train
    return dumper


def _mask_setter(keras, spec, holders: dict, seed: int, batch_size: int, sizes: list):
    """A callback setting, before each optimizer step, that step's harness masks (padded to the full batch) into
    the HarnessDropout variables: NCHW as they come (channels_first); flat ones after a Flatten in its (H, W, C)
    order. sizes: every step's batch size, over the whole run; one callback for all epochs' fit calls, so its
    step counts across them."""
    from keras import backend as K

    sources = dict(zip((layer.name for layer in spec.layers), layouts.flatten_sources(spec)))

    class StepMasks(keras.callbacks.Callback):
        step = 0

        def on_batch_begin(self, batch, logs=None):
            for name, mask in masks.step_masks(spec, seed, self.step, sizes[self.step]).items():
                if mask.ndim == 2:
                    mask = layouts.from_canonical(mask, sources[name])
                K.set_value(holders[name].step_mask, masks.padded(mask, batch_size))
            self.step += 1

    return StepMasks()


def _loss(keras, logits: bool):
    if not logits:
        return "categorical_crossentropy"
    K = keras.backend

    def softmax_categorical_crossentropy(y_true, y_pred):
        p = K.softmax(y_pred)
        p._keras_shape = K.int_shape(y_pred)  # Theano's tensors carry no shape; the loss asks for its rank
        return K.categorical_crossentropy(y_true, p)
    return softmax_categorical_crossentropy


def build_options(config: dict) -> dict:
    """Canonical mode's max pooling with a single-maximum gradient; harness dropout when the run applies the
    harness's masks (mask variables of the batch size)."""
    options = {"pool_gradient": "single" if config["optimizer"]["mode"] == "canonical" else "theano"}
    if masks.uses_harness_masks(config):
        options.update(dropout_masks=masks.HARNESS, batch_size=int(config["batch_size"]))
    return options


def setup(spec, config):
    """(keras, the model that trains), with the run's threads and seed; shared with the plain loop
    (benchmarks/plain)."""
    # Theano's thread knob is OMP_NUM_THREADS, read when Theano is imported (the builder imports it). Its
    # OpenMP stays off (Theano's default; openmp=True aborts here: CorrMM's OpenMP threads call the NumPy
    # C-API BLAS without the GIL), so the threads that run are those of NumPy's OpenBLAS, which read
    # OMP_NUM_THREADS when NumPy was imported: the harness sets it for the process.
    os.environ["OMP_NUM_THREADS"] = str(int(config["threads"]))
    # Keras 2 seeds each Dropout layer's Theano RandomStreams from numpy's global generator at build time.
    np.random.seed(int(config["seed"]))
    keras = builder.library()
    return keras, builder.build(spec, **build_options(config))


def train(spec, data, config, report):
    keras, model = setup(spec, config)
    from keras.utils import to_categorical

    bs = int(config["batch_size"])
    setter = []
    if build_options(config).get("dropout_masks") == masks.HARNESS:
        holders = {node.name: model.get_layer(node.name) for _, node in masks.dropout_layers(spec)}
        sizes = [len(b) for epoch in range(int(config["epochs"])) for b in data.batches(epoch, bs)]
        setter = [_mask_setter(keras, spec, holders, int(config["seed"]), bs, sizes)]
    rmsprop = optimizer(keras, config["optimizer"], report)
    # Keras 2's categorical_crossentropy: renormalise, clip to [1e-7, 1 - 1e-7], -sum(y * log(p)); batch mean. A model
    # that ends in logits gets the softmax over the classes first.
    model.compile(optimizer=rmsprop, loss=_loss(keras, ends_in_logits(spec)), metrics=["accuracy"])
    dump_steps = int(config.get("dump_steps", 0))
    dumper = [_step_dumper(keras, spec, model, report, dump_steps)] if dump_steps > 0 else []

    classes = model.output_shape[-1]
    y_val = to_categorical(data.y_val, classes).astype(np.float32)
    for epoch in range(int(config["epochs"])):
        idx = data.order[epoch]
        x = np.ascontiguousarray(data.images(epoch, idx))  # already NCHW, the builder's channels_first
        y = to_categorical(data.y_train[idx], classes).astype(np.float32)
        callback = _step_reporter(keras, report, epoch)

        started = clock.mark()
        history = model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0,
                            callbacks=[*setter, callback, *dumper])
        cost = clock.span(started)  # wall, CPU, steal and pressure seconds of the training steps
        train_s = cost["wall_s"]

        started = time.perf_counter()
        val_loss, val_acc = model.evaluate(data.x_val, y_val, batch_size=bs, verbose=0)
        eval_s = time.perf_counter() - started
        logs = history.history
        report.epoch(epoch, train_s, logs["loss"][-1], logs["accuracy"][-1], eval_s, val_loss, val_acc, cost=cost)
    from keras import backend as K

    report.trained(_canonical(spec, {(node.name, param): K.get_value(variable) for node in spec.parametric()
                                     for param, variable in builder.native_parameters(model, node).items()}))
