"""BatchNorm's training semantics: canonical (the graph's momentum and epsilon, ONNX's training mode with the
biased batch variance) or a library's native ones (its own layer's defaults, `NATIVE_BATCHNORM` of each builder),
or canonical with one native departure switched on alone, to attribute a native gap to the convention that
caused it. Applied to the graph (the BatchNorm nodes' attrs), so the float64 reference and every builder read the
same semantics from one place."""
from __future__ import annotations

import dataclasses

from spec.ir import ModelSpec

MODES = ("canonical", "native", "momentum", "epsilon", "running-variance")
DEPARTURES = MODES[2:]  # each may be switched on alone, from canonical (the attribution experiment)


@dataclasses.dataclass(frozen=True)
class NativeBatchNorm:
    """A library's own BatchNorm layer with its defaults, as its users write it. momentum in ONNX's convention
    (the weight of the old running value); running_variance: a key of spec.ops.RUNNING_VARIANCE."""
    layer: str
    written: str  # the defaults as the library spells them
    momentum: float
    epsilon: float
    running_variance: str


def semantics(spec: ModelSpec, native: NativeBatchNorm, mode: str) -> ModelSpec:
    """`spec` with every BatchNorm node's momentum, epsilon and running-variance estimator as `mode` asks:
    canonical, the graph's own with the biased variance (ONNX's training mode); native, the library's; a
    departure's name (DEPARTURES), canonical but for that one, which is the library's."""
    if mode not in MODES:
        raise ValueError(f"BatchNorm mode must be one of {', '.join(MODES)}, not {mode!r}")
    switched = set(DEPARTURES) if mode == "native" else {mode} & set(DEPARTURES)
    native_attrs = {"momentum": native.momentum, "epsilon": native.epsilon,
                    "running-variance": native.running_variance}
    layers = []
    for layer in spec.layers:
        if layer.kind == "batchnorm":
            attrs = {**layer.attrs, "running_variance": "biased"}
            for name in switched:
                key = name.replace("-", "_")
                if not _same(attrs[key], native_attrs[name]):  # an equal native value keeps the graph's own
                    attrs[key] = native_attrs[name]
            layer = dataclasses.replace(layer, attrs=attrs)
        layers.append(layer)
    return dataclasses.replace(spec, layers=layers)


def departures(spec: ModelSpec, trained: ModelSpec) -> list:
    """What `trained`'s BatchNorm semantics change from `spec`'s canonical ones, in words (one per kind)."""
    found = {}
    for before, after in zip(spec.layers, trained.layers):
        if before.kind != "batchnorm":
            continue
        for key, canonical in (("momentum", before.attrs["momentum"]), ("epsilon", before.attrs["epsilon"]),
                               ("running_variance", "biased")):
            if not _same(after.attrs.get(key, canonical), canonical):
                found.setdefault(key, f"BatchNorm {key.replace('_', ' ')} {_text(after.attrs[key])} "
                                      f"(canonical {_text(canonical)})")
    return list(found.values())


def _same(a, b) -> bool:
    """Equal, floats to float32 precision (the graph stores float32: its 0.9 is 0.8999999762)."""
    return a == b if isinstance(a, str) or isinstance(b, str) else abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def _text(value) -> str:
    return value if isinstance(value, str) else f"{value:g}"
