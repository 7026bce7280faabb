"""The command line as users meet it: help, usage errors, bad data paths, the user's own inputs."""
import json

import numpy as np
import pytest

from tests.conftest import SEED_MODEL, assert_one_line_error, run_cli


def test_help_explains_the_command():
    proc = run_cli("verify", "equivalence", "--help")
    assert proc.returncode == 0
    for flag in ("--model", "--libraries", "--json", "--data"):
        assert flag in proc.stdout


def test_unknown_library_is_one_line_exit_2(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("verify", "equivalence", "--libraries", "pytorch,caffe", "--json", out)
    assert_one_line_error(proc, "caffe", "keras-theano")
    assert not out.exists()


def test_missing_data_path_is_one_line_exit_2(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("verify", "equivalence", "--libraries", "pytorch", "--data", tmp_path / "none.npz", "--json", out)
    assert_one_line_error(proc, "none.npz", "no such file")
    assert not out.exists()


def test_describe_lists_the_layers():
    proc = run_cli("verify", "describe", "spec/seed_cnn.onnx")
    assert proc.returncode == 0 and "parameters: 1,250,858" in proc.stdout


# --- verify equivalence --inputs FILE.npz: the user's own inputs -------------------------------------------------

def _refusal(capsys, *argv) -> str:
    """verify's main on argv: exit 2 and one 'error:' line on stderr, no traceback; returns the line."""
    from verify.__main__ import main

    code = main(["equivalence", "--libraries", "pytorch", *map(str, argv)])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, captured.err)
    assert "Traceback" not in captured.err + captured.out and captured.out == ""
    return lines[0]


def _inputs(path, **arrays):
    np.savez(path, **arrays)
    return path


def _images(n, dtype=np.float32, shape=(3, 32, 32)):
    return np.random.default_rng(0).uniform(-1, 1, (n, *shape)).astype(dtype)


def test_inputs_refused_when_the_file_is_missing(tmp_path, capsys):
    assert "none.npz: no such file" in _refusal(capsys, "--inputs", tmp_path / "none.npz")


def test_inputs_refused_when_the_file_is_not_an_npz(tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert "bad.npz: not a readable npz" in _refusal(capsys, "--inputs", tmp_path / "bad.npz")


def test_inputs_refused_naming_the_expected_array_and_those_present(tmp_path, capsys):
    line = _refusal(capsys, "--inputs", _inputs(tmp_path / "x.npz", images=_images(2), labels=np.zeros(2)))
    assert "no array 'input' (the model's input)" in line and "'images', 'labels'" in line


def test_inputs_refused_for_a_shape_the_model_does_not_take(tmp_path, capsys):
    line = _refusal(capsys, "--inputs", _inputs(tmp_path / "x.npz", input=_images(2, shape=(32, 32, 3))))
    assert "shape [2, 32, 32, 3]" in line and "the model takes [N, 3, 32, 32]" in line


def test_inputs_refused_when_not_floating_point(tmp_path, capsys):
    line = _refusal(capsys, "--inputs", _inputs(tmp_path / "x.npz", input=_images(2, np.uint8)))
    assert "is uint8" in line and "floating-point [N, 3, 32, 32]" in line


def test_inputs_refused_when_not_finite_or_empty_or_with_data(tmp_path, capsys):
    poisoned = _images(2)
    poisoned[1, 0, 0, 0] = np.nan
    assert "NaN or infinite" in _refusal(capsys, "--inputs", _inputs(tmp_path / "nan.npz", input=poisoned))
    assert "holds no inputs" in _refusal(capsys, "--inputs", _inputs(tmp_path / "empty.npz", input=_images(0)))
    line = _refusal(capsys, "--inputs", tmp_path / "nan.npz", "--data", tmp_path)
    assert "--inputs and --data" in line


@pytest.mark.slow  # starts a library worker
def test_inputs_verify_with_the_first_that_the_budget_holds_and_say_so(tmp_path, monkeypatch):
    from spec.onnx_import import import_model
    from verify.equivalence import image_count

    budget = {"XV_MEMORY_BUDGET_GIB": "0.03"}
    monkeypatch.setenv("XV_MEMORY_BUDGET_GIB", budget["XV_MEMORY_BUDGET_GIB"])
    fit, _ = image_count(import_model(SEED_MODEL), 24, workers=1)
    assert 1 < fit < 24
    path, out = _inputs(tmp_path / "mine.npz", input=_images(24, np.float64)), tmp_path / "r.json"
    proc = run_cli("verify", "equivalence", "--libraries", "pytorch", "--inputs", path, "--json", out, env=budget)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["inputs"].startswith(f"{fit} inputs 'input' from {path} (float64 read as float32)")
    assert f"{fit} images instead of 24" in report["inputs"] and f"{fit} images instead of 24" in proc.stderr
    assert report["libraries"]["pytorch"]["output"]["samples"] == fit
    assert report["envelope"]["of_images"] == fit


def test_inputs_of_an_nhwc_graph_are_taken_as_the_graph_takes_them(tmp_path, zoo, capsys):
    """tf2onnx's Keras model takes [N, 32, 32, 3]: the user's file holds that, onnxruntime gets it as it is and the
    libraries get it channels-first; the NCHW shape every other model takes is refused, naming [N, 32, 32, 3]."""
    images = _images(3, shape=(32, 32, 3))
    line = _refusal(capsys, "--model", zoo["keras"], "--inputs", _inputs(tmp_path / "nchw.npz", x=_images(3)))
    assert "[N, 32, 32, 3]" in line
    out = tmp_path / "r.json"
    proc = run_cli("verify", "equivalence", "--model", zoo["keras"], "--libraries", "pytorch", "--inputs",
                   _inputs(tmp_path / "nhwc.npz", x=images), "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert "NHWC, handed to the libraries as NCHW" in report["inputs"]
    assert report["libraries"]["pytorch"]["output"]["samples"] == 3
