"""Worker entry point: `python -m builders.worker LIBRARY JOB_DIR`.

Runs in the library's own environment and process. Reads JOB_DIR/model.json,
weights.npz and inputs.npz (array "x"); writes JOB_DIR/outputs.npz (one array per layer,
keyed by layer name) as JOB_DIR/LIBRARY.outputs.npz and versions and timings as
JOB_DIR/LIBRARY.worker.json, each complete or absent, so workers can share a job folder.
Exit codes (workers.ExitCode): OK, UNSUPPORTED when the builder cannot express the model, FAILED on
any other failure, BAD_INPUT on bad arguments; the reason is the last line on stderr.
"""
from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from builders import LIBRARIES, NAMES, Unsupported, resolve
from spec.ir import ModelSpec
from workers import ExitCode, lifeline, results


def output_paths(job: Path, library: str) -> tuple:
    return job / f"{library}.outputs.npz", job / f"{library}.worker.json"


def options_path(job: Path, library: str) -> Path:
    """Builder options beyond the fast path's, when the job has them (the options of a model a trainer trains)."""
    return job / f"{library}.options.json"


def run(library: str, job: Path) -> None:
    base, _, options = resolve(library)
    if options_path(job, library).exists():
        options = {**options, **json.loads(options_path(job, library).read_text())}
    module = importlib.import_module(LIBRARIES[base][0])
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
    info = {"library": library, "versions": module.versions(**options),
            "build_s": t1 - t0, "forward_s": t2 - t1, "python": sys.version.split()[0]}
    outputs_path, info_path = output_paths(job, library)
    with results.atomic_file(outputs_path) as handle:
        np.savez(handle, **{layer.name: np.asarray(outputs[layer.name], dtype=np.float32) for layer in spec.layers})
    results.write_json(info_path, info)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lifeline.die_with_parent()  # no orphan if the run that started this worker dies
    if len(argv) != 2 or argv[0] not in NAMES:
        print(f"usage: python -m builders.worker {{{','.join(NAMES)}}} JOB_DIR", file=sys.stderr)
        return ExitCode.BAD_INPUT
    return exit_status(lambda: run(argv[0], Path(argv[1])))


def exit_status(action) -> int:
    """Run action(); OK, UNSUPPORTED saying why, or FAILED with the traceback and then the error's one line (the
    orchestrator shows the last line; the traceback helps debugging)."""
    try:
        action()
    except Unsupported as exc:
        print(f"unsupported: {exc}", file=sys.stderr)
        return ExitCode.UNSUPPORTED
    except Exception as exc:  # noqa: BLE001  any failure of a library is this worker's one line
        traceback.print_exc()
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
