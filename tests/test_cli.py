"""The command line as users meet it: help, usage errors, bad data paths."""
from tests.conftest import assert_one_line_error, run_cli


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
