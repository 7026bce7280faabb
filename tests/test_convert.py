"""Models brought as a Keras file, a TensorFlow SavedModel or a torch.export program (spec/convert.py): the real
converters run, the converted file imports and the float64 reference reproduces onnxruntime on it node by node;
files that cannot be loaded safely or converted are refused in one line."""
import json
import os
import zipfile

import onnx
import pytest

from spec import convert
from spec.onnx_import import ModelError, import_model
from tests import model_zoo
from tests.conftest import SEED_MODEL, assert_one_line_error, run_cli, run_training
from tests.test_exporters import _reference_agrees_with_onnxruntime
from workers.records import TrainingResults, VerifyReport


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """One model of each kind, written once: kind -> path."""
    folder = tmp_path_factory.mktemp("sources")
    return {"keras": model_zoo.keras_file(folder / "cnn.keras"),
            "saved_model": model_zoo.saved_model(folder / "cnn_savedmodel"),
            "pt2": model_zoo.torch_pt2(folder / "cnn.pt2")}


@pytest.mark.parametrize("kind,converter,layout", [("keras", "tf2onnx", "NHWC"), ("saved_model", "tf2onnx", "NHWC"),
                                                   ("pt2", "torch.onnx.export", "NCHW")])
def test_each_kind_converts_and_the_reference_agrees_with_onnxruntime(sources, tmp_path, kind, converter, layout):
    source = sources[kind]
    assert convert.kind(source) == kind
    before = {k: os.environ.get(k) for k in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")}
    done = convert.to_onnx(source, tmp_path / "m.onnx")
    assert {k: os.environ.get(k) for k in before} == before  # the library workers started later choose their own
    assert done.converted and done.onnx_path == tmp_path / "m.onnx" and converter in done.converter
    assert "batch is fixed" not in done.note  # every builder saves a dynamic batch
    spec = _reference_agrees_with_onnxruntime(done.onnx_path)
    assert spec.input_layout == layout and spec.input_shape == (3, 32, 32) and spec.output().output_shape == (10,)
    props = {p.key: p.value for p in onnx.load(str(done.onnx_path)).metadata_props}
    assert props[convert.SOURCE_KEY] == str(source.resolve()) and props[convert.CONVERTER_KEY] == done.converter


def test_a_pt2_program_keeps_its_batchnorm_layers(tmp_path):
    """torch.onnx's optimizer would fold each evaluation-mode BatchNorm into its convolution; cli.train must get
    the BatchNorm layers the program has, to train them as BatchNorm."""
    done = convert.to_onnx(model_zoo.torch_pt2(tmp_path / "blocks.pt2", blocks=True), tmp_path / "blocks.onnx")
    spec = _reference_agrees_with_onnxruntime(done.onnx_path)
    assert [n.kind for n in spec.layers].count("batchnorm") == 4


@pytest.mark.parametrize("kind", ["keras", "saved_model"])
def test_a_keras_batchnorm_folded_by_the_conversion_is_said(sources, tmp_path, kind):
    """Keras 3 computes an inference BatchNormalization as arithmetic that tf2onnx folds into the convolution: the
    forward pass is the model's (checked above), but cli.train would train a plain convolution; the user is told."""
    done = convert.to_onnx(sources[kind], tmp_path / "m.onnx")
    assert not [n for n in import_model(done.onnx_path).layers if n.kind == "batchnorm"]
    assert "1 BatchNormalization layer(s) reached ONNX as arithmetic" in done.line()


def test_an_onnx_file_passes_through_untouched(tmp_path):
    done = convert.to_onnx(SEED_MODEL, tmp_path / "unused.onnx")
    assert not done.converted and done.onnx_path == SEED_MODEL and not (tmp_path / "unused.onnx").exists()


def test_a_conversion_replaces_only_its_own_earlier_file(sources, tmp_path):
    target = tmp_path / "m.onnx"
    convert.to_onnx(sources["pt2"], target)
    convert.to_onnx(sources["pt2"], target)  # the same model again: replaced
    with pytest.raises(ModelError, match="is not a conversion of"):
        convert.to_onnx(sources["keras"], target)
    other = tmp_path / "mine.onnx"
    other.write_bytes(SEED_MODEL.read_bytes())
    with pytest.raises(ModelError, match="not replaced"):
        convert.to_onnx(sources["pt2"], other)
    assert other.read_bytes() == SEED_MODEL.read_bytes()


def _refused(path, *fragments):
    with pytest.raises(ModelError) as caught:
        convert.to_onnx(path, path.parent / "out.onnx")
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not (path.parent / "out.onnx").exists()
    return message


def test_unknown_kinds_and_missing_paths_are_refused_naming_what_is_accepted(tmp_path):
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n")
    _refused(tmp_path / "m.h5", ".keras", "SavedModel", ".pt2", ".onnx")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", "without saved_model.pb")
    _refused(tmp_path / "missing.keras", "no such model file or folder")


def test_a_corrupt_keras_file_is_refused_in_keras_words(tmp_path):
    path = tmp_path / "corrupt.keras"
    path.write_bytes(bytes(range(256)) * 8)
    _refused(path, "not a zip archive, so not a Keras file")
    with zipfile.ZipFile(path, "w") as archive:  # a zip, but not what Keras writes
        archive.writestr("config.json", "{not json")
    _refused(path, "Keras (safe mode) cannot load it")


def test_a_keras_lambda_is_refused_by_safe_mode(tmp_path):
    _refused(model_zoo.keras_lambda_file(tmp_path / "lambda.keras"), "Keras (safe mode) cannot load it", "Lambda")


def test_a_pt2_that_is_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "random.pt2"
    path.write_bytes(b"PK not really" * 50)
    _refused(path, "not a zip archive")


class _Marker:
    """Pickled, it would create the file `path` when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pt2_whose_sample_inputs_would_run_code_is_refused_without_running_it(sources, tmp_path):
    """torch 2.13 reads a .pt2's sample inputs with weights_only=True and, when that fails, again with
    weights_only=False: a pickle planted there runs (the control). spec.convert refuses it, and the code did not run."""
    import io

    import torch

    marker = tmp_path / "ran"
    planted = tmp_path / "planted.pt2"
    buffer = io.BytesIO()
    torch.save(_Marker(marker), buffer)
    with zipfile.ZipFile(sources["pt2"]) as original, zipfile.ZipFile(planted, "w") as copy:
        names = original.namelist()
        assert any(n.endswith("data/sample_inputs/model.pt") for n in names), names
        for name in names:
            copy.writestr(name, buffer.getvalue() if name.endswith("data/sample_inputs/model.pt") else
                          original.read(name))
    with pytest.raises(Exception):  # noqa: B017 - control: torch.export.load as it is runs the planted code
        torch.export.load(str(planted))
    assert marker.exists()
    marker.unlink()
    _refused(planted, "cannot load it safely", "weights-only loading refuses")
    assert not marker.exists()


@pytest.mark.slow
def test_verify_equivalence_takes_a_keras_file(sources, tmp_path):
    out, report = tmp_path / "converted.onnx", tmp_path / "r.json"
    proc = run_cli("verify", "equivalence", "--model", sources["keras"], "--libraries", "pytorch,tensorflow",
                   "--converted", out, "--json", report)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"converted {sources['keras']} with Keras" in proc.stderr and f"-> {out}" in proc.stderr
    assert "2/2 libraries match onnxruntime" in proc.stdout
    doc = json.loads(report.read_text())
    assert doc["model"] == str(out) and doc["converted"]["source"] == str(sources["keras"])
    assert out.is_file()


@pytest.mark.parametrize("make,named", [
    (lambda p: p.with_suffix(".keras").write_bytes(bytes(range(256)) * 8) and p.with_suffix(".keras"),
     "not a zip archive, so not a Keras file"),
    (lambda p: model_zoo.keras_lambda_file(p.with_suffix(".keras")), "Lambda"),
    (lambda p: p.with_suffix(".pt2").write_bytes(b"not a zip") and p.with_suffix(".pt2"), "not a zip archive"),
    (lambda p: p.mkdir() or p, "without saved_model.pb"),
])
def test_verify_refuses_an_unusable_model_in_one_line(tmp_path, make, named):
    source = make(tmp_path / "model")
    proc = run_cli("verify", "equivalence", "--model", source, "--libraries", "pytorch", "--converted",
                   tmp_path / "out.onnx")
    assert_one_line_error(proc, named, str(source))
    assert not (tmp_path / "out.onnx").exists()


def test_help_says_which_kinds_model_takes():
    for argv in (("verify", "equivalence", "--help"), ("verify", "steps", "--help"), ("cli.train", "--help")):
        proc = run_cli(*argv)
        text = " ".join(proc.stdout.split())
        assert proc.returncode == 0 and ".keras" in text and "SavedModel" in text and ".pt2" in text, argv


@pytest.mark.slow
def test_cli_train_takes_a_pt2_program_verifies_and_keeps_the_converted_file(sources, tmp_path):
    """The converted file is made before the results folder, verified by the gate, copied into the folder and
    named by invocation.json, verification.json and results.json; the file kept is the one verified."""
    proc, folder, run = run_training(tmp_path, "pytorch", "--model", sources["pt2"], "--epochs", "1",
                                     "--max-batches", "2", "--no-dropout")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kept = folder / "cnn.onnx"
    assert f"converted {sources['pt2']} with torch.export.load" in proc.stderr and f"-> {kept}" in proc.stderr
    assert run["model"] == str(kept) and run["converted"]["source"] == str(sources["pt2"])
    assert run["libraries"]["pytorch"]["status"] == "ok"
    verification = json.loads((folder / "verification.json").read_text())
    assert verification["model"] == str(kept) and verification["libraries"]["pytorch"]["status"] == "pass"
    invocation = json.loads((folder / "invocation.json").read_text())
    assert invocation["options"]["model"] == str(sources["pt2"]) and invocation["converted"]["onnx"] == str(kept)
    assert kept.is_file() and convert.kept(sources["pt2"], kept).converter == run["converted"]["converter"]
    assert TrainingResults.from_json(run).to_json() == run
    assert VerifyReport.from_json(verification).to_json() == verification


def test_a_training_plan_converts_into_a_temporary_file_and_a_resumed_one_takes_the_kept_copy(sources, tmp_path):
    from trainers import plan as planning

    options = planning.TrainOptions(libraries=["pytorch"], model=str(sources["pt2"]))
    fresh = planning.make(options)
    assert fresh.conversion.converted and fresh.model_path.parent.name.startswith("xv-convert-")
    kept = convert.keep(fresh.conversion, tmp_path)
    assert kept.onnx_path == tmp_path / "cnn.onnx" and kept.onnx_path.read_bytes() == fresh.model_path.read_bytes()
    resumed = planning.make(options, folder=tmp_path)
    assert resumed.model_path == kept.onnx_path and resumed.conversion.converter == fresh.conversion.converter
