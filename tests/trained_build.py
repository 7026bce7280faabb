"""`python -m tests.trained_build LIBRARY MODEL`: the build that trains, checked against onnxruntime in the library's
own process (tflearn switches a process to TF1 graph mode, so tests run this as a subprocess: `run`).

For two training configs, identical dropout ("trained": what `cli.train --dropout identical` trains) and the
library's own dropout ("default"), it builds `build(spec, **trainer.build_options(config))` as the trainer's setup
does, runs the builder's layer_outputs on seeded inputs and judges them with verify.compare against onnxruntime;
then again with each bug of PLANTS, which break the identical-dropout variant only, to show that verifying the
default build would miss them. Prints one JSON line:
{"none" or plant: {config: {"options", "verdict", "first_divergent", "harness_masks"}}}.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from builders import LIBRARIES
from spec.onnx_import import import_model, load_onnx
from verify import reference
from verify.compare import compare, load_policy

CONFIGS = {
    "trained": {"seed": 2017, "batch_size": 32, "dropout": True, "dropout_masks": "harness"},
    "default": {"seed": 2017, "batch_size": 32, "dropout": True, "dropout_masks": "library"},
}


def _inference_scaling(builder) -> None:
    # non-inverted dropout's rule in an inverted-dropout layer: the harness layer also scales by the keep
    # probability outside training
    original = builder.harness_dropout

    def harness_dropout(net, node, x):
        keep, y = 1.0 - node.attrs["rate"], original(net, node, x)
        if builder.NAME == "tensorlayer":  # a node of the functional model, not a tensor
            return net.L.Lambda(lambda t: t * keep, name=f"{node.name}_scaled")(y)
        return y * keep
    builder.harness_dropout = harness_dropout


PLANTS = {"inference-scaling": _inference_scaling}


def check(library: str, model_path: str) -> dict:
    module = LIBRARIES[library][0].split(".")[-1]
    builder = importlib.import_module(f"builders.{module}")
    trainer = importlib.import_module(f"trainers.{module}")
    spec = import_model(model_path)
    x = np.random.default_rng(0).uniform(-1.0, 1.0, (16, *spec.input_shape)).astype(np.float32)
    ref = reference.layer_outputs(load_onnx(model_path), spec, x)

    def judge(config: dict) -> dict:
        options = trainer.build_options(config)
        model = builder.build(spec, **options)
        judged = compare(spec, builder.layer_outputs(model, spec, x, **options), ref, load_policy(library))
        return {"options": options, "verdict": judged["verdict"],
                "first_divergent": (judged["first_divergent_layer"] or {}).get("name"),
                "harness_masks": sorted(model.harness_masks)}

    results = {"none": {name: judge(config) for name, config in CONFIGS.items()}}
    for plant, apply in PLANTS.items():  # planted in turn, each on top of the ones before
        apply(builder)
        results[plant] = {name: judge(config) for name, config in CONFIGS.items()}
    return results


def run(library: str, model_path: Path) -> dict:
    """check() in a process of its own."""
    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "tests.trained_build", library, str(model_path)]
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(check(*sys.argv[1:])))
