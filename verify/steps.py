"""Step equivalence: every library's gradients and RMSprop updates against the float64 reference.

Each library trains its first N steps (canonical data order, dropout off) and reports, per step, the
gradient its optimizer applied and the parameters after the update. The reference recomputes each step
in float64 from the library's own parameters before that step (so a library is judged on each step's
arithmetic, not on float32 drift accumulated over earlier steps), with canonical RMSprop whose mean
square it accumulates from its own gradients.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import cifar10
from builders import resolve
from spec import experiments, training
from spec.onnx_import import import_model
from verify.compare import TOLERANCES
from spec.reference64 import Reference
from workers import Status
from workers.training import tensors_path, train_one


def load_policy() -> dict:
    return json.loads(Path(TOLERANCES).read_text())["steps"]


def _rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    norm = float(np.linalg.norm(want))
    diff = float(np.linalg.norm(got.astype(np.float64) - want))
    return diff / norm if norm else (0.0 if diff == 0 else float("inf"))


def judge(spec, tensors: dict, arrays: tuple, batches: list, optimizer: dict, policy: dict) -> dict:
    """Per step: the reference loss, and per parameter the relative L2 difference of the gradient and of
    the update (parameters after minus before the step) against the reference."""
    x_train, y_train = arrays[0], arrays[1]
    ref = Reference(spec, spec.weights)
    names = list(spec.weights)
    before = {n: spec.weights[n].astype(np.float64) for n in names}
    state, steps, first_bad = {}, [], None
    for k, idx in enumerate(batches):
        ref.params = {n: v.copy() for n, v in before.items()}
        loss, grads = ref.loss_and_grads(x_train[idx], y_train[idx])
        ref.rmsprop_step(grads, state, optimizer["lr"], optimizer["rho"], optimizer["eps"])
        rows = []
        for n in names:
            got_grad, got_param = tensors[f"grad/{k}/{n}"], tensors[f"param/{k}/{n}"]
            rows.append({"tensor": n, "grad_rel_l2": _rel_l2(got_grad, grads[n]),
                         "update_rel_l2": _rel_l2(got_param - before[n], ref.params[n] - before[n])})
        for r in rows:
            r["grad_ok"] = r["grad_rel_l2"] <= policy["grad_rel_l2"]
            r["update_ok"] = r["update_rel_l2"] <= policy["update_rel_l2"]
            if first_bad is None and not (r["grad_ok"] and r["update_ok"]):
                first_bad = {"step": k + 1, "tensor": r["tensor"],
                             "what": "gradient" if not r["grad_ok"] else "update",
                             "rel_l2": r["grad_rel_l2"] if not r["grad_ok"] else r["update_rel_l2"]}
        steps.append({"step": k + 1, "reference_loss": loss, "tensors": rows,
                      "max_grad_rel_l2": max(r["grad_rel_l2"] for r in rows),
                      "max_update_rel_l2": max(r["update_rel_l2"] for r in rows)})
        before = {n: tensors[f"param/{k}/{n}"].astype(np.float64) for n in names}
    return {"steps": steps, "first_failure": first_bad}


def run(frameworks: list, n_steps: int, mode: str, experiment_name: str = "seed-2017", data_path=None,
        timeout: float = 1800, log=sys.stderr) -> dict:
    experiment = experiments.load(experiment_name)
    spec = training.without_dropout(import_model(experiments.model_path(experiment)))
    arrays = training.datasets(cifar10.find(data_path, **training.needs(experiment)), experiment)
    batch_size = experiment["batch_size"]
    per_epoch = -(-len(arrays[0]) // batch_size)
    epochs = -(-n_steps // per_epoch)
    limit = n_steps * batch_size if epochs == 1 else None
    order = training.batch_order(len(arrays[0]), epochs, experiment["shuffle"], experiment["seed"], limit)
    config = training.config_for(experiment, epochs, batch_size, mode, threads=2, seed=experiment["seed"],
                                 dropout=False, dump_steps=n_steps)
    batches = [b for e in range(epochs) for b in [order[e][i:i + batch_size]
                                                   for i in range(0, order.shape[1], batch_size)]][:n_steps]
    policy = load_policy()
    report = {"experiment": experiment_name, "steps": n_steps, "optimizer_mode": mode, "policy": policy,
              "reference": "float64 numpy (spec/reference64.py, the op registry's math), canonical RMSprop, teacher-forced per step",
              "frameworks": {}}
    with tempfile.TemporaryDirectory(prefix="steps-") as tmp:
        job = Path(tmp)
        training.write_job(job, spec, arrays, order, config)
        for framework in frameworks:
            row = train_one(framework, resolve(framework)[1], job, epochs * per_epoch if epochs > 1 else n_steps, 2,
                            timeout, job / f"{framework}.stderr.log")
            entry = {"status": row["status"], "reason": row["reason"], "optimizer": row["record"]["optimizer"],
                     "losses": [s["loss"] for s in row["record"]["steps"][:n_steps]]}
            path = tensors_path(job, framework)
            if row["status"] == Status.OK and path.exists():
                with np.load(path) as npz:
                    tensors = {k: npz[k] for k in npz.files}
                path.unlink()
                entry.update(judge(spec, tensors, arrays, batches, experiment["optimizer"], policy))
                bad = entry["first_failure"]
                entry["status"] = "pass" if bad is None else ("departs" if mode == "native" and bad["what"] ==
                                                              "update" else "mismatch")
            elif row["status"] == Status.OK:
                entry.update(status=Status.CRASHED, reason="the trainer reported no step tensors")
            print(f"{framework:<17} {entry['status']}" + (f"  {entry['reason']}" if entry["reason"] else ""),
                  file=log, flush=True)
            report["frameworks"][framework] = entry
    report["passed"] = all(e["status"] == "pass" or (mode == "native" and e["status"] == "departs")
                           for e in report["frameworks"].values())
    return report


def table(report: dict) -> str:
    names = list(report["frameworks"])
    lines = ["| step | " + " | ".join(f"{n} grad / update" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for k in range(report["steps"]):
        cells = []
        for n in names:
            steps = report["frameworks"][n].get("steps")
            cells.append(f"{steps[k]['max_grad_rel_l2']:.1e} / {steps[k]['max_update_rel_l2']:.1e}"
                         if steps and k < len(steps) else "-")
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    p = report["policy"]
    lines.append(f"max relative L2 difference over all parameter tensors, against the float64 reference; "
                 f"tolerance: gradient {p['grad_rel_l2']:g}, update {p['update_rel_l2']:g}")
    for n, e in report["frameworks"].items():
        bad = e.get("first_failure")
        verdict = e["status"].upper()
        if bad:
            verdict += (f": first at step {bad['step']}, tensor {bad['tensor']} ({bad['what']} rel L2 "
                        f"{bad['rel_l2']:.2e})")
        elif e["reason"]:
            verdict += f": {e['reason']}"
        lines.append(f"- {n}: {verdict}")
    return "\n".join(lines)
