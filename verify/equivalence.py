"""Forward-pass equivalence: every library's builder against onnxruntime on the same inputs."""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import cifar10
from builders import select
from builders.worker import options_path
from spec import experiments
from spec.ir import ModelSpec
from spec.onnx_import import BUDGET_VARIABLE, ModelError, import_model, load_onnx, memory_budget_gib, normalized_model
from verify import reference
from verify.compare import compare, load_policy
from verify.runner import run_worker
from workers import Status, lifeline, number, results

CIFAR_SHAPE = (3, 32, 32)
# every node's output for each image is held by onnxruntime's run, the verifier's reference, two workers at a time
# (their own and the file they write) and the orchestrator's copy of the one it judges
VERIFY_COPIES = 6


def image_count(spec: ModelSpec, wanted: int) -> tuple:
    """(images to verify with, why fewer than `wanted` or ""): as many as the memory budget holds, at most
    `wanted`; ModelError when not even one image fits."""
    budget = memory_budget_gib()
    per_image = spec.activation_bytes()
    fit = int(budget * 2**30 // (VERIFY_COPIES * per_image)) if per_image else wanted
    if fit < 1:
        raise ModelError(f"{spec.source}: verifying one image needs about {VERIFY_COPIES * per_image / 2**30:,.1f} GiB "
                         f"({VERIFY_COPIES} copies of {per_image / 2**20:,.0f} MiB of activations), over the memory "
                         f"budget of {budget:g} GiB (raise it with {BUDGET_VARIABLE}=...)")
    if fit >= wanted:
        return wanted, ""
    return fit, (f"{fit} images instead of {wanted}: the activations take {per_image / 2**20:,.0f} MiB per image and "
                 f"the memory budget is {budget:g} GiB ({BUDGET_VARIABLE})")


def make_inputs(spec: ModelSpec, data_path=None) -> tuple:
    """The fixed verification batch: real CIFAR-10 test images when the model takes 3x32x32,
    else seeded random inputs of the model's own shape; as many as the memory budget holds (image_count).
    Returns (x, description)."""
    setup = experiments.load("verification")
    count, fewer = image_count(spec, setup["test_images"])
    if spec.batch_size and count >= spec.batch_size:
        count = max(spec.batch_size, count // spec.batch_size * spec.batch_size)
    if tuple(spec.input_shape) == CIFAR_SHAPE:
        data = cifar10.find(data_path, train=0, test=count)
        if len(data.x_test) < count:
            raise cifar10.DataError(f"{data.source}: has {len(data.x_test)} test images, verification needs {count}")
        fewer = f"; {fewer}" if fewer else ""
        return experiments.preprocess(data.x_test[:count], setup), f"CIFAR-10 test images 0..{count - 1} ({data.source}{fewer})"
    rng = np.random.default_rng(setup["random_input_seed"])
    x = rng.uniform(-1.0, 1.0, size=(count, *spec.input_shape)).astype(np.float32)
    return x, f"{count} seeded uniform(-1, 1) inputs of shape {tuple(spec.input_shape)}" + (f" ({fewer})" if fewer else "")


def parse_libraries(text: str | None) -> list:
    """'all', 'fast-paths' or names, comma-separated (builders.select)."""
    return select([n.strip() for n in (text or "all").split(",") if n.strip()] or ["all"])


def environment() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "reference": reference.versions()}


def run(model_path: Path, libraries: list, data_path=None, timeout: float = 900, jobs: int = 2,
        log=sys.stderr, build_options: dict | None = None) -> dict:
    """Verify each library; returns the report as plain data. Raises ModelError/DataError on bad input.
    build_options: {library: builder options} to build with beyond its fast path's (a training run's gate
    passes the options of the model each library will train)."""
    started = time.perf_counter()
    spec = import_model(model_path)
    x, inputs_desc = make_inputs(spec, data_path)
    try:
        ref = reference.layer_outputs(load_onnx(model_path), spec, x)
    except ModelError as exc:
        if not spec.notes:  # the file was read as it is: nothing else to run
            raise
        # onnxruntime has no kernels for some ops of old opsets: run the converted model the builders read
        ref = reference.layer_outputs(normalized_model(model_path), spec, x)
        inputs_desc += f"; onnxruntime ran the converted model ({str(exc).split(': ', 1)[-1][:120]})"
    report = {"model": str(model_path), "parameters": spec.parameter_count(), "inputs": inputs_desc,
              "environment": environment(), "libraries": {}, "build_options": dict(build_options or {})}
    print(f"model {model_path} ({len(spec.layers)} layers, {spec.parameter_count():,} parameters); {inputs_desc}",
          file=log, flush=True)
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        job = Path(tmp)
        spec.save(job)
        np.savez(job / "inputs.npz", x=x)
        for name, options in (build_options or {}).items():
            results.write_json(options_path(job, name), options)

        def one(library: str) -> dict:
            result = run_worker(library, job, timeout)
            row = {"status": result.status, "message": result.message, "wall_s": round(result.wall_s, 2),
                   "versions": result.info.get("versions", {})}
            missing = [layer.name for layer in spec.layers if layer.name not in result.outputs]
            if result.status == Status.OK and missing:
                row.update(status=Status.CRASHED, message=f"worker output lacks layers {', '.join(missing)}")
            elif result.status == Status.OK:
                row.update(compare(spec, result.outputs, ref, load_policy(library)))
                row["status"] = row.pop("verdict")
            with lock:
                report["libraries"][library] = row
                print(f"[{len(report['libraries'])}/{len(libraries)}] {library:<21} {row['status']:<11} "
                      f"{result.wall_s:6.1f} s" + (f"  {row['message']}" if row["message"] else ""),
                      file=log, flush=True)
            return row

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            try:
                list(pool.map(one, libraries))
            except BaseException:  # interrupted: stop the workers, or the pool would wait for them
                pool.shutdown(wait=False, cancel_futures=True)
                lifeline.stop_all()
                raise
    report["libraries"] = {f: report["libraries"][f] for f in libraries}
    report["wall_s"] = round(time.perf_counter() - started, 2)
    report["passed"] = all(r["status"] == "pass" for r in report["libraries"].values())
    return report


def table(report: dict) -> str:
    head = ("| library | verdict | max abs diff | max rel diff | argmax agree | first divergent layer | time |\n"
            "|---|---|---|---|---|---|---|")
    rows = []
    for name, r in report["libraries"].items():
        out = r.get("output") or {}
        where = r.get("first_divergent_layer")
        where_text = f"{where['name']} ({where['kind']}, scaled err {where['scaled']:.1e})" if where else "-"
        if r["status"] not in (Status.PASS, Status.MISMATCH):
            where_text = r["message"]
        agree = f"{out['argmax_agree']}/{out['samples']}" if out else "-"
        rows.append(f"| {name} | {r['status'].upper()} | {number(out.get('max_abs'), '.1e')} | "
                    f"{number(out.get('max_rel'), '.1e')} | {agree} | {where_text} | {r['wall_s']:.1f} s |")
    return "\n".join([head, *rows])

