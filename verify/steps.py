"""Step equivalence: every library's gradients and RMSprop updates against the float64 reference.

Each library trains its first N steps (canonical data order, dropout off) and reports, per step, the
gradient its optimizer applied and the parameters after the update. The reference recomputes each step
in float64 from the library's own parameters before that step (so a library is judged on each step's
arithmetic, not on float32 drift accumulated over earlier steps), with canonical RMSprop whose mean
square it accumulates from its own gradients. Every step and every tensor is judged (see judge).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import cifar10
from builders import native_batchnorm, resolve
from spec import batchnorm, experiments, ops, training
from spec.onnx_import import import_model
from spec.reference64 import Reference
from verify.compare import TOLERANCES
from workers import Status, progress
from workers.training import tensors_path, train_one


def load_policy() -> dict:
    return json.loads(Path(TOLERANCES).read_text())["steps"]


def _rel_l2(got: np.ndarray, want: np.ndarray, floor: float = 0.0) -> float:
    """||got - want|| / ||want||, the denominator at least `floor`: a gradient that is zero but for rounding (that
    of a convolution's bias which BatchNorm's mean subtraction cancels) is judged against the floor, a small share
    of the whole step's gradient norm, not against its own rounding noise."""
    norm = max(float(np.linalg.norm(want)), floor)
    diff = float(np.linalg.norm(got.astype(np.float64) - want))
    return diff / norm if norm else (0.0 if diff == 0 else float("inf"))


def _global_norm(tensors) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64))) for t in tensors)))


def clipped(grads: dict, clip: float) -> dict:
    """tf.clip_by_global_norm: every tensor times clip / max(global norm, clip); clip 0 changes nothing."""
    if not clip:
        return grads
    scale = clip / max(_global_norm(grads.values()), clip)
    return {n: g * scale for n, g in grads.items()}


def declared_rmsprop(params: dict, grads: dict, state: dict, opt: dict) -> None:
    """One step of the RMSprop a library declares it runs (trainers.worker.Reporter.optimizer): v = rho*v +
    (1-rho)*g^2, v starting at ms_init; w -= lr*g/sqrt(v+eps), or lr*g/(sqrt(v)+eps) with eps outside."""
    for name, g in grads.items():
        v = state.setdefault(name, np.full_like(g, opt["ms_init"]))
        v *= opt["rho"]
        v += (1 - opt["rho"]) * g * g
        root = np.sqrt(v + opt["eps"]) if opt["eps_placement"] == "inside sqrt" else np.sqrt(v) + opt["eps"]
        params[name] = params[name] - opt["lr"] * g / root


CHECKS = {  # finding -> (per-tensor figure, policy bound, envelope kind)
    "gradient": ("grad_rel_l2", "grad_rel_l2", "grad"),
    "update": ("update_rel_l2", "update_rel_l2", "update"),
    "declared update": ("declared_update_rel_l2", "update_rel_l2", None),  # optimizer arithmetic only: fixed
    "running statistics": ("state_rel_l2", "state_rel_l2", "state"),
}


def bound(policy: dict, what: str, envelope: dict | None) -> float:
    """The tolerance of one figure: the policy's fixed bound, or K float32 envelopes where that is larger."""
    _, fixed, kind = CHECKS[what]
    return max(policy[fixed], policy["envelope_k"] * envelope[kind]) if envelope else policy[fixed]


def _first(steps: list, what: str, policy: dict) -> dict | None:
    """The first (step, tensor) whose figure for `what` exceeds its tolerance (NaN does too), or None."""
    key = CHECKS[what][0]
    for step in steps:
        for row in step["tensors"]:
            tol = row.get("tolerance", {}).get(what, policy[CHECKS[what][1]])
            if key in row and not row[key] <= tol:
                return {"step": step["step"], "tensor": row["tensor"], "what": what, "rel_l2": row[key],
                        "tolerance": tol}
    return None


def float32_envelopes(spec, arrays: tuple, batches: list, optimizer: dict, policy: dict, log=None) -> list:
    """Per step, {tensor: {"grad", "update", "state": relative L2 difference}}: how far float32 rounding alone
    moves the reference's gradient, RMSprop update and running statistics, i.e. the registry's math run in float32
    and in float64 from the same parameters, along the float64 reference's own trajectory (canonical RMSprop,
    the same batches). Where a model makes backward ill-conditioned (the gradient through many BatchNorm blocks),
    every float32 library departs from float64 by about this much; verify steps allows `envelope_k` of it."""
    x, y = arrays[0], arrays[1]
    ref64 = Reference(spec, spec.weights, training=True)
    ref32 = Reference(spec, spec.weights, training=True, dtype=np.float32)
    names, state_names = _parameter_names(spec)
    state64, state32, found = {}, {}, []
    for k, idx in enumerate(batches):
        if log:
            print(f"float32 envelope: step {k + 1}/{len(batches)}", file=log, flush=True)
        ref32.params = {n: v.astype(np.float32) for n, v in ref64.params.items()}
        before = {n: v.copy() for n, v in ref64.params.items()}
        _, g64, moved64 = ref64.loss_grads_state(x[idx], y[idx])
        _, g32, moved32 = ref32.loss_grads_state(x[idx], y[idx])
        zero, floors = _zero_gradients(g64, policy), _floors(g64, policy)
        ref64.rmsprop_step(g64, state64, optimizer["lr"], optimizer["rho"], optimizer["eps"])
        ref32.rmsprop_step(g32, state32, optimizer["lr"], optimizer["rho"], optimizer["eps"])
        # a tensor whose gradient is zero but for rounding has no update envelope: RMSprop scales its rounding noise
        # to lr-sized updates in both; its update is judged against RMSprop of the library's own gradient (judge)
        step = {n: {"grad": _rel_l2(g32[n], g64[n], floors[n]),
                    "update": _rel_l2(ref32.params[n] - before[n], ref64.params[n] - before[n])
                    if n not in zero else 0.0} for n in names}
        step.update({n: {"state": _rel_l2(moved32[n] - before[n], moved64[n] - before[n])} for n in state_names})
        ref64.params.update(moved64)
        found.append(step)
    return found


def float32_loss_drift(spec, data, batches: list, optimizer: dict) -> list:
    """Per step, |loss in float32 - loss in float64| / loss in float64 of the reference's math trained freely (each
    from its own parameters and running statistics, canonical RMSprop) on `batches` of TrainingData `data` (its
    images as the run's libraries see them): how far float32 rounding alone moves a training run's step losses, what
    the libraries' step losses may differ by (cli.train's step agreement allows step_loss_envelope_k of it). Dropout
    is the identity."""
    refs = [Reference(spec, spec.weights, training=True, dtype=d) for d in (np.float64, np.float32)]
    states, drift = [{}, {}], []
    for idx in batches:
        x, y = data.images(0, idx), data.y_train[idx]
        losses = []
        for ref, state in zip(refs, states):
            loss, grads, moved = ref.loss_grads_state(x, y)
            ref.rmsprop_step(grads, state, optimizer["lr"], optimizer["rho"], optimizer["eps"])
            ref.params.update({n: v.astype(ref.dtype) for n, v in moved.items()})
            losses.append(loss)
        drift.append(abs(losses[1] - losses[0]) / abs(losses[0]))
    return drift


def judge(spec, tensors: dict, arrays: tuple, batches: list, optimizer: dict, policy: dict,
          declared: dict | None = None, envelopes: list | None = None) -> dict:
    """Every step and every parameter tensor of one library against the float64 reference, teacher-forced:
    the reference starts each step from the library's own parameters. `envelopes` (float32_envelopes): each figure's
    tolerance is the policy's, or envelope_k times its float32 envelope where larger. Per trainable tensor, the relative L2
    difference of the gradient the library applied, and of its update (parameters after minus before the step)
    from canonical RMSprop's; with `declared` (native mode: the RMSprop the library reports it runs), the reference
    gradient is clipped as declared before it is compared, and the update is also compared with that RMSprop
    applied to the library's own gradients (the optimizer judged apart from the gradient). Per state tensor
    (BatchNorm's running mean and variance, which no optimizer moves), the relative L2 difference of how far the
    step moved it from how far ONNX's training-mode BatchNorm moves it."""
    x_train, y_train = arrays[0], arrays[1]
    ref = Reference(spec, spec.weights, training=True)
    names, state_names = _parameter_names(spec)
    before = {n: spec.weights[n].astype(np.float64) for n in names + state_names}
    missing = [n for n in state_names if f"param/0/{n}" not in tensors]
    if missing:
        return {"status": "mismatch", "steps": [], "first_failure": {
            "step": 1, "tensor": missing[0], "what": "running statistics", "rel_l2": float("inf"),
            "tolerance": policy["state_rel_l2"]},
            "reason": f"the trainer reported no running statistics ({missing[0]} and {len(missing) - 1} more)"}
    clip = declared.get("grad_clip_norm", 0.0) if declared else 0.0
    canonical_state, declared_state, own_state, steps = {}, {}, {}, []
    canonical_rmsprop = {**training.CANONICAL_RMSPROP, **{k: optimizer[k] for k in ("lr", "rho", "eps")}}
    for k, idx in enumerate(batches):
        ref.params = {n: v.copy() for n, v in before.items()}
        loss, grads, moved = ref.loss_grads_state(x_train[idx], y_train[idx])
        ref.rmsprop_step(grads, canonical_state, optimizer["lr"], optimizer["rho"], optimizer["eps"])
        got_grads = {n: tensors[f"grad/{k}/{n}"] for n in names}
        declared_params = None
        if declared:
            declared_params = {n: before[n] for n in names}
            own = clipped({n: g.astype(np.float64) for n, g in got_grads.items()}, clip)
            declared_rmsprop(declared_params, own, declared_state, declared)
        after = {n: tensors[f"param/{k}/{n}"].astype(np.float64) for n in names + state_names}
        want = clipped(grads, clip)
        zero = _zero_gradients(want, policy)
        # a tensor whose reference gradient is zero but for rounding: RMSprop scales the library's rounding noise
        # up to updates of its own, so its update is judged as canonical RMSprop of the library's own gradient
        own_params = {n: before[n] for n in names}
        declared_rmsprop(own_params, {n: g.astype(np.float64) for n, g in got_grads.items()}, own_state,
                         canonical_rmsprop)
        canonical = {n: own_params[n] if n in zero else ref.params[n] for n in names}
        rows = _rows(names, got_grads, want, before, after, canonical, declared_params, _floors(want, policy))
        rows += [{"tensor": n, "state_rel_l2": _rel_l2(after[n] - before[n], moved[n] - before[n])} for n in state_names]
        if envelopes:
            for row in rows:
                row["envelope"] = env = envelopes[k][row["tensor"]]
                row["tolerance"] = {what: bound(policy, what, env) for what, (key, _, kind) in CHECKS.items()
                                    if key in row and kind in env}
        steps.append({"step": k + 1, "reference_loss": loss, "tensors": rows,
                      "grad_norm": _global_norm(got_grads.values()), "reference_grad_norm": _global_norm(grads.values()),
                      **{f"max_{key}": max(r[key] for r in rows if key in r) for key, _, _ in CHECKS.values()
                         if any(key in r for r in rows)}})
        before = after
    return {"steps": steps, **verdict(steps, policy, native=declared is not None)}


def _parameter_names(spec) -> tuple:
    """(trainable parameters, state tensors) of the spec, each in the spec's order."""
    names, state = [], []
    for name in spec.weights:
        node, param = name.rsplit(".", 1)
        (names if ops.trainable(spec.node(node).kind, param) else state).append(name)
    return names, state


def _zero_gradients(grads: dict, policy: dict) -> set:
    """The tensors whose reference gradient is below zero_floor of the step's global gradient norm: zero but for
    rounding (a convolution's bias before BatchNorm: a float32 sum of up to 131,072 values per channel that cancels
    to zero)."""
    floor = policy["zero_floor"] * _global_norm(grads.values())
    return {n for n, g in grads.items() if np.linalg.norm(g) < floor}


def _floors(grads: dict, policy: dict) -> dict:
    """{tensor: the least denominator of its gradient's relative difference}: zero_floor of the step's global
    gradient norm, or zero_scale of it for a gradient that is zero but for rounding (_zero_gradients)."""
    total, zero = _global_norm(grads.values()), _zero_gradients(grads, policy)
    return {n: policy["zero_scale" if n in zero else "zero_floor"] * total for n in grads}


def _rows(names, got_grads, want_grads, before, after, canonical, declared, floors: dict) -> list:
    """Per tensor: the gradient's and the update's relative L2 differences (see judge); `floors`: the least
    denominator of each gradient's (_floors)."""
    rows = []
    for n in names:
        update = after[n] - before[n]
        row = {"tensor": n, "grad_rel_l2": _rel_l2(got_grads[n], want_grads[n], floors[n]),
               "update_rel_l2": _rel_l2(update, canonical[n] - before[n])}
        if declared is not None:
            row["declared_update_rel_l2"] = _rel_l2(update, declared[n] - before[n])
        rows.append(row)
    return rows


def verdict(steps: list, policy: dict, native: bool) -> dict:
    """Any gradient off -> "mismatch". Canonical mode: any update off -> "mismatch". Native mode: an update off
    from the declared RMSprop -> "mismatch" (the library does not run what its row says), else an update off
    from canonical -> "departs". The first (step, tensor) of each kind is reported on its own."""
    found = {what: _first(steps, what, policy) for what in CHECKS if native or what != "declared update"}
    decisive = ("gradient", "running statistics", "declared update") if native else ("gradient", "running statistics",
                                                                                      "update")
    failure = next((found[what] for what in decisive if found[what]), None)
    return {"status": "mismatch" if failure else "departs" if found["update"] else "pass", "first_failure": failure,
            "first_gradient_failure": found["gradient"], "first_update_departure": found["update"],
            "first_state_failure": found["running statistics"],
            **({"first_declared_mismatch": found["declared update"]} if native else {})}


def run(libraries: list, n_steps: int, mode: str, experiment_name: str = "seed-2017", data_path=None,
        timeout: float = 1800, log=sys.stderr, model=None, batchnorm_mode: str = "canonical",
        shown: str = "auto") -> dict:
    """`model`: an ONNX file to train in place of the experiment's (same input shape and classes). batchnorm_mode
    (spec.batchnorm.MODES): each library is judged against the reference with the BatchNorm semantics it was asked
    to train (its native momentum, epsilon or running-variance estimator where the mode says), so a pass in a native
    mode shows the library does what its native row declares. `shown`: workers.progress.MODES."""
    experiment = experiments.load(experiment_name)
    spec = training.without_dropout(import_model(model or experiments.model_path(experiment)))
    arrays = training.datasets(cifar10.find(data_path, **training.needs(experiment)), experiment)
    batch_size = experiment["batch_size"]
    per_epoch = -(-len(arrays[0]) // batch_size)
    epochs = -(-n_steps // per_epoch)
    limit = n_steps * batch_size if epochs == 1 else None
    order = training.batch_order(len(arrays[0]), epochs, experiment["shuffle"], experiment["seed"], limit)
    config = training.config_for(experiment, epochs, batch_size, mode, threads=2, seed=experiment["seed"],
                                 dropout=False, dump_steps=n_steps, batchnorm=batchnorm_mode)
    batches = [b for e in range(epochs) for b in [order[e][i:i + batch_size]
                                                   for i in range(0, order.shape[1], batch_size)]][:n_steps]
    policy = load_policy()
    envelopes = float32_envelopes(spec, arrays, batches, experiment["optimizer"], policy, log)
    report = {"experiment": experiment_name, "steps": n_steps, "optimizer_mode": mode, "policy": policy,
              "batchnorm_mode": batchnorm_mode,
              "reference": "float64 numpy (spec/reference64.py, the op registry's math), canonical RMSprop (native "
                           "mode: also the RMSprop each library declares), teacher-forced per step",
              "libraries": {}}
    with tempfile.TemporaryDirectory(prefix="steps-") as tmp:
        job = Path(tmp)
        training.write_job(job, spec, arrays, order, config)
        for library in libraries:
            work = progress.Work(epochs * per_epoch if epochs > 1 else n_steps, epochs, len(order[0]))
            row = train_one(library, resolve(library)[1], job, 2, timeout, job / f"{library}.stderr.log",
                            progress.training(shown, library, work, log))
            entry = {"status": row["status"], "reason": row["reason"], "optimizer": row["record"]["optimizer"],
                     "losses": [s["loss"] for s in row["record"]["steps"][:n_steps]]}
            path = tensors_path(job, library)
            if row["status"] == Status.OK and mode == "native" and not entry["optimizer"]:
                entry.update(status=Status.CRASHED, reason="the trainer reported no optimizer")
            elif row["status"] == Status.OK and path.exists():
                with np.load(path) as npz:
                    tensors = {k: npz[k] for k in npz.files}
                path.unlink()
                declared = entry["optimizer"] if mode == "native" else None
                trained = batchnorm.semantics(spec, native_batchnorm(library), batchnorm_mode)
                entry["batchnorm"] = batchnorm.departures(spec, trained)
                entry.update(judge(trained, tensors, arrays, batches, experiment["optimizer"], policy, declared,
                                   envelopes))
            elif row["status"] == Status.OK:
                entry.update(status=Status.CRASHED, reason="the trainer reported no step tensors")
            print(f"{library:<17} {entry['status']}" + (f"  {entry['reason']}" if entry["reason"] else ""),
                  file=log, flush=True)
            report["libraries"][library] = entry
    report["passed"] = all(e["status"] == "pass" or (mode == "native" and e["status"] == "departs")
                           for e in report["libraries"].values())
    return report


def table(report: dict) -> str:
    names = list(report["libraries"])
    lines = ["| step | " + " | ".join(f"{n} grad / update" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for k in range(report["steps"]):
        cells = []
        for n in names:
            steps = report["libraries"][n].get("steps")
            cells.append(f"{steps[k]['max_grad_rel_l2']:.1e} / {steps[k]['max_update_rel_l2']:.1e}"
                         if steps and k < len(steps) else "-")
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    p = report["policy"]
    lines.append(f"max relative L2 difference over all parameter tensors, against the float64 reference with "
                 f"canonical RMSprop; tolerance per tensor and step: gradient {p['grad_rel_l2']:g}, update "
                 f"{p['update_rel_l2']:g}, or {p['envelope_k']:g} times what float32 rounding alone moves the "
                 f"reference's own (its float32 envelope) where larger")
    for n, e in report["libraries"].items():
        lines += verdict_lines(n, e, report["optimizer_mode"])
        if e.get("batchnorm"):
            lines.append("  - trains BatchNorm with " + "; ".join(e["batchnorm"]))
    return "\n".join(lines)


def _at(finding: dict) -> str:
    return (f"step {finding['step']}, tensor {finding['tensor']} ({finding['what']} rel L2 {finding['rel_l2']:.2e}, "
            f"tolerance {finding['tolerance']:.1e})")


def declared_text(opt: dict) -> str:
    """The RMSprop a library reports it runs, in one phrase."""
    text = (f"{opt['impl']}: lr {opt['lr']:g}, rho {opt['rho']:g}, eps {opt['eps']:g} {opt['eps_placement']}, "
            f"mean square from {opt['ms_init']:g}")
    return text + (f", gradients clipped to global norm {opt['grad_clip_norm']:g}" if opt.get("grad_clip_norm") else "")


def verdict_lines(name: str, e: dict, mode: str) -> list:
    """One library's verdict: the decisive finding first, then every other kind of finding on its own line."""
    head = e.get("first_failure") or e.get("first_update_departure")
    text = f"- {name}: {e['status'].upper()}"
    if head:
        text += f": first at {_at(head)}"
        if head["what"] == "gradient":
            step = e["steps"][head["step"] - 1]
            text += f"; global gradient norm {step['grad_norm']:.4g}, reference {step['reference_grad_norm']:.4g}"
    elif e["reason"]:
        text += f": {e['reason']}"
    lines = [text]
    if mode == "native" and e.get("optimizer"):
        lines.append(f"  - runs {declared_text(e['optimizer'])}")
    others = (("first_gradient_failure", "gradient off"), ("first_state_failure", "running statistics off"),
              ("first_update_departure", "update departs from canonical"),
              ("first_declared_mismatch", "update off from the declared RMSprop"))
    for key, label in others:
        found = e.get(key)
        if found and found != head:
            lines.append(f"  - {label}: first at {_at(found)}")
    return lines
