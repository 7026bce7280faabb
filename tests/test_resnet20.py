"""The second canonical model: ResNet-20 for CIFAR-10 (spec/resnet20.py)."""
import numpy as np
import onnx

from spec import resnet20
from spec.onnx_import import import_model

MODEL = resnet20.DEFAULT_PATH


def test_generator_is_byte_identical_to_committed_model(tmp_path):
    assert resnet20.write(tmp_path / "r.onnx").read_bytes() == MODEL.read_bytes()


def test_architecture_is_he_et_al_s_resnet20():
    onnx.checker.check_model(onnx.load(str(MODEL)), full_check=True)
    spec = import_model(MODEL)
    kinds = [n.kind for n in spec.layers]
    convs = [n for n in spec.layers if n.kind == "conv"]
    # 1 stem + 3 stages x 3 blocks x 2 convolutions = 19 weighted 3x3 layers, with the dense layer 20
    assert sum(n.attrs["kernel"] == (3, 3) for n in convs) == 19 and kinds.count("dense") == 1
    assert kinds.count("add") == 9 and kinds.count("batchnorm") == 21  # 19 + the two projection shortcuts'
    assert [n.output_shape for n in spec.layers if n.kind == "add"] == [(16, 32, 32)] * 3 + [(32, 16, 16)] * 3 + \
        [(64, 8, 8)] * 3
    assert spec.layers[-1].kind == "dense" and spec.layers[-1].output_shape == (10,)  # logits
    values = {k: v for k, v in spec.weights.items()}
    trainable = sum(v.size for k, v in values.items() if not k.endswith((".mean", ".var")))
    conv_biases = sum(n.attrs["filters"] for n in convs)  # the importer's zero biases of bias-free convolutions
    assert trainable - conv_biases == 272_474  # He et al.: 0.27 M


def test_initialisation_is_he_normal_and_batchnorm_identity():
    spec = import_model(MODEL)
    for node in spec.layers:
        if node.kind == "conv":
            w = spec.weights[f"{node.name}.weight"]
            std = np.sqrt(2.0 / np.prod(w.shape[1:]))
            assert abs(w.std() / std - 1) < (0.2 if w.size < 1000 else 0.05), node.name
            assert not spec.weights[f"{node.name}.bias"].any()
        if node.kind == "batchnorm":
            p = {k: spec.weights[f"{node.name}.{k}"] for k in ("scale", "bias", "mean", "var")}
            assert (p["scale"] == 1).all() and (p["var"] == 1).all() and not p["bias"].any() and not p["mean"].any()
            assert np.isclose(node.attrs["momentum"], 0.9) and np.isclose(node.attrs["epsilon"], 1e-5)
