"""An independent float64 reference for training steps: forward, backward and canonical RMSprop of a
ModelSpec in plain numpy. The math of every op is the op registry's (`spec.ops`), written from the op
definitions and sharing no code with any library; this module walks the graph.

Max pooling sends each window's gradient to its first maximum (row-major window order), as TensorFlow
and PyTorch do. Dropout nodes are the identity (steps are compared with dropout off). In training mode the ops
with state (BatchNorm) take their training form, ONNX's training_mode=1: the batch's statistics normalise, and
`state` gives the running statistics after the batch.
"""
from __future__ import annotations

import numpy as np

from spec import ops
from spec.training import LOSS_CLIP, ends_in_logits


class Reference:
    """Parameters as {"<node>.<param>": float64 array} in the canonical layout."""

    def __init__(self, spec, weights: dict, training: bool = False, dtype=np.float64):
        """`dtype`: float64 is the reference; float32 runs the same math as a float32 library would, to measure
        what float32 rounding alone moves (verify.steps' envelopes)."""
        self.spec, self.training, self.dtype = spec, training, dtype
        self.params = {k: np.array(v, dtype=dtype) for k, v in weights.items()}

    def _node_params(self, node) -> dict:
        return {p: self.params[f"{node.name}.{p}"] for p in ops.get(node.kind).param_names}

    def _attrs(self, node) -> dict:
        return {**node.attrs, "training": True} if self.training and ops.get(node.kind).state else node.attrs

    def forward(self, x, keep: bool = True):
        """(output, caches): caches[node name] = (inputs, output, op cache) for `backward`."""
        values = {self.spec.input_name: np.asarray(x, dtype=self.dtype)}
        caches = {}
        for node in self.spec.layers:
            xs = [values[t] for t in node.inputs]
            y, cache = ops.get(node.kind).forward(self._attrs(node), self._node_params(node), xs)
            values[node.name] = y
            if keep:
                caches[node.name] = (xs, y, cache)
        return values[self.spec.output().name], caches

    def outputs(self, x) -> dict:
        """Every node's output, float64."""
        _, caches = self.forward(x)
        return {name: y for name, (_, y, _) in caches.items()}

    def state(self, caches: dict) -> dict:
        """{"<node>.<param>": value} of every non-trainable parameter after the forward pass of `caches` in
        training mode (BatchNorm's running mean and variance, moved by the batch); empty outside training."""
        found = {}
        for node in self.spec.layers:
            op = ops.get(node.kind)
            if self.training and op.state and node.name in caches:
                xs, _, cache = caches[node.name]
                found.update({f"{node.name}.{p}": v for p, v in
                              op.state(self._attrs(node), self._node_params(node), xs, cache).items()})
        return found

    def backward(self, caches: dict, g) -> dict:
        """Gradients of every trainable parameter, given the gradient `g` of the graph output; a tensor read by
        several nodes gets the sum of their gradients."""
        grads, pending = {}, {self.spec.output().name: g}
        for node in reversed(self.spec.layers):
            if node.name not in pending:
                continue  # the output does not depend on this node
            xs, y, cache = caches[node.name]
            op = ops.get(node.kind)
            dxs, dparams = op.backward(self._attrs(node), self._node_params(node), xs, y, cache, pending.pop(node.name))
            trainable = {p.name for p in op.params if p.trainable}
            grads.update({f"{node.name}.{p}": d for p, d in dparams.items() if p in trainable})
            for tensor, dx in zip(node.inputs, dxs):
                pending[tensor] = pending[tensor] + dx if tensor in pending else dx
        return grads

    def loss_and_grads(self, x, y):
        """Canonical loss -mean(log(clip(p_y, 1e-7, 1-1e-7))) and its gradient for every trainable parameter."""
        loss, grads, _ = self.loss_grads_state(x, y)
        return loss, grads

    def loss_grads_state(self, x, y):
        """loss_and_grads, and the running statistics the batch leaves in training mode (`state`). A model that
        ends in logits has the softmax over the classes applied inside the loss."""
        out, caches = self.forward(x)
        logits = ends_in_logits(self.spec)
        p = _softmax(out) if logits else out
        n = len(y)
        p_y = p[np.arange(n), y]
        loss = float(-np.log(np.clip(p_y, LOSS_CLIP, 1 - LOSS_CLIP)).mean())
        g = np.zeros_like(p)
        inside = (p_y > LOSS_CLIP) & (p_y < 1 - LOSS_CLIP)  # the clip passes no gradient outside
        g[np.arange(n), y] = np.where(inside, -1.0 / (n * np.maximum(p_y, LOSS_CLIP)), 0.0)
        if logits:  # through the softmax: p * (g - sum(g * p))
            g = p * (g - (g * p).sum(axis=1, keepdims=True))
        return loss, self.backward(caches, g), self.state(caches)

    def rmsprop_step(self, grads, state: dict, lr: float, rho: float, eps: float) -> None:
        """Canonical RMSprop: v = rho*v + (1-rho)*g^2 (v from 0); w -= lr*g/sqrt(v+eps)."""
        for name, g in grads.items():
            v = state.setdefault(name, np.zeros_like(g))
            v *= rho
            v += (1 - rho) * g * g
            self.params[name] -= lr * g / np.sqrt(v + eps)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
