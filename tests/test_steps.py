"""`python -m verify steps`: gradients and RMSprop updates of every library against the float64 reference."""
import json

import pytest

from builders import FRAMEWORKS
from tests.conftest import ROOT, run_cli

PLANT = str(ROOT / "tests" / "planted")


def _steps(tmp_path, *args, env=None):
    out = tmp_path / "steps.json"
    proc = run_cli("verify", "steps", *args, "--json", out, env=env)
    assert out.exists(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    return _steps(tmp_path_factory.mktemp("steps"), "--steps", "3")


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_every_library_matches_the_reference_step_by_step(canonical, framework):
    proc, report = canonical
    entry = report["frameworks"][framework]
    assert entry["status"] == "pass", json.dumps({k: v for k, v in entry.items() if k != "steps"}, indent=1)
    assert len(entry["steps"]) == 3 and len(entry["steps"][0]["tensors"]) == 12


def test_canonical_run_exits_0_and_prints_the_step_table(canonical):
    proc, report = canonical
    assert proc.returncode == 0, proc.stderr
    assert "| 3 |" in proc.stdout and all(f"- {f}: PASS" in proc.stdout for f in FRAMEWORKS)


@pytest.mark.parametrize("bug,framework,tensor_kind,what", [
    ("lr-off", "pytorch", None, "update"),
    ("eps-outside", "pytorch", None, "update"),
    ("theano-pool-gradient", "keras-theano", "conv", "gradient"),
])
def test_wrong_arithmetic_fails_at_the_first_step_and_names_the_tensor(tmp_path, bug, framework, tensor_kind, what):
    env = {"PYTHONPATH": PLANT, "XV_PLANTED_BUG": f"{bug}:{framework}"}
    proc, report = _steps(tmp_path, "--steps", "2", "--frameworks", framework, env=env)
    assert proc.returncode == 1
    failure = report["frameworks"][framework]["first_failure"]
    assert failure["step"] == 1 and failure["what"] == what, failure
    assert failure["tensor"].endswith((".weight", ".bias"))
    if tensor_kind:
        assert failure["tensor"].startswith(tensor_kind), failure
    assert f"first at step 1, tensor {failure['tensor']}" in proc.stdout


def test_native_mode_shows_where_each_rmsprop_departs(tmp_path):
    proc, report = _steps(tmp_path, "--steps", "2", "--optimizer", "native",
                          "--frameworks", "pytorch,tflearn,keras-tensorflow")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = {f: e["status"] for f, e in report["frameworks"].items()}
    assert status == {"pytorch": "departs", "tflearn": "departs", "keras-tensorflow": "pass"}
    for framework in ("pytorch", "tflearn"):
        first = report["frameworks"][framework]["steps"][0]
        assert first["max_grad_rel_l2"] < report["policy"]["grad_rel_l2"]  # same gradient, different update
        assert first["max_update_rel_l2"] > 0.1
