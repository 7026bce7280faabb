"""One module per library: the neutral ModelSpec -> that library's own idiomatic model.

Each builder module fulfils `builders.interface.Builder` (NAME, versions, build, layer_outputs, to_native,
to_canonical) and has one `op_<kind>` function per op kind of the registry (`spec.ops`) it can express.
`options` are a fast path's (FAST_PATHS below) or a trainer's build options.

Library imports happen inside those functions, so this package can be imported anywhere.
Layout conversions and library quirks live in the builder of that library and nowhere else.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from builders.interface import Unsupported  # noqa: F401  (raised by every builder)

# library name -> (builder module, worker environment)
LIBRARIES = {
    "keras-theano": ("builders.keras_theano", "theano"),
    "keras-tensorflow": ("builders.keras_tensorflow", "main"),
    "pytorch": ("builders.pytorch", "main"),
    "tflearn": ("builders.tflearn", "main"),
    "tensorflow": ("builders.tensorflow", "main"),
    "tensorlayer": ("builders.tensorlayer", "main"),
}


@dataclass(frozen=True)
class FastPath:
    """A faster way to run a library's same model: its builder and trainer with `options`, in the base's
    environment. Verified and timed like a library of its own, never part of 'all'."""
    base: str
    options: dict
    changes: str  # what it changes, for the reader of a results table


FAST_PATHS = {
    "pytorch+channels_last": FastPath("pytorch", {"channels_last": True},
                                      "PyTorch with activations and conv weights in channels_last (NHWC) memory "
                                      "format; same modules"),
    "pytorch+compile": FastPath("pytorch", {"compile": True},
                                "PyTorch with torch.compile (TorchInductor, default mode) of the model; backward "
                                "through AOTAutograd"),
    "tensorflow+xla": FastPath("tensorflow", {"jit_compile": True},
                               "raw TensorFlow with the train and eval steps compiled by XLA (tf.function "
                               "jit_compile=True)"),
    "keras-jax": FastPath("keras-tensorflow", {"backend": "jax"},
                          "the Keras 3 model and fit loop on the JAX backend (XLA-compiled train step)"),
    "keras-torch": FastPath("keras-tensorflow", {"backend": "torch"},
                            "the Keras 3 model and fit loop on the PyTorch backend (eager)"),
}

NAMES = [*LIBRARIES, *FAST_PATHS]


def native_batchnorm(name: str):
    """The BatchNorm layer a library's users write, with its defaults (spec.batchnorm.NativeBatchNorm)."""
    import importlib

    return importlib.import_module(LIBRARIES[resolve(name)[0]][0]).NATIVE_BATCHNORM


def resolve(name: str) -> tuple:
    """(base library, worker environment, options) of a library or fast path."""
    if name in LIBRARIES:
        return name, LIBRARIES[name][1], {}
    if name in FAST_PATHS:
        fast = FAST_PATHS[name]
        return fast.base, LIBRARIES[fast.base][1], dict(fast.options)
    raise KeyError(f"unknown library {name!r}; choose from {', '.join(NAMES)}")


def cache_dir(name: str) -> Path:
    """The folder (<cache root>/<name>, created) for what a library compiles and can reuse in later runs and other
    checkouts: Theano's C modules, XLA executables, TorchInductor kernels. The root is $XV_CACHE_DIR, else
    $XDG_CACHE_HOME/onnx-xverify, else ~/.cache/onnx-xverify: per user, not per checkout, because a cold Theano
    cache cost up to two minutes of g++ per model and every fresh clone (CI's included) paid it again."""
    root = os.environ.get("XV_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnx-xverify"
    path = Path(root).expanduser() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def select(tokens) -> list:
    """Library and fast-path names from command-line tokens: names, 'all' (the six libraries) and 'fast-paths'
    (every fast path), in the order given, without repeats. ValueError names the first unknown token."""
    groups = {"all": list(LIBRARIES), "fast-paths": list(FAST_PATHS)}
    names = []
    for token in tokens:
        if token not in groups and token not in NAMES:
            raise ValueError(f"unknown library {token!r}; choose from {', '.join(NAMES)}, 'all' or 'fast-paths'")
        names += [n for n in groups.get(token, [token]) if n not in names]
    return names


