"""tflearn: the build that trains is the build that is verified (issue 11, defect 2), and its own dropout masks
follow the run's seed."""
import json
import subprocess
import sys

import pytest

from tests import trained_build
from tests.conftest import ROOT, SEED_MODEL

pytestmark = pytest.mark.slow  # starts library workers


@pytest.fixture(scope="module")
def checked():
    return trained_build.run("tflearn", SEED_MODEL)


def test_the_identical_dropout_build_that_trains_matches_onnxruntime(checked):
    trained, default = checked["none"]["trained"], checked["none"]["default"]
    assert trained["options"] == {"seed": 2017, "dropout_masks": "harness", "batch_size": 32}
    assert trained["harness_masks"] == ["dropout1", "dropout2"] and default["harness_masks"] == []
    assert trained["verdict"] == default["verdict"] == "pass", checked


def test_a_bug_in_the_trained_build_alone_is_caught_at_its_layer(checked):
    result = checked["inference-scaling"]
    assert result["trained"]["verdict"] == "mismatch" and result["trained"]["first_divergent"] == "dropout1"
    assert result["default"]["verdict"] == "pass"  # verifying the library's default build would miss it


DROPOUT_OUTPUTS = """
import json, sys
import numpy as np
import builders.tflearn as builder
from builders import layouts
from spec.onnx_import import import_model

spec = import_model(sys.argv[1])
x = layouts.nchw_to_nhwc(np.random.default_rng(0).uniform(-1, 1, (4, *spec.input_shape)).astype(np.float32))

def dropout1(seed):  # the first dropout layer's output in training mode: tflearn draws its own mask
    model = builder.build(spec, seed=seed)
    with model.session.graph.as_default():
        builder.library()[1].is_training(True, session=model.session)
        return model.session.run(model.spec_outputs["dropout1"], {model.inputs[0]: x})

print(json.dumps({str(seed): bool(np.array_equal(dropout1(seed), dropout1(seed))) for seed in (5, None)}))
"""


def test_its_own_dropout_masks_follow_the_seed():
    proc = subprocess.run([sys.executable, "-c", DROPOUT_OUTPUTS, str(SEED_MODEL)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    # without a graph seed (the seed set after the build, as before) two builds draw different masks
    assert json.loads(proc.stdout.splitlines()[-1]) == {"5": True, "None": False}
