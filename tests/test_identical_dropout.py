"""Identical dropout: every library applies the harness's masks, so runs with dropout on stay comparable step by step."""
import hashlib
import subprocess

import numpy as np
import pytest

import envs
from builders import LIBRARIES
from tests.conftest import ROOT, run_training
from trainers import masks

pytestmark = pytest.mark.slow  # starts library workers

PLANT = str(ROOT / "tests" / "planted")


def _spec():
    from spec.onnx_import import import_model
    from spec.seed_model import DEFAULT_PATH

    return import_model(DEFAULT_PATH)


def test_masks_are_inverted_dropout_at_the_layer_rate_and_differ_by_step():
    spec = _spec()
    first, again, second = (masks.step_masks(spec, 7, s, 128) for s in (0, 0, 1))
    assert list(first) == ["dropout1", "dropout2"]
    for name, mask in first.items():
        rate = next(l.attrs["rate"] for l in spec.layers if l.name == name)
        assert mask.shape == (128, *next(l.output_shape for l in spec.layers if l.name == name))
        assert set(np.unique(mask)) == {0.0, np.float32(1 / (1 - rate))}
        assert abs((mask == 0).mean() - rate) < 0.01
        assert np.array_equal(mask, again[name]) and not np.array_equal(mask, second[name])


def _digest(step_masks) -> str:
    return hashlib.sha256(b"".join(m.tobytes() for m in step_masks.values())).hexdigest()


def test_the_theano_environment_draws_the_same_masks(tmp_path):
    spec = _spec()
    spec.save(tmp_path)
    code = ("import hashlib, sys; from spec.ir import ModelSpec; from trainers import masks; "
            "m = masks.step_masks(ModelSpec.load(sys.argv[1]), 3, 5, 80); "
            "print(hashlib.sha256(b''.join(v.tobytes() for v in m.values())).hexdigest())")
    theano = subprocess.run([str(envs.ensure("theano")), "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True)
    assert theano.returncode == 0, theano.stderr
    assert theano.stdout.strip() == _digest(masks.step_masks(spec, 3, 5, 80))


def test_every_library_applies_every_mask_exactly(tmp_path):
    # learning rate 0 takes the optimizer's float32 drift out: each loss is then a function of its batch and
    # masks alone. Batches of 1500 from 2000 images: a smaller last batch and an epoch boundary in 4 steps.
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": "lr-zero:all"}
    proc, folder, run = run_training(tmp_path, "all", "--epochs", "2", "--batch-size", "1500", "--dropout",
                                     "identical", env=env)
    assert proc.returncode == 0, proc.stderr
    assert run["config"]["dropout"] and run["config"]["dropout_masks"] == "harness"
    agreement = run["step_agreement"]
    assert set(agreement["libraries"]) == set(LIBRARIES) and agreement["agree"], agreement
    assert "identical dropout masks" in (folder / "results.md").read_text()
    steps = {name: r["record"]["steps"] for name, r in run["libraries"].items()}
    assert all([s["batch_size"] for s in v] == [1500, 500, 1500, 500] for v in steps.values())
    losses = np.array([[s["loss"] for s in v] for v in steps.values()])
    # 1e-5: keras-tensorflow recovers step losses from fit's running mean (error up to 2e-6); own masks give 2e-3+
    assert np.abs(losses - np.median(losses, 0)).max() / np.median(losses) < 1e-5
    assert np.ptp(losses[0]) > 1e-3  # the masks (and batches) differ from step to step


def test_with_their_own_dropout_the_libraries_do_not_agree(tmp_path):
    # the control for the test above: same run, each library's own masks
    proc, folder, run = run_training(tmp_path, "pytorch", "tensorflow", "--epochs", "1", "--max-batches", "2")
    first = [r["record"]["steps"][0]["loss"] for r in run["libraries"].values()]
    assert abs(first[0] - first[1]) / first[0] > 1e-3


@pytest.mark.parametrize("fault,library", [("mask-shifted", "tflearn"), ("own-masks", "keras-tensorflow")])
def test_a_library_that_misapplies_the_masks_is_caught_at_step_one(tmp_path, fault, library):
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": f"{fault}:{library}"}
    proc, folder, run = run_training(tmp_path, "pytorch", "tensorflow", library, "--epochs", "1",
                                     "--max-batches", "3", "--dropout", "identical", env=env)
    agreement = run["step_agreement"]
    assert agreement["agree"] is False
    assert agreement["libraries"][library]["first_bad_step"] == 1  # dropout acts in the very first forward pass
    assert agreement["libraries"]["pytorch"]["agrees"] and agreement["libraries"]["tensorflow"]["agrees"]
