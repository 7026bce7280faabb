"""Floating-point operations of one image through a ModelSpec, counted from the layer definitions.

Conventions (stated, so that % of peak can be checked by hand): a multiply-add is 2 FLOPs; conv and dense
count their multiply-adds plus one add per output for the bias; relu 1 per output element; max/avg pooling
k*k-1 per output (comparisons or adds; avg adds 1 divide); softmax 5 per element (max, subtract, exp, sum,
divide); dropout, flatten 0. Training is forward plus backward, with the backward pass of conv and dense
costing twice their forward multiply-adds (gradient of the input and of the weights; only the weights' for
the first of them, whose input is data) and every other layer once its forward count.
"""
from __future__ import annotations

import math

from spec.ir import ModelSpec


def layer_flops(spec: ModelSpec, index: int) -> dict:
    """{"forward": n, "backward": n} for one image through layer `index`."""
    layer = spec.layers[index]
    out = math.prod(layer.output_shape)
    a = layer.attrs
    input_grad = any(l.kind in ("conv", "dense") for l in spec.layers[:index])
    if layer.kind in ("conv", "dense"):
        if layer.kind == "conv":
            kh, kw = spec.weight(layer).shape[2:]
            macs = out * spec.input_shape_of(index)[0] * kh * kw
        else:
            macs = math.prod(spec.weight(layer).shape)
        return {"forward": 2 * macs + out, "backward": (4 if input_grad else 2) * macs + out}
    if layer.kind in ("maxpool", "avgpool"):
        kh, kw = a["kernel"]
        per = kh * kw - 1 + (1 if layer.kind == "avgpool" else 0)
        return {"forward": out * per, "backward": out * per}
    per_element = {"relu": 1, "softmax": 5}.get(layer.kind, 0)
    return {"forward": out * per_element, "backward": out * per_element}


def model_flops(spec: ModelSpec) -> dict:
    """Per image: forward FLOPs, training FLOPs (forward + backward), and each layer's share."""
    per_layer = {l.name: layer_flops(spec, i) for i, l in enumerate(spec.layers)}
    forward = sum(f["forward"] for f in per_layer.values())
    backward = sum(f["backward"] for f in per_layer.values())
    return {"forward": forward, "training": forward + backward, "layers": per_layer}
