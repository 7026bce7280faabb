"""Raw TensorFlow: the model that trains is the model that is verified. `trainers.tensorflow.setup` builds it
with `build_options(config)`; in the identical-dropout configuration its inference outputs must match
onnxruntime, and its training forward (training=True, the harness's masks as the call's argument) must be the
graph with exactly those masks applied, node by node. A model that ignores the masks is caught at the dropout
node."""
import json
import subprocess
import sys

import numpy as np
import pytest

from spec import ops
from spec.onnx_import import import_model, load_onnx
from tests.conftest import ROOT, SEED_MODEL
from trainers import masks
from verify import compare
from verify.reference import layer_outputs as onnxruntime_outputs

pytestmark = pytest.mark.slow

# the identical-dropout training configuration; 64 verification images against batches of 128: the masks are
# held for a full batch and applied to a smaller one, as in an epoch's last batch
CONFIG = {"threads": 1, "seed": 7, "batch_size": 128, "dropout": True, "dropout_masks": masks.HARNESS}

# runs in the library's worker environment: setup(spec, config) per config, then every node's output at
# inference and in training with step 0's harness masks -> one npz. argv: model, out, plant, configs (JSON)
SCRIPT = """
import json, sys
import numpy as np
from builders import layouts
from builders import tensorflow as builder
from spec.onnx_import import import_model, load_onnx
from trainers import tensorflow as trainer, tf_shared
from verify.equivalence import make_inputs

model, out, plant, configs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if plant == "masks-ignored":  # dropout draws its own masks although the call hands it the harness's
    original = builder.op_dropout
    builder.op_dropout = lambda *a: (lambda f: lambda xs, training, masks: f(xs, training, {}))(original(*a))
spec = import_model(model)
x, _ = make_inputs(spec)
arrays = {}
for i, config in enumerate(configs):
    tf, net, function = trainer.setup(spec, config)
    arrays.update({f"{i}/inference/{k}": v
                   for k, v in builder.layer_outputs(net, spec, x, **trainer.build_options(config)).items()})
    step_masks = tf_shared.step_masks(tf, spec, config["seed"], 0, len(x))
    forward = function(lambda x, m: net(x, training=True, masks=m))
    ys = forward(tf.constant(layouts.nchw_to_nhwc(x)), step_masks)
    arrays.update({f"{i}/training/{node.name}": layouts.to_canonical(y.numpy(), source)
                   for node, y, source in zip(spec.layers, ys, layouts.flatten_sources(spec))})
np.savez(out, x=x, **arrays)
"""


def run_script(script: str, tmp_path, configs: list, plant: str = "") -> dict:
    """Run `script` in a fresh worker process (the main environment is the TensorFlow libraries' own)."""
    out = tmp_path / "outputs.npz"
    proc = subprocess.run([sys.executable, "-c", script, str(SEED_MODEL), str(out), plant, json.dumps(configs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as npz:
        return {k: npz[k] for k in npz.files}


def masked_reference(spec, x, step_masks: dict) -> dict:
    """Every node's float64 output, each dropout node multiplying by its harness mask (the registry's math)."""
    values = {spec.input_name: np.asarray(x, dtype=np.float64)}
    for node in spec.layers:
        params = {p: v.astype(np.float64) for p, v in spec.params(node).items()}
        y, _ = ops.get(node.kind).forward(node.attrs, params, [values[t] for t in node.inputs])
        values[node.name] = y * step_masks[node.name] if node.name in step_masks else y
    return values


def judge(library: str, arrays: dict, prefix: str) -> dict:
    """verify.compare's verdict on the inference (against onnxruntime) and the training forward (against the
    masked float64 reference) of one config's outputs."""
    spec, policy = import_model(SEED_MODEL), compare.load_policy(library)
    x = arrays["x"]
    got = {kind: {node.name: arrays[f"{prefix}/{kind}/{node.name}"] for node in spec.layers}
           for kind in ("inference", "training")}
    step_masks = masks.step_masks(spec, CONFIG["seed"], 0, len(x))
    onnxruntime = onnxruntime_outputs(load_onnx(SEED_MODEL), spec, x)
    return {"inference": compare.compare(spec, got["inference"], onnxruntime, policy),
            "training": compare.compare(spec, got["training"], masked_reference(spec, x, step_masks), policy)}


def test_the_trained_model_matches_onnxruntime_and_applies_the_masks(tmp_path):
    configs = [{**CONFIG, "options": {}}, {**CONFIG, "options": {"jit_compile": True}}]
    arrays = run_script(SCRIPT, tmp_path, configs)
    for i, library in enumerate(("tensorflow", "tensorflow+xla")):
        verdicts = judge(library, arrays, str(i))
        assert verdicts["inference"]["verdict"] == "pass", (library, verdicts["inference"]["first_divergent_layer"])
        assert verdicts["training"]["verdict"] == "pass", (library, verdicts["training"]["first_divergent_layer"])


def test_a_model_that_ignores_the_harness_masks_is_caught_at_the_dropout_node(tmp_path):
    arrays = run_script(SCRIPT, tmp_path, [{**CONFIG, "options": {}}], plant="masks-ignored")
    verdicts = judge("tensorflow", arrays, "0")
    assert verdicts["inference"]["verdict"] == "pass"  # inference never applies a mask
    assert verdicts["training"]["verdict"] == "mismatch"
    first_dropout = masks.dropout_layers(import_model(SEED_MODEL))[0][1].name
    assert verdicts["training"]["first_divergent_layer"]["name"] == first_dropout
