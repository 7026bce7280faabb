"""Identical dropout: every dropout mask of a run drawn by the harness from one seeded stream.

With config["dropout_masks"] == "harness", each trainer asks `step_masks` for the masks of every
optimizer step and applies exactly those (multiplies the layer's input by them) instead of drawing
its own. The masks are inverted-dropout masks, 0 or 1/(1 - rate), in the canonical layout; NHWC
libraries convert them with builders.layouts.from_canonical.

The stream is PCG64 keyed by (seed, global step), read through random_raw, whose output numpy
guarantees across versions, so the Theano environment's old numpy draws the same masks.
"""
from __future__ import annotations

import numpy as np

HARNESS, LIBRARY = "harness", "library"


def dropout_layers(spec) -> list:
    """(index, layer) of every dropout layer that drops something."""
    return [(i, l) for i, l in enumerate(spec.layers) if l.kind == "dropout" and l.attrs.get("rate", 0) > 0]


def step_masks(spec, seed: int, global_step: int, n: int) -> dict:
    """{layer name: float32 (n, *layer output shape)} for optimizer step `global_step` (0-based, counted
    over the whole run) of a batch of n images."""
    bits = np.random.PCG64(np.random.SeedSequence([int(seed), int(global_step)]))
    masks = {}
    for _, layer in dropout_layers(spec):
        shape = (n, *layer.output_shape)
        uniform = (bits.random_raw(int(np.prod(shape))) >> np.uint64(11)) * (1.0 / 2 ** 53)
        rate = layer.attrs["rate"]
        masks[layer.name] = np.where(uniform >= rate, 1.0 / (1.0 - rate), 0.0).astype(np.float32).reshape(shape)
    return masks


def padded(mask: np.ndarray, rows: int) -> np.ndarray:
    """`mask` with zero rows appended up to `rows`, for libraries that hold a step's masks in a variable of
    the full batch size and slice the first n rows (the last batch of an epoch is smaller)."""
    if len(mask) == rows:
        return mask
    return np.concatenate([mask, np.zeros((rows - len(mask), *mask.shape[1:]), mask.dtype)])


def uses_harness_masks(config: dict) -> bool:
    return bool(config.get("dropout", True)) and config.get("dropout_masks", LIBRARY) == HARNESS
