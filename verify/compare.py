"""The comparator: a library's per-node outputs against onnxruntime's, judged by the policy.

Every node is judged by its scaled error, max|library - onnxruntime| / max|onnxruntime|, against a bound:
K times the node's float32 error envelope (`envelopes`: what float32 arithmetic does to this node of this
graph, measured against the float64 reference) or, where there is no envelope, the fixed `layer_scaled_tol`.
Outputs are read one node at a time from any mapping (a dict, an open npz, `verify.reference.NodeStore`) and
released once judged. Results are plain dicts of numbers and strings, ready for JSON.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from builders import NAMES, resolve
from workers import Status

TOLERANCES = Path(__file__).with_name("tolerances.json")
EPS32 = float(np.finfo(np.float32).eps)
CHUNK_ELEMENTS = 2**22  # layer_error's float64 difference: at most this many elements at a time


def load_policy(library: str | None = None, path: Path = TOLERANCES) -> dict:
    """The policy, with the library's own entry (`per_library`) over it; a fast path gets its base library's
    entry, then its own."""
    doc = json.loads(Path(path).read_text())
    policy, own = dict(doc["policy"]), doc.get("per_library", {})
    if library in NAMES:
        policy.update(own.get(resolve(library)[0], {}))
    policy.update(own.get(library or "", {}))
    return policy


def envelope_floor(policy: dict) -> float:
    return policy["envelope_floor_eps"] * EPS32


def envelopes(spec, errors: dict | None, policy: dict) -> tuple:
    """({node: its envelope, or None where the fixed bound judges it}, a note saying where and why the fixed bound
    is used, "" when nowhere). errors: verify.reference.float32_errors, None when the float64 reference could not
    run. A node where onnxruntime departs from the float64 reference by far more than float32 rounding of its
    inputs explains (`envelope_departure`) has no envelope, nor has any node that reads it: there the two
    references disagree on what the op computes, and the fixed bound judges."""
    if errors is None:
        return {node.name: None for node in spec.layers}, ""
    floor, departed, found, note = envelope_floor(policy), set(), {}, ""
    for node in spec.layers:
        measured, propagated = errors[node.name]
        explained = policy["envelope_departure"] * max(propagated, floor)
        if any(t in departed for t in node.inputs) or not measured <= explained or not math.isfinite(propagated):
            departed.add(node.name)
            found[node.name] = None
            note = note or (f"the float64 reference departs from onnxruntime at {node.name} ({node.kind}): scaled "
                            f"{measured:.1e} where float32 rounding explains {propagated:.1e}")
            continue
        found[node.name] = max(measured, propagated, floor)
    if note:
        note += f"; {len(departed)} node(s) from there are judged by the fixed bound {policy['layer_scaled_tol']:g}"
    return found, note


def layer_error(got: np.ndarray, ref: np.ndarray) -> dict:
    if got.shape != ref.shape:
        return {"shape": list(got.shape), "ref_shape": list(ref.shape), "max_abs": None, "scaled": float("inf")}
    if not ref.size:
        return {"max_abs": 0.0, "scaled": 0.0}
    step = max(1, CHUNK_ELEMENTS // (ref.size // len(ref)))  # images at a time, so float64 copies stay small
    diffs = [np.abs(got[i:i + step].astype(np.float64) - ref[i:i + step]).max() for i in range(0, len(ref), step)]
    max_abs, scale = float(np.max(diffs)), float(np.abs(ref).max())  # np.max: a NaN anywhere stays NaN
    return {"max_abs": max_abs, "scaled": max_abs / (scale or 1.0)}


def judge_layer(got: np.ndarray, ref: np.ndarray, envelope: float | None, policy: dict) -> dict:
    """The node's error, the bound it is judged by and, in words, whether it is within numerics."""
    err = layer_error(got, ref)
    if envelope is None:
        bound = policy["layer_scaled_tol"]
        within = err["scaled"] <= bound
        err.update(bound=bound, envelope=None, envelopes=None,
                   numerics="within the fixed bound" if within else "over the fixed bound")
        return err
    bound, ratio = policy["envelope_k"] * envelope, err["scaled"] / envelope
    within = err["scaled"] <= bound
    err.update(bound=bound, envelope=envelope, envelopes=ratio,
               numerics="within numerics" if within else f"{ratio:.2g} envelopes off")
    return err


def diverges(err: dict) -> bool:
    return not err["scaled"] <= err["bound"]  # NaN diverges


def output_stats(got: np.ndarray, ref: np.ndarray, policy: dict, envelope: float | None = None) -> dict:
    """allclose and argmax agreement of the graph output. With an envelope, atol is at least K envelopes of the
    output (absolute) and a top-2 margin is decided only beyond twice that: an output that float32 cannot settle
    (a softmax of logits that tie within their float32 error) is not held to a bound float32 cannot meet."""
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(got64 - ref64)
    numerics = policy["envelope_k"] * envelope * float(np.abs(ref64).max()) if envelope is not None else 0.0
    atol, margin = max(policy["output_atol"], numerics), max(policy["argmax_min_margin"], 2 * numerics)
    rel = diff / np.maximum(np.abs(ref64), np.finfo(np.float32).tiny)
    allclose = bool(np.all(diff <= atol + policy["output_rtol"] * np.abs(ref64)))
    flat_ref, flat_got = ref64.reshape(len(ref64), -1), got64.reshape(len(got64), -1)
    agree = flat_ref.argmax(1) == flat_got.argmax(1)
    top2 = np.sort(flat_ref, axis=1)[:, -2:] if flat_ref.shape[1] > 1 else np.zeros((len(flat_ref), 2))
    decided = (top2[:, 1] - top2[:, 0]) > margin
    return {
        "max_abs": float(diff.max()), "max_rel": float(rel.max()), "allclose": allclose,
        "argmax_agree": int(agree.sum()), "samples": int(len(agree)),
        "argmax_disagree_decided": int((~agree & decided).sum()), "atol": atol, "argmax_margin": margin,
    }


def compare(spec, got, ref, policy: dict, envelope: dict | None = None) -> dict:
    """Verdict 'pass' or 'mismatch', the output statistics and the first divergent node in graph order.
    got, ref: {node name: array} mappings, each node read once; envelope: {node: envelope or None}
    (`envelopes`), None to judge every node by the fixed bound."""
    envelope = envelope or {}
    layers, first, out, last = [], None, None, spec.output()
    for node in spec.layers:
        g, r = np.asarray(got[node.name]), np.asarray(ref[node.name])
        err = {"name": node.name, "kind": node.kind, **judge_layer(g, r, envelope.get(node.name), policy)}
        if node is last and "shape" not in err:
            out = output_stats(g, r, policy, envelope.get(node.name))
        del g, r
        layers.append(err)
        if first is None and diverges(err):
            first = err
    ok = first is None and out is not None and out["allclose"] and out["argmax_disagree_decided"] == 0
    result = {"verdict": Status.PASS if ok else Status.MISMATCH, "output": out, "layers": layers, "policy": policy,
              "first_divergent_layer": None}
    if first is not None:
        keys = ("name", "kind", "scaled", "bound", "envelopes", "numerics", "shape", "ref_shape")
        result["first_divergent_layer"] = {k: first[k] for k in keys if first.get(k) is not None}
    elif not ok:
        why = "output not allclose" if not out["allclose"] else \
            f"output argmax differs on {out['argmax_disagree_decided']} decided input(s)"
        result["first_divergent_layer"] = {"name": last.name, "kind": last.kind, "scaled": layers[-1]["scaled"],
                                           "bound": layers[-1]["bound"], "numerics": why}
    return result
