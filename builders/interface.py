"""What a library is, written down: the builder and trainer protocols every registered library fulfils
(`tests/test_libraries.py` checks them), and the graph walk that turns a ModelSpec into calls of the
library's per-op functions.

A library is three modules plus one line in `builders.LIBRARIES`:
    builders/<library>.py           `Builder`: the neutral ModelSpec -> the library's own model, same weights
    trainers/<library>.py           `Trainer`: identical epochs in the library's own training idiom
    benchmarks/plain/<library>.py   a tutorial-style loop sharing the trainer's setup (harness overhead)
An op is one entry in `spec.ops` plus one function `op_<kind>` per builder; `op_function` raises
`Unsupported` naming the op when a builder has none, so the row says why instead of failing.
"""
from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np


class Unsupported(Exception):
    """The model uses something this library's builder cannot express faithfully."""


@runtime_checkable
class Builder(Protocol):
    NAME: str

    def versions(self, **options) -> dict:
        """{package: version} of what the library runs on."""

    def build(self, spec, **options) -> Any:
        """The library's native model of `spec` with its weights loaded. `options` are a fast path's
        (builders.FAST_PATHS) or a trainer's (`Trainer.build_options`): the model that trains is built here."""

    def layer_outputs(self, model, spec, x: np.ndarray, **options) -> dict:
        """Inference forward pass on x (float32, canonical NCHW): {node name: output, canonical layout}."""

    def to_native(self, spec, node, param: str, value: np.ndarray) -> np.ndarray:
        """A parameter (or its gradient) in the canonical layout -> the layout the library holds it in."""

    def to_canonical(self, spec, node, param: str, value: np.ndarray) -> np.ndarray:
        """Inverse of to_native."""


@runtime_checkable
class Trainer(Protocol):
    NAME: str

    def build_options(self, config: dict) -> dict:
        """The builder options of the model this config trains (canonical max-pool gradient, harness dropout
        masks, a fast path's options): verification builds the same."""

    def setup(self, spec, config: dict) -> Any:
        """Threads, seed, imports, and `builders.<library>.build(spec, **build_options(config))`; shared with
        the plain loop so that the overhead ratio compares like with like."""

    def train(self, spec, data, config: dict, report) -> None:
        """Identical epochs in the library's own idiom, ending with report.trained(every parameter as trained, canonical
        layout); see trainers/__init__.py for data, config, report."""


BUILDER_FUNCTIONS = ("versions", "build", "layer_outputs", "to_native", "to_canonical")
TRAINER_FUNCTIONS = ("build_options", "setup", "train")


def missing(module: ModuleType, names: tuple) -> list:
    """The protocol members `module` lacks (a module fulfils a protocol by its top-level names)."""
    lacking = [] if isinstance(getattr(module, "NAME", None), str) else ["NAME"]
    return lacking + [n for n in names if not callable(getattr(module, n, None))]


def op_function(module: ModuleType, node, library: str | None = None) -> Callable:
    """The builder's `op_<kind>` for `node`; Unsupported naming the node and op when it has none."""
    function = getattr(module, f"op_{node.kind}", None)
    if function is None:
        raise Unsupported(f"{node.name}: {library or getattr(module, 'NAME', module.__name__)} has no "
                          f"{node.kind!r} op here")
    return function


def supported_kinds(module: ModuleType) -> list:
    return sorted(name[3:] for name in dir(module) if name.startswith("op_") and callable(getattr(module, name)))


def running_variance(node, *supported: str) -> str:
    """A BatchNorm node's running-variance estimator (spec.training.batchnorm_semantics), if the library's layer
    can move its running variance that way; Unsupported naming the node otherwise."""
    found = node.attrs.get("running_variance", "biased")
    if found not in supported:
        raise Unsupported(f"{node.name}: running variance moved by the {found} estimator; this library's layer "
                          f"moves it by the {' or '.join(supported)} one")
    return found


def walk(spec, apply: Callable, x) -> dict:
    """Evaluate the graph: apply(node, inputs) for every node in order, where inputs are the values of the
    tensors it reads (`x` for the graph input). Returns {tensor name: value} including the graph input."""
    values = {spec.input_name: x}
    for node in spec.layers:
        values[node.name] = apply(node, [values[t] for t in node.inputs])
    return values
