"""PyTorch: the model that trains (trainers.pytorch.setup, i.e. build(spec, **build_options(config))) computes what
onnxruntime computes, for every training variant; a forward bug only that variant has is caught at its node."""
import numpy as np
import pytest

import builders.pytorch as builder
import trainers.pytorch as trainer
from spec.onnx_import import import_model, load_onnx
from tests.conftest import SEED_MODEL
from trainers import masks
from verify import reference
from verify.compare import compare, load_policy

pytestmark = pytest.mark.slow

VARIANTS = {  # name: (optimizer mode, dropout masks, fast-path options)
    "canonical, own dropout": ("canonical", "library", {}),
    "canonical, identical dropout": ("canonical", "harness", {}),
    "native, identical dropout": ("native", "harness", {}),
    "channels_last, identical dropout": ("canonical", "harness", {"channels_last": True}),
}


def _config(mode, dropout_masks, options) -> dict:
    return {"epochs": 1, "batch_size": 32, "threads": 1, "seed": 2017, "dropout": True, "dropout_masks": dropout_masks,
            "optimizer": {"mode": mode, "lr": 1e-3, "rho": 0.9, "eps": 1e-7}, "options": options}


@pytest.fixture(scope="module")
def seed():
    spec = import_model(SEED_MODEL)
    x = np.random.default_rng(0).uniform(-1, 1, (16, *spec.input_shape)).astype(np.float32)
    return spec, x, reference.layer_outputs(load_onnx(SEED_MODEL), spec, x)


def _verdict(spec, x, ref, config, model=None) -> dict:
    model = model or trainer.setup(spec, config)
    return compare(spec, builder.layer_outputs(model, spec, x, **trainer.build_options(config)), ref,
                   load_policy("pytorch"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_trained_build_matches_onnxruntime(seed, variant):
    spec, x, ref = seed
    config = _config(*VARIANTS[variant])
    model = trainer.setup(spec, config)
    holds = {type(model.module(node.name)).__name__ for _, node in masks.dropout_layers(spec)}
    assert holds == {"HarnessDropout" if config["dropout_masks"] == "harness" else "Dropout"}
    result = _verdict(spec, x, ref, config, model)
    assert result["verdict"] == "pass", result["first_divergent_layer"]


def test_a_harness_dropout_left_on_at_inference_is_caught_at_its_node(seed, monkeypatch):
    import torch

    spec, x, ref = seed
    harness_dropout = builder._harness_dropout()
    monkeypatch.setattr(harness_dropout, "forward", lambda self, h: h * self.mask)  # `if self.training` forgotten
    original = builder.build

    def build_with_masks_set(spec, **options):  # as after a training step: the last step's masks are in place
        model = original(spec, **options)
        if options.get("dropout_masks") == masks.HARNESS:
            for name, mask in masks.step_masks(spec, 2017, 0, len(x)).items():
                model.module(name).mask = torch.from_numpy(mask)
        return model

    monkeypatch.setattr(builder, "build", build_with_masks_set)
    assert _verdict(spec, x, ref, _config("canonical", "library", {}))["verdict"] == "pass"  # untouched variant
    result = _verdict(spec, x, ref, _config("canonical", "harness", {}))
    assert result["verdict"] == "mismatch"
    assert result["first_divergent_layer"]["name"] == "dropout1"
