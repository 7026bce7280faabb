"""Models as the exporters people use write them, at every opset they write: torch.onnx.export (TorchScript and
dynamo exporters) at opsets 11-21 and tf2onnx from a Keras model at every opset it writes (11-18 in tf2onnx 1.17,
its latest release; 19-21 as its opset-18 file converted by onnx.version_converter).
Each must import, and the float64 reference on the imported graph must reproduce onnxruntime on the file at every
node. All six libraries run a representative of each exporter in tests/test_equivalence.py; `python -m verify
survey FILES` runs any of these files through all six. Only one opset per exporter is in the fast tier."""
import numpy as np
import pytest

from spec.onnx_import import ModelError, import_model, load_onnx, normalized_model
from spec.reference64 import Reference
from tests import model_zoo
from verify import reference


def _opsets(opsets, fast: int) -> list:
    """Every opset, all but `fast` in the slow tier (each export takes seconds; CI runs them all)."""
    return [opset if opset == fast else pytest.param(opset, marks=pytest.mark.slow) for opset in opsets]


TORCH_OPSETS = _opsets(range(11, 22), fast=17)
TF2ONNX_OPSETS = _opsets(range(11, 22), fast=13)  # above 18 (tf2onnx 1.17's highest): converted, see keras_export


def _reference_agrees_with_onnxruntime(path):
    spec = import_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, (3, *spec.input_shape)).astype(np.float32)
    try:
        expected = reference.layer_outputs(load_onnx(path), spec, x)
    except ModelError:  # converted files name tensors the original lacks
        expected = reference.layer_outputs(normalized_model(path), spec, x)
    got = Reference(spec, spec.weights).outputs(x)
    worst = max(float(np.abs(got[n.name] - expected[n.name]).max() / (np.abs(expected[n.name]).max() or 1.0))
                for n in spec.layers)
    assert worst < 1e-5, (path, worst)
    return spec


@pytest.mark.parametrize("opset", TORCH_OPSETS)
def test_torchscript_export_at_every_opset(tmp_path, opset):
    spec = _reference_agrees_with_onnxruntime(model_zoo.blocks_at_opset(tmp_path / "m.onnx", opset, dynamo=False))
    assert [n.kind for n in spec.layers].count("batchnorm") == 4


@pytest.mark.slow  # the dynamo exporter takes 10-30 s per file
@pytest.mark.parametrize("opset", range(11, 22))
def test_dynamo_export_at_every_opset(tmp_path, opset):
    spec = _reference_agrees_with_onnxruntime(model_zoo.blocks_at_opset(tmp_path / "m.onnx", opset, dynamo=True))
    assert {"add", "concat", "globalavgpool"} <= {n.kind for n in spec.layers}


@pytest.mark.parametrize("opset", TF2ONNX_OPSETS)
def test_tf2onnx_export_of_a_keras_model_at_every_opset(tmp_path, opset):
    path = model_zoo.keras_export(tmp_path / "m.onnx", opset)
    assert [o.version for o in load_onnx(path).opset_import if o.domain in ("", "ai.onnx")] == [opset]
    spec = _reference_agrees_with_onnxruntime(path)
    assert spec.input_layout == "NHWC" and spec.input_shape == (3, 32, 32)
    assert {"mul", "add", "concat"} <= {n.kind for n in spec.layers}
    assert any(n.kind == "flatten" and n.attrs.get("order") == "HWC" for n in spec.layers)


def test_skipping_the_nhwc_transpose_is_caught(tmp_path):
    """Negative control: an NHWC input fed to onnxruntime as NCHW (the transpose skipped) is far off at the first node."""
    path = model_zoo.keras_export(tmp_path / "m.onnx")
    spec = import_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, *spec.input_shape)).astype(np.float32)
    got = Reference(spec, spec.weights).outputs(x)
    spec.input_layout = "NCHW"  # planted: the images handed over channels-first
    with pytest.raises(ModelError):  # onnxruntime refuses [N, 3, 32, 32] for its [N, 32, 32, 3] input
        reference.layer_outputs(load_onnx(path), spec, x)
    square = x[:, :, :, :].copy()
    first = spec.layers[0].name
    wrong = Reference(spec, spec.weights).outputs(square.transpose(0, 1, 3, 2))[first]  # H and W swapped
    assert np.abs(wrong - got[first]).max() > 1e-2
