"""Forward-pass equivalence: every library's builder against onnxruntime on the same inputs."""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import cifar10
from builders import select
from builders.worker import options_path
from spec import experiments, flops
from spec.ir import ModelSpec
from spec.onnx_import import BUDGET_VARIABLE, ModelError, import_model, load_onnx, memory_budget_gib, normalized_model
from verify import compare, reference
from verify.compare import load_policy
from verify.runner import run_worker
from workers import Status, first_line, lifeline, number, results

CIFAR_SHAPE = (3, 32, 32)
# what verifying holds (measured: README, 'Memory and time'). Per image, in copies of one image's activations
# (every node's output): each worker holds its library's outputs for every image while it writes them; the
# orchestrator reads one node at a time, a library's and onnxruntime's, for each worker it judges. Besides, the
# weights: the orchestrator's (the spec's, onnxruntime's, the float64 reference's node at a time) and each
# worker's (the spec's and the library's).
WORKER_COPIES = 2
JUDGED_NODE_COPIES = 2
ORCHESTRATOR_WEIGHT_COPIES = 3
WORKER_WEIGHT_COPIES = 2


class InputsError(ValueError):
    """The user's --inputs file cannot be used: one line naming the file and what is wrong."""


def image_count(spec: ModelSpec, wanted: int, workers: int = 2) -> tuple:
    """(images to verify with, why fewer than `wanted` or ""): as many as the memory budget holds with `workers`
    libraries verified at once, at most `wanted`; ModelError when not even one image fits."""
    budget = memory_budget_gib() * 2**30
    per_image, weights = spec.activation_bytes(), 4 * spec.parameter_count()
    largest = 4 * max((math.prod(n.output_shape) for n in spec.layers), default=0)
    held = workers * (WORKER_COPIES * per_image + JUDGED_NODE_COPIES * largest)
    fixed = weights * (ORCHESTRATOR_WEIGHT_COPIES + workers * WORKER_WEIGHT_COPIES)
    fit = int((budget - fixed) // held) if held else wanted
    what = (f"{workers} worker(s) at once, each holding {WORKER_COPIES} copies of {per_image / 2**20:,.0f} MiB of "
            f"activations per image, beside {fixed / 2**30:,.1f} GiB of weights")
    if fit < 1:
        more = " or verify one library at a time (--jobs 1)" if workers > 1 else ""
        raise ModelError(f"{spec.source}: verifying one image needs about {(fixed + held) / 2**30:,.1f} GiB ({what}), "
                         f"over the memory budget of {budget / 2**30:g} GiB (raise it with {BUDGET_VARIABLE}=...{more})")
    if fit >= wanted:
        return wanted, ""
    return fit, (f"{fit} images instead of {wanted}: {what}, and the memory budget is {budget / 2**30:g} GiB "
                 f"({BUDGET_VARIABLE})")


def _whole_batches(spec: ModelSpec, count: int) -> int:
    """count, cut to whole batches when the model's batch dimension is fixed (and count holds one)."""
    if spec.batch_size and count >= spec.batch_size:
        return max(spec.batch_size, count // spec.batch_size * spec.batch_size)
    return count


def make_inputs(spec: ModelSpec, data_path=None, workers: int = 2) -> tuple:
    """The fixed verification batch: real CIFAR-10 test images when the model takes 3x32x32,
    else seeded random inputs of the model's own shape; as many as the memory budget holds (image_count).
    Returns (x, description)."""
    setup = experiments.load("verification")
    count, fewer = image_count(spec, setup["test_images"], workers)
    count = _whole_batches(spec, count)
    if tuple(spec.input_shape) == CIFAR_SHAPE:
        data = cifar10.find(data_path, train=0, test=count)
        if len(data.x_test) < count:
            raise cifar10.DataError(f"{data.source}: has {len(data.x_test)} test images, verification needs {count}")
        fewer = f"; {fewer}" if fewer else ""
        return experiments.preprocess(data.x_test[:count], setup), f"CIFAR-10 test images 0..{count - 1} ({data.source}{fewer})"
    rng = np.random.default_rng(setup["random_input_seed"])
    x = rng.uniform(-1.0, 1.0, size=(count, *spec.input_shape)).astype(np.float32)
    return x, f"{count} seeded uniform(-1, 1) inputs of shape {tuple(spec.input_shape)}" + (f" ({fewer})" if fewer else "")


def load_inputs(path, spec: ModelSpec, workers: int = 2) -> tuple:
    """The user's inputs: the array named after the model's input (spec.input_name) in the npz at `path`, its
    header checked before any data is read, then its first rows, as many as the memory budget holds.
    Returns (x as float32, description); InputsError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputsError(f"--inputs {path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            member = _input_member(archive, path, spec.input_name)
            with archive.open(member) as stream:
                shape, dtype = _input_header(stream, path, spec)
                count, fewer = image_count(spec, shape[0], workers)
                count = _whole_batches(spec, count)
                x = _read_rows(stream, path, spec.input_name, (count, *shape[1:]), dtype)
    except (InputsError, ModelError):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file, whatever the damage: one line
        raise InputsError(f"--inputs {path}: not a readable npz ({type(exc).__name__}: {first_line(exc)})") from None
    if not np.isfinite(x).all():
        raise InputsError(f"--inputs {path}: array {spec.input_name!r} holds NaN or infinite values")
    note = f" ({dtype} read as float32)" if dtype != np.float32 else ""
    if spec.input_layout == "NHWC":  # the file holds what the ONNX graph takes; every library gets NCHW
        x, note = np.ascontiguousarray(x.transpose(0, 3, 1, 2)), note + " (NHWC, handed to the libraries as NCHW)"
    return x.astype(np.float32), f"{count} inputs {spec.input_name!r} from {path}{note}" + (f" ({fewer})" if fewer else "")


def _input_member(archive: zipfile.ZipFile, path: Path, name: str) -> str:
    names = [n.removesuffix(".npy") for n in archive.namelist()]
    if name not in names:
        raise InputsError(f"--inputs {path}: no array {name!r} (the model's input); it holds "
                          f"{', '.join(map(repr, names)) or 'no arrays'}")
    return name + ".npy" if name + ".npy" in archive.namelist() else name


def _input_header(stream, path: Path, spec: ModelSpec) -> tuple:
    """(shape, dtype) from the .npy header, refused unless [N, *input_shape] floats in C order, N >= 1."""
    version = np.lib.format.read_magic(stream)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
    shape, fortran, dtype = read(stream)
    c, h, w = spec.input_shape if spec.input_layout == "NHWC" else (0, 0, 0)
    model_shape = (h, w, c) if spec.input_layout == "NHWC" else tuple(spec.input_shape)  # as the graph takes it
    want = f"[N, {', '.join(map(str, model_shape))}]"
    name = spec.input_name
    if dtype.kind != "f":
        raise InputsError(f"--inputs {path}: array {name!r} is {dtype}; the model takes floating-point {want}")
    if len(shape) != 1 + len(model_shape) or tuple(shape[1:]) != model_shape:
        raise InputsError(f"--inputs {path}: array {name!r} has shape {list(shape)}; the model takes {want}")
    if shape[0] < 1:
        raise InputsError(f"--inputs {path}: array {name!r} holds no inputs (shape {list(shape)})")
    if fortran:
        raise InputsError(f"--inputs {path}: array {name!r} is stored in Fortran order; save it in C order "
                          f"(numpy.ascontiguousarray)")
    if spec.batch_size and shape[0] < spec.batch_size:
        raise InputsError(f"--inputs {path}: array {name!r} holds {shape[0]} inputs; the model's batch is fixed at "
                          f"{spec.batch_size}")
    return tuple(shape), dtype


def _read_rows(stream, path: Path, name: str, shape: tuple, dtype) -> np.ndarray:
    """The first shape[0] rows of an array whose data `stream` is at, reading no more of it."""
    out = np.empty(shape, dtype)
    flat = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(flat):
        got = stream.readinto(flat[done:done + (16 << 20)])
        if not got:
            raise InputsError(f"--inputs {path}: array {name!r} ends after {done} of {len(flat)} bytes; the file is "
                              f"truncated")
        done += got
    return out


def parse_libraries(text: str | None) -> list:
    """'all', 'fast-paths' or names, comma-separated (builders.select)."""
    return select([n.strip() for n in (text or "all").split(",") if n.strip()] or ["all"])


def environment() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "reference": reference.versions()}


def run(model_path: Path, libraries: list, data_path=None, timeout: float = 900, jobs: int = 2,
        log=sys.stderr, build_options: dict | None = None, inputs_path=None) -> dict:
    """Verify each library; returns the report as plain data. Raises ModelError/DataError/InputsError on bad
    input. build_options: {library: builder options} to build with beyond its fast path's (a training run's gate
    passes the options of the model each library will train). inputs_path: the user's npz of inputs (load_inputs)
    instead of the fixed verification batch."""
    started = time.perf_counter()
    spec = import_model(model_path)
    workers = max(1, min(jobs, len(libraries)))
    if inputs_path is not None:
        x, inputs_desc = load_inputs(inputs_path, spec, workers)
    else:
        x, inputs_desc = make_inputs(spec, data_path, workers)
    report = {"model": str(model_path), "parameters": spec.parameter_count(), "inputs": inputs_desc,
              "environment": environment(), "libraries": {}, "build_options": dict(build_options or {})}
    print(f"model {model_path} ({len(spec.layers)} layers, {spec.parameter_count():,} parameters); {inputs_desc}",
          file=log, flush=True)
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        job = Path(tmp)
        ref, converted = onnxruntime_outputs(model_path, spec, x, job / "onnxruntime")
        report["inputs"] += converted
        envelope, report["envelope"] = numerics(spec, x, ref, log)
        spec.save(job)
        np.savez(job / "inputs.npz", x=x)
        del x  # the workers read it from the job folder
        for name, options in (build_options or {}).items():
            results.write_json(options_path(job, name), options)
        report["libraries"] = _verify_all(spec, libraries, job, ref, envelope, timeout, workers, log)
    report["wall_s"] = round(time.perf_counter() - started, 2)
    report["passed"] = all(r["status"] == "pass" for r in report["libraries"].values())
    return report


def onnxruntime_outputs(model_path: Path, spec: ModelSpec, x: np.ndarray, folder: Path) -> tuple:
    """(onnxruntime's output of every node, written to `folder` and read one node at a time; a note for the
    inputs' description, "" unless onnxruntime ran the converted model)."""
    try:
        return reference.write_layer_outputs(load_onnx(model_path), spec, x, folder), ""
    except ModelError as exc:
        if not spec.notes:  # the file was read as it is: nothing else to run
            raise
        # onnxruntime has no kernels for some ops of old opsets: run the converted model the builders read
        store = reference.write_layer_outputs(normalized_model(model_path), spec, x, folder)
        return store, f"; onnxruntime ran the converted model ({str(exc).split(': ', 1)[-1][:120]})"


def envelope_images(spec: ModelSpec, available: int, policy: dict) -> int:
    """Images the float64 reference measures the envelope on: as many as `envelope_gflop` of float64 work
    allows (two forward passes per image), at least 1, at most all."""
    per_image = 2 * max(1, flops.model_flops(spec)["forward"])
    return max(1, min(available, int(policy["envelope_gflop"] * 1e9 // per_image)))


def numerics(spec: ModelSpec, x: np.ndarray, ref, log=sys.stderr) -> tuple:
    """({node: its float32 error envelope, or None where the fixed bound judges}, the report's account of it).
    The fixed bound judges every node when the float64 reference cannot run the model."""
    policy = load_policy()
    count, started = envelope_images(spec, len(x), policy), time.perf_counter()
    try:
        errors, reason = reference.float32_errors(spec, x[:count], ref), ""
    except Exception as exc:  # noqa: BLE001 - whatever the float64 reference cannot do, the fixed bound judges
        errors, count = None, 0
        reason = (f"the float64 reference cannot run this model ({type(exc).__name__}: {first_line(exc)}); every "
                  f"node is judged by the fixed bound {policy['layer_scaled_tol']:g}")
    found, departed = compare.envelopes(spec, errors, policy)
    wall = round(time.perf_counter() - started, 2)
    account = {"reference": "float64 (spec.ops)", "images": count, "of_images": len(x), "wall_s": wall,
               "k": policy["envelope_k"], "floor": compare.envelope_floor(policy), "note": reason or departed}
    print(f"float32 error envelope of every node from the float64 reference on {count} of {len(x)} inputs "
          f"({wall:.1f} s)" + (f"; {account['note']}" if account["note"] else ""), file=log, flush=True)
    return found, account


def _verify_all(spec: ModelSpec, libraries: list, job: Path, ref, envelope: dict, timeout: float, workers: int,
                log) -> dict:
    """{library: its row}, `workers` libraries at a time, in the order given."""
    rows, lock = {}, threading.Lock()

    def one(library: str) -> dict:
        row = _verify_one(spec, library, job, ref, envelope, timeout)
        with lock:
            rows[library] = row
            print(f"[{len(rows)}/{len(libraries)}] {library:<21} {row['status']:<11} {row['wall_s']:6.1f} s"
                  + (f"  {row['message']}" if row["message"] else ""), file=log, flush=True)
        return row

    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            list(pool.map(one, libraries))
        except BaseException:  # interrupted: stop the workers, or the pool would wait for them
            pool.shutdown(wait=False, cancel_futures=True)
            lifeline.stop_all()
            raise
    return {name: rows[name] for name in libraries}


def _verify_one(spec: ModelSpec, library: str, job: Path, ref, envelope: dict, timeout: float) -> dict:
    """One library's row: its worker's outputs judged node by node against onnxruntime's."""
    result = run_worker(library, job, timeout)
    try:
        missing = [layer.name for layer in spec.layers if layer.name not in result.outputs]
        if result.status == Status.OK and missing:
            result = dataclasses.replace(result, status=Status.CRASHED,
                                         message=f"worker output lacks layers {', '.join(missing)}")
        row = {"status": result.status, "message": result.message, "wall_s": round(result.wall_s, 2),
               "versions": result.info.get("versions", {})}
        if result.status == Status.OK:
            try:
                row.update(compare.compare(spec, result.outputs, ref, compare.load_policy(library), envelope))
            except (OSError, ValueError, zipfile.BadZipFile) as exc:  # a node's array cannot be read
                bad = result.malformed(exc)
                return {**row, "status": bad.status, "message": bad.message}
            row["status"] = row.pop("verdict")
        return row
    finally:
        result.close()


def table(report: dict) -> str:
    head = ("| library | verdict | max abs diff | max rel diff | argmax agree | numerics | first divergent node | time |\n"
            "|---|---|---|---|---|---|---|---|")
    rows = []
    for name, r in report["libraries"].items():
        out = r.get("output") or {}
        where = r.get("first_divergent_layer")
        where_text = f"{where['name']} ({where['kind']}, {_off(where)})" if where else "-"
        if r["status"] not in (Status.PASS, Status.MISMATCH):
            where_text = r["message"]
        agree = f"{out['argmax_agree']}/{out['samples']}" if out else "-"
        rows.append(f"| {name} | {r['status'].upper()} | {number(out.get('max_abs'), '.1e')} | "
                    f"{number(out.get('max_rel'), '.1e')} | {agree} | {_worst(r.get('layers'))} | {where_text} | "
                    f"{r['wall_s']:.1f} s |")
    return "\n".join([head, *rows])


def _off(where: dict) -> str:
    """How far the first divergent node is off, in envelopes or against the fixed bound."""
    if where.get("envelopes") is not None:
        return f"{where['envelopes']:.2g} envelopes off"
    if where.get("numerics", "").startswith("output"):
        return where["numerics"]
    return f"scaled err {where['scaled']:.1e} > fixed bound {where.get('bound', float('nan')):.0e}"


def _worst(layers) -> str:
    """The largest error of any node, in envelopes (and how many nodes the fixed bound judged)."""
    if not layers:
        return "-"
    judged = [layer for layer in layers if layer.get("envelopes") is not None]
    fixed = len(layers) - len(judged)
    text = f"≤ {max(layer['envelopes'] for layer in judged):.2g} envelopes" if judged else ""
    return ", ".join(filter(None, [text, f"{fixed} node(s) by the fixed bound" if fixed else ""]))


def envelope_line(report: dict) -> str:
    """One line under the table: how each node's bound was set."""
    account = report.get("envelope")
    if not account:
        return ""
    if not account["images"]:
        return f"node bounds: {account['note']}"
    own = {}
    for name, row in report["libraries"].items():
        k = (row.get("policy") or {}).get("envelope_k", account["k"])
        if k != account["k"]:
            own.setdefault(k, []).append(name)
    ks = "".join(f"; {k:g} for {', '.join(names)}" for k, names in own.items())
    line = (f"node bounds: K × each node's float32 error envelope, K = {account['k']:g}{ks} (float64 reference on "
            f"{account['images']} of {account['of_images']} inputs; floor {account['floor']:.1e})")
    return line + (f"; {account['note']}" if account["note"] else "")
