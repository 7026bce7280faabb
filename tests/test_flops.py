"""FLOP counts of the model, checked against figures worked out by hand from the layer shapes."""
from spec import flops
from spec.onnx_import import import_model
from spec.seed_model import DEFAULT_PATH


def test_seed_model_flops_match_hand_counts():
    spec = import_model(DEFAULT_PATH)
    f = flops.model_flops(spec)
    conv1 = 32 * 32 * 32 * 3 * 3 * 3  # outputs (32 channels, 32x32 with pads 1) x multiply-adds each
    assert f["layers"]["conv1"] == {"forward": 2 * conv1 + 32 * 32 * 32, "backward": 2 * conv1 + 32 * 32 * 32}
    conv2 = 32 * 30 * 30 * 32 * 3 * 3
    assert f["layers"]["conv2"]["forward"] == 2 * conv2 + 32 * 30 * 30
    assert f["layers"]["conv2"]["backward"] == 4 * conv2 + 32 * 30 * 30  # input and weight gradients
    assert f["layers"]["dense1"]["forward"] == 2 * 2304 * 512 + 512
    assert f["layers"]["pool1"]["forward"] == 32 * 15 * 15 * 3  # three comparisons per 2x2 window
    assert f["layers"]["dropout1"] == {"forward": 0, "backward": 0}
    assert f["forward"] == sum(v["forward"] for v in f["layers"].values())
    assert 41e6 < f["forward"] < 42e6 and 2.8 < f["training"] / f["forward"] < 3.0
