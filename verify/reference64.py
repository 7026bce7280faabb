"""An independent float64 reference for training steps: forward, backward and canonical RMSprop of a
ModelSpec in plain numpy, written from the layer definitions, sharing no code with any library.

Max pooling sends each window's gradient to its first maximum (row-major window order), as TensorFlow
and PyTorch do. Dropout layers are the identity (steps are compared with dropout off).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from spec.training import LOSS_CLIP


def _pad(x, pads, value=0.0):
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(xp, kernel, strides):
    """(N, C, oh, ow, kh, kw) view of the windows of padded input xp."""
    return sliding_window_view(xp, kernel, axis=(2, 3))[:, :, ::strides[0], ::strides[1]]


def _scatter(dxp, values, kernel, strides, out_hw):
    """Add values[..., i, j] (N, C, oh, ow, kh, kw) back to the window positions they came from."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, strides, out_hw
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += values[..., i, j]
    return dxp


def _unpad(dxp, pads):
    top, left, bottom, right = pads
    return dxp[:, :, top:dxp.shape[2] - bottom, left:dxp.shape[3] - right]


class Reference:
    """Parameters as {"<layer>.weight"/"<layer>.bias": float64 array} in the canonical layout."""

    def __init__(self, spec, weights: dict):
        self.spec = spec
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}

    def forward(self, x):
        caches, h = [], np.asarray(x, dtype=np.float64)
        for layer in self.spec.layers:
            a, cache = layer.attrs, {"x": h}
            if layer.kind == "conv":
                w, b = self.params[f"{layer.name}.weight"], self.params[f"{layer.name}.bias"]
                win = _windows(_pad(h, a["pads"]), a["kernel"], a["strides"])
                cache["win"] = win
                h = np.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[None, :, None, None]
            elif layer.kind == "relu":
                h = np.maximum(h, 0.0)
            elif layer.kind in ("maxpool", "avgpool"):
                h, cache["pool"] = self._pool_forward(layer, h)
            elif layer.kind == "flatten":
                h = h.reshape(len(h), -1)
            elif layer.kind == "dense":
                h = h @ self.params[f"{layer.name}.weight"] + self.params[f"{layer.name}.bias"]
            elif layer.kind == "softmax":
                e = np.exp(h - h.max(axis=1, keepdims=True))
                h = e / e.sum(axis=1, keepdims=True)
            cache["y"] = h
            caches.append(cache)
        return h, caches

    def _pool_forward(self, layer, x):
        a = layer.attrs
        kh, kw = a["kernel"]
        fill = -np.inf if layer.kind == "maxpool" else 0.0
        win = _windows(_pad(x, a["pads"], fill), a["kernel"], a["strides"])
        flat = win.reshape(*win.shape[:4], kh * kw)
        if layer.kind == "maxpool":
            first = flat.argmax(axis=-1)
            return np.take_along_axis(flat, first[..., None], -1)[..., 0], first
        if a["count_include_pad"]:
            count = np.full(win.shape[2:4], float(kh * kw))
        else:
            ones = _windows(_pad(np.ones((1, 1, *x.shape[2:])), a["pads"]), a["kernel"], a["strides"])
            count = ones.sum(axis=(-1, -2))[0, 0]
        return flat.sum(axis=-1) / count, count

    def loss_and_grads(self, x, y):
        """Canonical loss -mean(log(clip(p_y, 1e-7, 1-1e-7))) and its gradient for every parameter."""
        p, caches = self.forward(x)
        n = len(y)
        p_y = p[np.arange(n), y]
        loss = float(-np.log(np.clip(p_y, LOSS_CLIP, 1 - LOSS_CLIP)).mean())
        g = np.zeros_like(p)
        inside = (p_y > LOSS_CLIP) & (p_y < 1 - LOSS_CLIP)  # the clip passes no gradient outside
        g[np.arange(n), y] = np.where(inside, -1.0 / (n * p_y), 0.0)
        grads = {}
        for layer, cache in zip(reversed(self.spec.layers), reversed(caches)):
            g = self._backward(layer, cache, g, grads)
        return loss, grads

    def _backward(self, layer, cache, g, grads):
        a, x = layer.attrs, cache["x"]
        if layer.kind == "softmax":
            p = cache["y"]
            return p * (g - (g * p).sum(axis=1, keepdims=True))
        if layer.kind == "dense":
            grads[f"{layer.name}.weight"], grads[f"{layer.name}.bias"] = x.T @ g, g.sum(axis=0)
            return g @ self.params[f"{layer.name}.weight"].T
        if layer.kind == "flatten":
            return g.reshape(x.shape)
        if layer.kind == "relu":
            return g * (x > 0)
        if layer.kind == "dropout":
            return g
        out_hw = g.shape[2:]
        padded = np.zeros(_pad(x, a["pads"]).shape)
        if layer.kind == "conv":
            w = self.params[f"{layer.name}.weight"]
            grads[f"{layer.name}.weight"] = np.einsum("nchwij,nohw->ocij", cache["win"], g, optimize=True)
            grads[f"{layer.name}.bias"] = g.sum(axis=(0, 2, 3))
            spread = np.einsum("nohw,ocij->nchwij", g, w, optimize=True)
        elif layer.kind == "maxpool":
            kh, kw = a["kernel"]
            onehot = np.eye(kh * kw)[cache["pool"]].reshape(*g.shape, kh, kw)
            spread = onehot * g[..., None, None]
        else:
            spread = np.broadcast_to((g / cache["pool"])[..., None, None], (*g.shape, *a["kernel"]))
        return _unpad(_scatter(padded, spread, a["kernel"], a["strides"], out_hw), a["pads"])

    def rmsprop_step(self, grads, state: dict, lr: float, rho: float, eps: float) -> None:
        """Canonical RMSprop: v = rho*v + (1-rho)*g^2 (v from 0); w -= lr*g/sqrt(v+eps)."""
        for name, g in grads.items():
            v = state.setdefault(name, np.zeros_like(g))
            v *= rho
            v += (1 - rho) * g * g
            self.params[name] -= lr * g / np.sqrt(v + eps)
