"""Bugs the verifier exists to catch, planted by replacing one builder conversion in a worker."""
import importlib


def _flatten_order():
    # Keras flattens NHWC activations in (H, W, C) order; forgetting to permute the first dense
    # layer's rows from ONNX's (C, H, W) order is the classic silent porting bug.
    module = importlib.import_module("builders.keras_tensorflow")
    module.dense_kernel = lambda w, flatten_from: w


def _kernel_flip():
    # Keras 2 on Theano convolves (flips kernels); undo the builder's compensating flip.
    module = importlib.import_module("builders.keras_theano")
    original = module.conv_kernel
    module.conv_kernel = lambda w: original(w)[::-1, ::-1]


def _padding():
    # Treat explicit asymmetric pads as TensorFlow 'same': same output shape, shifted window.
    from spec import ir

    original = ir.padding_mode
    ir.padding_mode = lambda *a: "same" if original(*a) == "explicit" else original(*a)


def _channels_last_view():
    # the naive channels_last port: NHWC data reinterpreted as NCHW (a reshape) instead of changing only the
    # memory format; same shape, scrambled pixels
    module = importlib.import_module("builders.pytorch")
    original = module.inputs

    def inputs(x, **options):
        if options.get("channels_last"):
            return x.permute(0, 2, 3, 1).reshape(x.shape)
        return original(x, **options)
    module.inputs = inputs


BUGS = {"flatten-order": _flatten_order, "kernel-flip": _kernel_flip, "padding": _padding,
        "channels-last-view": _channels_last_view}


# --- training faults, each aimed at one library: XV_PLANTED_BUG="<fault>:<library>" ---------------

def _worker_is(library: str) -> bool:
    import sys

    return len(sys.argv) > 1 and library in (sys.argv[1], "all")


def _patch_load_job(library: str, change):
    from trainers import worker

    original = worker.load_job

    def load_job(job):
        spec, data, config = original(job)
        if _worker_is(library):
            change(data, config)
        return spec, data, config
    worker.load_job = load_job


def _patch_step(library: str, action):
    from trainers import worker

    original = worker.Reporter.step

    def step(self, epoch, step, loss, batch_size):
        if _worker_is(library) and step == 1:
            action()
        return original(self, epoch, step, loss, batch_size)
    worker.Reporter.step = step


def _lr_off(library):
    # a learning rate 10 % too high: the optimizer arithmetic no longer matches canonical
    _patch_load_job(library, lambda data, config: config["optimizer"].update(lr=config["optimizer"]["lr"] * 1.1))


def _nan(library):
    # poisoned inputs: the library's own forward pass produces a NaN loss
    _patch_load_job(library, lambda data, config: data.x_train.fill(float("nan")))


def _crash(library):
    import os
    import signal

    _patch_step(library, lambda: os.kill(os.getpid(), signal.SIGKILL))


def _hang(library):
    import time

    _patch_step(library, lambda: time.sleep(3600))


TRAINING_FAULTS = {"lr-off": _lr_off, "nan": _nan, "crash": _crash, "hang": _hang}


def _graph_bugs() -> dict:
    """The graph-op bugs of tests/planted/graph_bugs_<library>.py (one file per library: `BUGS = {name: plant}`)."""
    import pkgutil

    import tests.planted as package

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("graph_bugs_"):
            found.update(importlib.import_module(f"tests.planted.{info.name}").BUGS)
    return found


def plant(name: str) -> None:
    fault, _, library = name.partition(":")
    if library:
        TRAINING_FAULTS[fault](library)
    else:
        {**BUGS, **_graph_bugs()}[name]()


def _eps_outside(library):
    # PyTorch's own RMSprop step (eps outside the square root) in place of the canonical one
    assert library == "pytorch", "this fault is written for the PyTorch trainer"
    import importlib

    module = importlib.import_module("trainers.pytorch")
    module._canonical_rmsprop = lambda: importlib.import_module("torch").optim.RMSprop


TRAINING_FAULTS["eps-outside"] = _eps_outside


def _theano_pool_gradient(library):
    # Keras-on-Theano's own max-pool gradient (to every tied maximum) even in canonical mode
    assert library == "keras-theano", "this fault is written for the Keras-on-Theano builder"
    import importlib

    module = importlib.import_module("builders.keras_theano")
    original = module.build
    module.build = lambda spec, **options: original(spec, **{**options, "pool_gradient": "theano"})


TRAINING_FAULTS["theano-pool-gradient"] = _theano_pool_gradient


def _mask_shifted(library):
    # an off-by-one in the global step: the library applies the harness's masks of the next step
    from trainers import masks

    original = masks.step_masks

    def step_masks(spec, seed, global_step, n):
        return original(spec, seed, global_step + (1 if _worker_is(library) else 0), n)
    masks.step_masks = step_masks


def _own_masks(library):
    # the library silently keeps drawing its own dropout masks in identical-dropout mode
    from trainers import masks

    original = masks.uses_harness_masks
    masks.uses_harness_masks = lambda config: False if _worker_is(library) else original(config)


TRAINING_FAULTS["mask-shifted"] = _mask_shifted
TRAINING_FAULTS["own-masks"] = _own_masks


def _lr_zero(library):
    # learning rate 0: weights never move, so every step's loss depends only on its batch and dropout masks
    _patch_load_job(library, lambda data, config: config["optimizer"].update(lr=0.0))


TRAINING_FAULTS["lr-zero"] = _lr_zero


def _malformed_output(library):
    # the worker exits 0 but its result file is not what it should be (a full disk, a bug, a stray write)
    import sys
    from pathlib import Path

    from trainers import worker

    original = worker.main

    def main(argv=None):
        code = original(argv)
        if _worker_is(library) and code == 0:
            worker.result_path(Path(sys.argv[2]), sys.argv[1]).write_text('{"steps": [1, 2')
        return code
    worker.main = main


def _env_missing(library):
    # the library's environment is gone (deleted, or never built on this machine): its python does not exist
    import builders
    import envs

    original, ensure = builders.resolve, envs.ensure

    def resolve(name):
        base, env, options = original(name)
        return (base, "vanished", options) if name == library else (base, env, options)
    builders.resolve = resolve
    envs.ensure = lambda name: envs.ENVS_DIR / "vanished" / "bin" / "python" if name == "vanished" else ensure(name)


def _malformed_layer_outputs(library):
    # the builder worker exits 0 but its outputs file is not an npz (patched at os.replace, which the worker's
    # atomic write ends with: `python -m builders.worker` runs as __main__, not as the module imported here)
    import os

    original = os.replace

    def replace(src, dst):
        if str(dst).endswith(f"{library}.outputs.npz"):
            with open(src, "wb") as handle:
                handle.write(b"not an npz")
        return original(src, dst)
    os.replace = replace


TRAINING_FAULTS.update({"malformed-output": _malformed_output, "env-missing": _env_missing,
                        "malformed-layer-outputs": _malformed_layer_outputs})


def _grad_sign_flip(library):
    # a backward pass with one sign wrong, in the last dense layer's weight gradient: a later tensor than
    # conv1.weight, where native mode's first update departure is found
    assert library == "pytorch", "this fault is written for the PyTorch builder"
    module = importlib.import_module("builders.pytorch")
    original = module.build

    def build(spec, **options):
        import torch

        model = original(spec, **options)
        [*_, last] = (m for m in model.modules() if isinstance(m, torch.nn.Linear))
        last.weight.register_hook(torch.neg)  # the gradient autograd leaves in .grad, negated
        return model
    module.build = build


TRAINING_FAULTS["grad-sign-flip"] = _grad_sign_flip


def _tflearn_default_clip(library):
    # the trainer's clip_gradients=0 lost: tflearn.DNN's default clips gradients to global norm 5 in canonical mode
    assert library == "tflearn", "this fault is written for the tflearn trainer"
    module = importlib.import_module("trainers.tflearn")
    original = module.setup

    def setup(spec, config):
        tf, tflearn, model = original(spec, config)
        init = tflearn.DNN.__init__

        def without_clip_argument(self, network, *args, clip_gradients=None, **kwargs):
            init(self, network, *args, **kwargs)
        tflearn.DNN.__init__ = without_clip_argument
        return tf, tflearn, model
    module.setup = setup


def _misdeclared(library):
    # a trainer whose row says canonical epsilon placement while its optimizer puts epsilon outside the root
    from trainers import worker

    original = worker.Reporter.optimizer

    def optimizer(self, impl, lr, rho, eps, ms_init, eps_placement, *args, **kwargs):
        if _worker_is(library):
            eps_placement = "inside sqrt"
        return original(self, impl, lr, rho, eps, ms_init, eps_placement, *args, **kwargs)
    worker.Reporter.optimizer = optimizer


TRAINING_FAULTS.update({"tflearn-default-clip": _tflearn_default_clip, "misdeclared": _misdeclared})


def _torch_momentum(library):
    # ONNX's momentum handed to nn.BatchNorm2d as it is: PyTorch's momentum weighs the new batch, ONNX's the old
    # running value (AlgoPerf's opposite-momentum bug), so the running statistics move nine times too far
    assert library == "pytorch", "this fault is written for the PyTorch builder"
    module = importlib.import_module("builders.pytorch")
    original = module._onnx_batchnorm_class()

    def with_onnx_momentum(channels, eps, momentum):
        return original(channels, eps=eps, momentum=1.0 - momentum)
    module._onnx_batchnorm_class = lambda: with_onnx_momentum


def _unbiased_running_variance(library):
    # stock nn.BatchNorm2d in training: the running variance moved by the unbiased batch variance, not ONNX's biased
    assert library == "pytorch", "this fault is written for the PyTorch builder"
    module = importlib.import_module("builders.pytorch")
    module._onnx_batchnorm_class = lambda: importlib.import_module("torch.nn").BatchNorm2d


TRAINING_FAULTS["torch-momentum"] = _torch_momentum
TRAINING_FAULTS["unbiased-running-variance"] = _unbiased_running_variance


def _native_layer_biased(library):
    # the native row declares torch.nn.BatchNorm2d (unbiased running variance), but the build keeps ONNX's layer
    assert library == "pytorch", "this fault is written for the PyTorch builder"
    module = importlib.import_module("builders.pytorch")
    nn = importlib.import_module("torch.nn")
    nn.BatchNorm2d = module._onnx_batchnorm_class()  # the subclass is made from the stock layer first


def _augment_ignored(library):
    # the library trains on the plain images when the run augments
    from spec import training

    original = training.TrainingData.images

    def images(self, epoch, idx, convert=None):
        if not _worker_is(library):
            return original(self, epoch, idx, convert)
        return self.x_train[idx] if convert is None else convert(self.x_train[idx])
    training.TrainingData.images = images


TRAINING_FAULTS["native-layer-biased"] = _native_layer_biased
TRAINING_FAULTS["augment-ignored"] = _augment_ignored


def _eval_dropout_on(library):
    # the library evaluates with its model still in training mode: dropout (and batch statistics) left on
    assert library == "pytorch", "this fault is written for the PyTorch trainer"

    def leave_training_mode(data, config):  # in the training worker only: the gate verifies the honest build
        importlib.import_module("torch.nn").Module.eval = lambda self: self
    _patch_load_job(library, leave_training_mode)


TRAINING_FAULTS["eval-dropout-on"] = _eval_dropout_on
