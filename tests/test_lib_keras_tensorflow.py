"""Keras 3 on TensorFlow: the model that trains is the model that is verified. With identical dropout,
`trainers.keras_tensorflow.setup` builds the builder's dropout_masks="harness" variant (dropout layers holding the
harness's mask); its inference outputs must match onnxruntime, and its training forward must be the graph with
exactly the masks handed to it. A harness dropout layer that applies its mask at inference too is caught at the
dropout node."""
import pytest

from spec.onnx_import import import_model
from tests.conftest import SEED_MODEL, run_training
from tests.test_lib_tensorflow import CONFIG, judge, run_script
from trainers import masks

pytestmark = pytest.mark.slow

# runs in the library's worker environment; see tests/test_lib_tensorflow.py
SCRIPT = """
import json, sys
import numpy as np
from builders import keras_tensorflow as builder, layouts
from spec.onnx_import import import_model
from trainers import keras_tensorflow as trainer, masks
from verify.equivalence import make_inputs

model, out, plant, configs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if plant == "mask-at-inference":
    original = builder._harness_dropout_class

    def leaky(keras):
        class Leaky(original(keras)):
            def call(self, inputs, training=None):
                return super().call(inputs, training=True)
        return Leaky
    builder._harness_dropout_class = leaky
spec = import_model(model)
x, _ = make_inputs(spec)
arrays = {}
for i, config in enumerate(configs):
    keras, net = trainer.setup(spec, config)
    builder.set_dropout_masks(net, spec, masks.step_masks(spec, config["seed"], 0, len(x)))
    arrays.update({f"{i}/inference/{k}": v
                   for k, v in builder.layer_outputs(net, spec, x, **trainer.build_options(config)).items()})
    probe = keras.Model(net.inputs, [net.get_layer(node.name).output for node in spec.layers])
    ys = probe(layouts.nchw_to_nhwc(x), training=True)
    arrays.update({f"{i}/training/{node.name}": layouts.to_canonical(keras.ops.convert_to_numpy(y), source)
                   for node, y, source in zip(spec.layers, ys, layouts.flatten_sources(spec))})
np.savez(out, x=x, **arrays)
"""


def test_the_trained_model_matches_onnxruntime_and_applies_the_masks(tmp_path):
    verdicts = judge("keras-tensorflow", run_script(SCRIPT, tmp_path, [{**CONFIG, "options": {}}]), "0")
    assert verdicts["inference"]["verdict"] == "pass", verdicts["inference"]["first_divergent_layer"]
    assert verdicts["training"]["verdict"] == "pass", verdicts["training"]["first_divergent_layer"]


def test_a_harness_dropout_layer_masking_at_inference_is_caught_at_the_dropout_node(tmp_path):
    arrays = run_script(SCRIPT, tmp_path, [{**CONFIG, "options": {}}], plant="mask-at-inference")
    verdicts = judge("keras-tensorflow", arrays, "0")
    first_dropout = masks.dropout_layers(import_model(SEED_MODEL))[0][1].name
    assert verdicts["inference"]["verdict"] == "mismatch"
    assert verdicts["inference"]["first_divergent_layer"]["name"] == first_dropout


def test_the_keras_fast_paths_apply_every_step_s_masks(tmp_path):
    # Keras on JAX carries variable values between fit's steps outside the variables: a mask assigned between
    # steps reached the model only in the first step (step 2 departed by 5e-3) until the mask callback synced
    proc, folder, run = run_training(tmp_path, "keras-tensorflow", "keras-jax", "keras-torch", "--epochs", "1",
                                     "--max-batches", "3", "--threads", "1", "--dropout", "identical")
    assert proc.returncode == 0, proc.stderr
    assert run["step_agreement"]["agree"], run["step_agreement"]
