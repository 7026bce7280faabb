"""Keras on Theano: the model that trains (trainers.keras_theano.setup, i.e. build(spec, **build_options(config)))
computes what onnxruntime computes, for every training variant (canonical mode's single-maximum max pooling,
harness dropout); a forward bug only that variant has is caught at its node. The models are built and run in the
Theano environment; the reference and the comparison run here."""
import json
import subprocess

import numpy as np
import pytest

import envs
from spec.onnx_import import import_model, load_onnx
from tests.conftest import ROOT, SEED_MODEL
from verify import reference
from verify.compare import compare, load_policy

pytestmark = pytest.mark.slow

VARIANTS = {  # name: (optimizer mode, dropout masks)
    "canonical, own dropout": ("canonical", "library"),
    "canonical, identical dropout": ("canonical", "harness"),
    "native, identical dropout": ("native", "harness"),
}
PLANTED = "canonical, identical dropout, mask left on at inference"

# Runs in the Theano environment: argv[1] is a folder with the model, inputs.npz and variants.json
# ({name: config}); writes <i>.npz, the layer outputs of variant i of the trainer's own setup. The planted
# variant's HarnessDropout multiplies by its mask in the test phase too (K.in_train_phase forgotten).
PROBE = """
import json, sys
from pathlib import Path
import numpy as np
from builders import keras_theano as builder
from spec.ir import ModelSpec
from trainers import keras_theano as trainer
from trainers import masks

job = Path(sys.argv[1])
spec, variants = ModelSpec.load(job), json.loads((job / "variants.json").read_text())
x = np.load(job / "inputs.npz")["x"]
for i, (name, config) in enumerate(variants.items()):
    if name.endswith("left on at inference"):
        builder._harness_dropout(builder.library()).call = lambda self, h, training=None: h * self.step_mask[:len(x)]
    keras, model = trainer.setup(spec, config)
    dropouts = sorted({type(model.get_layer(node.name)).__name__ for _, node in masks.dropout_layers(spec)})
    if name.endswith("left on at inference"):  # as after a training step: the last step's masks are in place
        for node_name, mask in masks.step_masks(spec, 2017, 0, config["batch_size"]).items():
            keras.backend.set_value(model.get_layer(node_name).step_mask, mask)
    outputs = builder.layer_outputs(model, spec, x, **trainer.build_options(config))
    np.savez(job / f"{i}.npz", **outputs)
    print(json.dumps({"variant": name, "dropouts": dropouts,
                      "pool": type(model.get_layer("pool1")).__name__}), flush=True)
"""


def _config(mode, dropout_masks, batch_size=32) -> dict:
    return {"epochs": 1, "batch_size": batch_size, "threads": 1, "seed": 2017, "dropout": True, "dropout_masks": dropout_masks,
            "optimizer": {"mode": mode, "lr": 1e-3, "rho": 0.9, "eps": 1e-7}}


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """(spec, onnxruntime's layer outputs, {variant: (its layer outputs, what the probe saw)})."""
    job = tmp_path_factory.mktemp("keras-theano")
    spec = import_model(SEED_MODEL)
    spec.save(job)
    # more images than a training batch: the mask variables' batch size must not matter in the test phase
    x = np.random.default_rng(0).uniform(-1, 1, (48, *spec.input_shape)).astype(np.float32)
    np.savez(job / "inputs.npz", x=x)
    variants = {name: _config(*v) for name, v in VARIANTS.items()} | {PLANTED: _config("canonical", "harness", 64)}
    (job / "variants.json").write_text(json.dumps(variants))
    proc = subprocess.run([str(envs.ensure("theano")), "-c", PROBE, str(job)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = {}
    for i, row in enumerate(seen):
        with np.load(job / f"{i}.npz") as npz:
            results[row["variant"]] = ({k: npz[k] for k in npz.files}, row)
    return spec, reference.layer_outputs(load_onnx(SEED_MODEL), spec, x), results


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_trained_build_matches_onnxruntime(probed, variant):
    spec, ref, results = probed
    outputs, seen = results[variant]
    mode, dropout_masks = VARIANTS[variant]
    assert seen["dropouts"] == ["HarnessDropout" if dropout_masks == "harness" else "Dropout"]
    assert seen["pool"] == ("SingleMaxPooling2D" if mode == "canonical" else "MaxPooling2D")
    result = compare(spec, outputs, ref, load_policy("keras-theano"))
    assert result["verdict"] == "pass", result["first_divergent_layer"]


def test_a_harness_dropout_left_on_at_inference_is_caught_at_its_node(probed):
    spec, ref, results = probed
    result = compare(spec, results[PLANTED][0], ref, load_policy("keras-theano"))
    assert result["verdict"] == "mismatch"
    assert result["first_divergent_layer"]["name"] == "dropout1"
