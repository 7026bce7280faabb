"""The comparator: a library's per-layer outputs against the reference's, judged by the policy.

Results are plain dicts of numbers and strings, ready for JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from workers import Status

TOLERANCES = Path(__file__).with_name("tolerances.json")


def load_policy(library: str | None = None, path: Path = TOLERANCES) -> dict:
    doc = json.loads(Path(path).read_text())
    policy = dict(doc["policy"])
    policy.update(doc.get("per_library", {}).get(library or "", {}))
    return policy


def layer_error(got: np.ndarray, ref: np.ndarray) -> dict:
    if got.shape != ref.shape:
        return {"shape": list(got.shape), "ref_shape": list(ref.shape), "max_abs": None, "scaled": float("inf")}
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max()) or 1.0
    max_abs = float(diff.max()) if diff.size else 0.0
    return {"max_abs": max_abs, "scaled": max_abs / scale}


def output_stats(got: np.ndarray, ref: np.ndarray, policy: dict) -> dict:
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(got64 - ref64)
    rel = diff / np.maximum(np.abs(ref64), np.finfo(np.float32).tiny)
    allclose = bool(np.all(diff <= policy["output_atol"] + policy["output_rtol"] * np.abs(ref64)))
    flat_ref, flat_got = ref64.reshape(len(ref64), -1), got64.reshape(len(got64), -1)
    agree = flat_ref.argmax(1) == flat_got.argmax(1)
    top2 = np.sort(flat_ref, axis=1)[:, -2:] if flat_ref.shape[1] > 1 else np.zeros((len(flat_ref), 2))
    decided = (top2[:, 1] - top2[:, 0]) > policy["argmax_min_margin"]
    return {
        "max_abs": float(diff.max()), "max_rel": float(rel.max()), "allclose": allclose,
        "argmax_agree": int(agree.sum()), "samples": int(len(agree)),
        "argmax_disagree_decided": int((~agree & decided).sum()),
    }


def compare(spec, got: dict, ref: dict, policy: dict) -> dict:
    """Verdict 'pass' or 'mismatch', the output statistics and the first diverging layer."""
    layers, first = [], None
    for layer in spec.layers:
        err = layer_error(np.asarray(got[layer.name]), np.asarray(ref[layer.name]))
        err.update(name=layer.name, kind=layer.kind)
        layers.append(err)
        if first is None and not err["scaled"] <= policy["layer_scaled_tol"]:
            first = err
    last = spec.layers[-1].name
    out = output_stats(np.asarray(got[last]), np.asarray(ref[last]), policy) if "shape" not in layers[-1] else None
    ok = first is None and out is not None and out["allclose"] and out["argmax_disagree_decided"] == 0
    result = {"verdict": Status.PASS if ok else Status.MISMATCH, "output": out, "layers": layers, "policy": policy,
              "first_divergent_layer": None}
    if first is not None:
        result["first_divergent_layer"] = {k: first[k] for k in ("name", "kind", "scaled") if k in first}
        if "shape" in first:
            result["first_divergent_layer"].update(shape=first["shape"], ref_shape=first["ref_shape"])
    elif not ok:
        result["first_divergent_layer"] = {"name": last, "kind": spec.layers[-1].kind,
                                           "scaled": layers[-1]["scaled"]}
    return result
