"""Floating-point operations of one image through a ModelSpec, from each op's FLOPs rule in the op registry
(`spec.ops`, where the conventions are stated so that % of peak can be checked by hand). Training is forward
plus backward."""
from __future__ import annotations

from spec import ops
from spec.ir import ModelSpec


def _needs_input_grad(spec: ModelSpec) -> dict:
    """Per node: whether any node it depends on has parameters (then the gradient of its input is needed)."""
    needs = {spec.input_name: False}
    for node in spec.layers:
        upstream = any(needs[t] for t in node.inputs)
        needs[node.name] = upstream or ops.has_params(node.kind)
        needs[f"{node.name}:input"] = upstream
    return needs


def layer_flops(spec: ModelSpec, index: int, needs: dict | None = None) -> dict:
    """{"forward": n, "backward": n} for one image through node `index` (`needs`: _needs_input_grad(spec))."""
    node = spec.layers[index]
    input_grad = (needs or _needs_input_grad(spec))[f"{node.name}:input"]
    forward, backward = ops.get(node.kind).flops(node.attrs, spec.input_shapes(node), node.output_shape, input_grad)
    return {"forward": int(forward), "backward": int(backward)}


def model_flops(spec: ModelSpec) -> dict:
    """Per image: forward FLOPs, training FLOPs (forward + backward), and each node's share."""
    needs = _needs_input_grad(spec)
    per_layer = {n.name: layer_flops(spec, i, needs) for i, n in enumerate(spec.layers)}
    forward = sum(f["forward"] for f in per_layer.values())
    backward = sum(f["backward"] for f in per_layer.values())
    return {"forward": forward, "training": forward + backward, "layers": per_layer}
