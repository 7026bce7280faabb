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


BUGS = {"flatten-order": _flatten_order, "kernel-flip": _kernel_flip, "padding": _padding}


def plant(name: str) -> None:
    BUGS[name]()
