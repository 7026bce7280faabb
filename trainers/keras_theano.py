"""Keras 2.3.1 on Theano: model.compile + model.fit, one fit call per epoch on NCHW (channels_first) arrays in
the harness's order."""
from __future__ import annotations

import os
import time

import numpy as np

from builders import keras_theano as builder
from builders import layouts
from trainers import masks

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


def _canonical_tensors(spec, native: dict) -> dict:
    """{layer name: (kernel, bias)} as Keras 2 stores them -> {"<layer>.weight"/"<layer>.bias": float32}
    canonical, by the inverses of builder.conv_kernel (undo the spatial flip, then HWIO -> OIHW) and
    builder.dense_kernel."""
    out = {}
    for i, layer in enumerate(spec.layers):
        if layer.name not in native:
            continue
        kernel, bias = (np.asarray(v, dtype=np.float32) for v in native[layer.name])
        if layer.kind == "conv":
            kernel = kernel[::-1, ::-1, :, :]  # undo the builder's flip for Theano's true convolution
        out[f"{layer.name}.weight"], out[f"{layer.name}.bias"] = layouts.kernel_to_canonical(spec, i, kernel), bias
    return out


def _step_dumper(keras, spec, model, report, steps: int):
    """For config["dump_steps"]: the optimizer's own symbolic gradients (captured from its get_gradients while
    Keras builds the train function, the same expression its updates use) compiled into a K.function that is
    fed each step's exact inputs just before the train function runs on them; parameters are read in
    on_batch_end, after the update. Call after compile, before fit; one callback serves all epochs."""
    from keras import backend as K

    optimizer = model.optimizer
    get_gradients = optimizer.get_gradients
    captured = []

    def capturing_get_gradients(loss, params):
        grads = get_gradients(loss, params)
        captured.append((list(params), list(grads)))
        return grads

    optimizer.get_gradients = capturing_get_gradients
    try:
        model._make_train_function()  # what fit does first; builds the updates (and gradients) now
    finally:
        optimizer.get_gradients = get_gradients
    if len(captured) != 1:
        raise RuntimeError(f"expected the optimizer to take gradients once, it did {len(captured)} times")
    params, grads = captured[0]

    layers = [l for l in spec.layers if l.kind in ("conv", "dense")]
    slot = {}  # id(variable) -> (layer name, 0 kernel | 1 bias)
    for layer in layers:
        native = model.get_layer(layer.name)
        slot[id(native.kernel)], slot[id(native.bias)] = (layer.name, 0), (layer.name, 1)
    missing = {(l.name, k) for l in layers for k in (0, 1)} - {slot.get(id(p)) for p in params}
    if missing:
        raise RuntimeError(f"the optimizer takes no gradient for {sorted(missing)}")
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
            values = {slot[id(p)]: g for p, g in zip(params, pending.pop())}
            report.step_tensors(self.step,
                                _canonical_tensors(spec, {l.name: (values[l.name, 0], values[l.name, 1])
                                                          for l in layers}),
                                _canonical_tensors(spec, {l.name: model.get_layer(l.name).get_weights()
                                                          for l in layers}))
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


def _harness_dropout(keras, spec, model, batch_size: int):
    """For config["dropout_masks"] == "harness": the model with every Dropout layer swapped for a layer that
    multiplies its input by the first n rows of a non-trainable shared variable holding the step's padded mask,
    in the train phase only (K.in_train_phase, as Dropout), sharing all other layers (and so their weights)
    with `model`; returns (that model, {layer name: that layer})."""
    from keras import backend as K

    class HarnessDropout(keras.layers.Layer):
        def build(self, input_shape):
            self.step_mask = self.add_weight(name="mask", shape=(batch_size, *input_shape[1:]),
                                             initializer="zeros", trainable=False)
            super().build(input_shape)

        def call(self, inputs, training=None):
            return K.in_train_phase(lambda: inputs * self.step_mask[:K.shape(inputs)[0]], inputs,
                                    training=training)

        def compute_output_shape(self, input_shape):
            return input_shape

    holders = {layer.name: HarnessDropout(name=layer.name) for _, layer in masks.dropout_layers(spec)}
    layers = [holders.get(layer.name, layer) for layer in model.layers]
    inputs = keras.layers.InputLayer(input_shape=tuple(spec.input_shape))
    return keras.models.Sequential([inputs, *layers]), holders


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


def setup(config):
    """keras, with the run's threads and seed; shared with the plain loop (benchmarks/plain)."""
    # Theano's thread knob is OMP_NUM_THREADS, read when Theano is imported (the builder imports it). Its
    # OpenMP stays off (Theano's default; openmp=True aborts here: CorrMM's OpenMP threads call the NumPy
    # C-API BLAS without the GIL), so the threads that run are those of NumPy's OpenBLAS, which read
    # OMP_NUM_THREADS when NumPy was imported: the harness sets it for the process.
    os.environ["OMP_NUM_THREADS"] = str(int(config["threads"]))
    # Keras 2 seeds each Dropout layer's Theano RandomStreams from numpy's global generator at build time.
    np.random.seed(int(config["seed"]))
    return builder.import_keras()


def train(spec, data, config, report):
    keras = setup(config)
    from keras.utils import to_categorical

    canonical = config["optimizer"]["mode"] == "canonical"
    bs = int(config["batch_size"])
    model = builder.build(spec, pool_gradient="single" if canonical else "theano")
    setter = []
    if masks.uses_harness_masks(config):
        model, holders = _harness_dropout(keras, spec, model, bs)
        sizes = [len(b) for epoch in range(int(config["epochs"])) for b in data.batches(epoch, bs)]
        setter = [_mask_setter(keras, spec, holders, int(config["seed"]), bs, sizes)]
    rmsprop = optimizer(keras, config["optimizer"], report)
    # Keras 2's categorical_crossentropy: renormalise, clip to [1e-7, 1 - 1e-7], -sum(y * log(p)); batch mean.
    model.compile(optimizer=rmsprop, loss="categorical_crossentropy", metrics=["accuracy"])
    dump_steps = int(config.get("dump_steps", 0))
    dumper = [_step_dumper(keras, spec, model, report, dump_steps)] if dump_steps > 0 else []

    classes = model.output_shape[-1]
    y_val = to_categorical(data.y_val, classes).astype(np.float32)
    for epoch in range(int(config["epochs"])):
        idx = data.order[epoch]
        x = np.ascontiguousarray(data.x_train[idx])  # already NCHW, the builder's channels_first
        y = to_categorical(data.y_train[idx], classes).astype(np.float32)
        callback = _step_reporter(keras, report, epoch)

        started = time.perf_counter()
        history = model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0,
                            callbacks=[*setter, callback, *dumper])
        train_s = time.perf_counter() - started

        started = time.perf_counter()
        val_loss, val_acc = model.evaluate(data.x_val, y_val, batch_size=bs, verbose=0)
        eval_s = time.perf_counter() - started
        logs = history.history
        report.epoch(epoch, train_s, logs["loss"][-1], logs["accuracy"][-1], eval_s, val_loss, val_acc)
