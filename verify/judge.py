"""One judge for every library: onnxruntime evaluates each trained model (models/<name>.onnx, written from the
library's trained parameters by spec.onnx_export) on the validation images with the canonical loss, and the result
is set beside the library's own last evaluation. A library whose own figures are not what its model computes
(dropout left on, batch statistics at evaluation, another loss) differs beyond float noise and is flagged.

Float noise, from verify/tolerances.json "judge": the loss may differ by loss_rtol of the larger of the loss and 1;
the accuracy by the share of images whose two most probable classes lie within tie_margin of each other under the
judge (their prediction is a coin toss between two float32 implementations), plus one image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spec.ir import ModelSpec
from spec.training import LOSS_CLIP
from verify.compare import TOLERANCES
from workers.records import Judgement

CHUNK = 250  # images per onnxruntime call


def policy(path: Path = TOLERANCES) -> dict:
    return json.loads(Path(path).read_text())["judge"]


def probabilities(model_path: Path, spec: ModelSpec, x: np.ndarray, logits: bool) -> np.ndarray:
    """The model's class probabilities (float64) for images x (NCHW, as every library receives them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = (lambda b: np.ascontiguousarray(b.transpose(0, 2, 3, 1))) if spec.input_layout == "NHWC" else (lambda b: b)
    out = np.concatenate([session.run(None, {name: feed(x[i:i + CHUNK])})[0]
                          for i in range(0, len(x), CHUNK)]).astype(np.float64)
    if logits:
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
    return out


def evaluate(p: np.ndarray, y: np.ndarray, tie_margin: float) -> tuple:
    """(loss, accuracy, near ties) of probabilities p on labels y: the canonical mean cross-entropy with p_y clipped
    to [1e-7, 1 - 1e-7], the share of argmax hits, and how many images have their top two within tie_margin."""
    p_y = np.clip(p[np.arange(len(y)), y], LOSS_CLIP, 1 - LOSS_CLIP)
    top2 = np.sort(p, axis=1)[:, -2:]
    return (float(-np.log(p_y).mean()), float((p.argmax(axis=1) == y).mean()),
            int((top2[:, 1] - top2[:, 0] <= tie_margin).sum()))


def judge(model_path: Path, spec: ModelSpec, x: np.ndarray, y: np.ndarray, own_loss: float, own_acc: float,
          logits: bool, rules: dict | None = None) -> Judgement:
    """The judge's verdict on one trained model against the library's own last validation loss and accuracy."""
    rules = rules or policy()
    try:
        p = probabilities(model_path, spec, x, logits)
    except Exception as exc:  # noqa: BLE001  onnxruntime's errors have no common type; the verdict says it
        return Judgement("failed", f"onnxruntime cannot run {model_path.name}: {str(exc).strip().splitlines()[0]}")
    loss, acc, ties = evaluate(p, y, rules["tie_margin"])
    loss_tol = rules["loss_rtol"] * max(1.0, abs(loss))
    acc_tol = (ties + 1) / len(y)
    loss_diff, acc_diff = own_loss - loss, own_acc - acc
    off = [f"{what} {own:.4f} by its own evaluation, {theirs:.4f} by the judge (tolerance {tol:.1e})"
           for what, own, theirs, diff, tol in (("loss", own_loss, loss, loss_diff, loss_tol),
                                                ("accuracy", own_acc, acc, acc_diff, acc_tol))
           if not abs(diff) <= tol]
    return Judgement("differs" if off else "agrees", "; ".join(off), loss, acc, loss_diff, acc_diff, loss_tol, acc_tol,
                     ties)
