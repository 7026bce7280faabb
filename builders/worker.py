"""Worker entry point: `python -m builders.worker FRAMEWORK JOB_DIR`.

Runs in the framework's own environment and process. Reads JOB_DIR/model.json,
weights.npz and inputs.npz (array "x"); writes JOB_DIR/outputs.npz (one array per layer,
keyed by layer name) as JOB_DIR/FRAMEWORK.outputs.npz and versions and timings as
JOB_DIR/FRAMEWORK.worker.json, each complete or absent, so workers can share a job folder.
Exit 0 on success, 3 when the builder cannot express the model, 1 on any other failure;
the reason is the last line on stderr.
"""
from __future__ import annotations

import importlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import lifeline
from builders import FRAMEWORKS, NAMES, Unsupported, resolve
from spec.ir import ModelSpec


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def output_paths(job: Path, framework: str) -> tuple:
    return job / f"{framework}.outputs.npz", job / f"{framework}.worker.json"


def run(framework: str, job: Path) -> None:
    base, _, options = resolve(framework)
    module = importlib.import_module(FRAMEWORKS[base][0])
    spec = ModelSpec.load(job)
    with np.load(job / "inputs.npz") as npz:
        x = npz["x"].astype(np.float32)
    t0 = time.perf_counter()
    model = module.build(spec, **options)
    t1 = time.perf_counter()
    outputs = module.layer_outputs(model, spec, x, **options)
    t2 = time.perf_counter()
    missing = [l.name for l in spec.layers if l.name not in outputs]
    if missing:
        raise RuntimeError(f"builder returned no output for layers {missing}")
    buffer = io.BytesIO()
    np.savez(buffer, **{layer.name: np.asarray(outputs[layer.name], dtype=np.float32) for layer in spec.layers})
    info = {"framework": framework, "versions": module.versions(**options),
            "build_s": t1 - t0, "forward_s": t2 - t1, "python": sys.version.split()[0]}
    outputs_path, info_path = output_paths(job, framework)
    _write_atomic(outputs_path, buffer.getvalue())
    _write_atomic(info_path, json.dumps(info, indent=1).encode())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lifeline.die_with_parent()  # no orphan if the run that started this worker dies
    if len(argv) != 2 or argv[0] not in NAMES:
        print(f"usage: python -m builders.worker {{{','.join(NAMES)}}} JOB_DIR", file=sys.stderr)
        return 2
    try:
        run(argv[0], Path(argv[1]))
    except Unsupported as exc:
        print(f"unsupported: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:  # the orchestrator shows the last line; the traceback helps debugging
        traceback.print_exc()
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
