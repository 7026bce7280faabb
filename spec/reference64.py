"""An independent float64 reference for training steps: forward, backward and canonical RMSprop of a
ModelSpec in plain numpy. The math of every op is the op registry's (`spec.ops`), written from the op
definitions and sharing no code with any library; this module walks the graph.

Max pooling sends each window's gradient to its first maximum (row-major window order), as TensorFlow
and PyTorch do. Dropout nodes are the identity (steps are compared with dropout off).
"""
from __future__ import annotations

import numpy as np

from spec import ops
from spec.training import LOSS_CLIP


class Reference:
    """Parameters as {"<node>.<param>": float64 array} in the canonical layout."""

    def __init__(self, spec, weights: dict):
        self.spec = spec
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}

    def _node_params(self, node) -> dict:
        return {p: self.params[f"{node.name}.{p}"] for p in ops.get(node.kind).param_names}

    def forward(self, x, keep: bool = True):
        """(output, caches): caches[node name] = (inputs, output, op cache) for `backward`."""
        values = {self.spec.input_name: np.asarray(x, dtype=np.float64)}
        caches = {}
        for node in self.spec.layers:
            xs = [values[t] for t in node.inputs]
            y, cache = ops.get(node.kind).forward(node.attrs, self._node_params(node), xs)
            values[node.name] = y
            if keep:
                caches[node.name] = (xs, y, cache)
        return values[self.spec.output().name], caches

    def outputs(self, x) -> dict:
        """Every node's output, float64."""
        _, caches = self.forward(x)
        return {name: y for name, (_, y, _) in caches.items()}

    def backward(self, caches: dict, g) -> dict:
        """Gradients of every parameter, given the gradient `g` of the graph output; a tensor read by several
        nodes gets the sum of their gradients."""
        grads, pending = {}, {self.spec.output().name: g}
        for node in reversed(self.spec.layers):
            if node.name not in pending:
                continue  # the output does not depend on this node
            xs, y, cache = caches[node.name]
            dxs, dparams = ops.get(node.kind).backward(node.attrs, self._node_params(node), xs, y, cache,
                                                       pending.pop(node.name))
            grads.update({f"{node.name}.{p}": d for p, d in dparams.items()})
            for tensor, dx in zip(node.inputs, dxs):
                pending[tensor] = pending[tensor] + dx if tensor in pending else dx
        return grads

    def loss_and_grads(self, x, y):
        """Canonical loss -mean(log(clip(p_y, 1e-7, 1-1e-7))) and its gradient for every parameter."""
        p, caches = self.forward(x)
        n = len(y)
        p_y = p[np.arange(n), y]
        loss = float(-np.log(np.clip(p_y, LOSS_CLIP, 1 - LOSS_CLIP)).mean())
        g = np.zeros_like(p)
        inside = (p_y > LOSS_CLIP) & (p_y < 1 - LOSS_CLIP)  # the clip passes no gradient outside
        g[np.arange(n), y] = np.where(inside, -1.0 / (n * p_y), 0.0)
        return loss, self.backward(caches, g)

    def rmsprop_step(self, grads, state: dict, lr: float, rho: float, eps: float) -> None:
        """Canonical RMSprop: v = rho*v + (1-rho)*g^2 (v from 0); w -= lr*g/sqrt(v+eps)."""
        for name, g in grads.items():
            v = state.setdefault(name, np.zeros_like(g))
            v *= rho
            v += (1 - rho) * g * g
            self.params[name] -= lr * g / np.sqrt(v + eps)
