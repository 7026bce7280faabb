"""Every library's build of each model computes what onnxruntime computes, run as users run it:
`python -m verify equivalence --model M --json J`. One run per model; one test per (model, library)."""
import json

import pytest

from builders import LIBRARIES
from tests.conftest import SEED_MODEL, run_cli

pytestmark = pytest.mark.slow  # starts library workers

MODELS = ["seed", "strided", "same_pool", "tanh", "torch_script", "torch_dynamo", "blocks", "activations", "opset9", "graph",
          "layers", "keras"]


@pytest.fixture(scope="session")
def reports(zoo, tmp_path_factory):
    cache = {}

    def get(model):
        if model not in cache:
            path = SEED_MODEL if model == "seed" else zoo[model]
            out = tmp_path_factory.mktemp("reports") / f"{model}.json"
            args = ["verify", "equivalence", "--json", out] + ([] if model == "seed" else ["--model", path])
            proc = run_cli(*args)
            assert out.exists(), f"no report for {model}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            cache[model] = (proc, json.loads(out.read_text()))
        return cache[model]
    return get


@pytest.mark.parametrize("library", list(LIBRARIES))
@pytest.mark.parametrize("model", MODELS)
def test_library_matches_onnxruntime(reports, model, library):
    _, report = reports(model)
    row = report["libraries"][library]
    assert row["status"] == "pass", json.dumps({k: v for k, v in row.items() if k != "layers"}, indent=1)
    assert row["output"]["argmax_agree"] == row["output"]["samples"]
    assert row["versions"], "the report must name the library versions it ran"


@pytest.mark.parametrize("model", MODELS)
def test_cli_prints_all_six_passing_and_exits_0(reports, model):
    proc, report = reports(model)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(report["libraries"]) == list(LIBRARIES)
    table_rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "PASS" in line]
    assert len(table_rows) == len(LIBRARIES)
    if model == "seed":
        assert report["parameters"] == 1_250_858 and "CIFAR-10 test images" in report["inputs"]
