"""Fast paths (builders.FAST_PATHS): named like libraries, verified before they are timed, and training the same
arithmetic as the library they speed up. The planted channels_last bug is in test_negative_controls."""
import json

import pytest

from analysis.report import load_tolerances
from builders import FAST_PATHS, LIBRARIES, select
from tests.conftest import assert_one_line_error, run_cli, run_training

pytestmark = pytest.mark.slow  # starts library workers


def test_fast_paths_are_chosen_by_name_and_never_part_of_all():
    assert select(["all"]) == list(LIBRARIES)
    assert select(["fast-paths"]) == list(FAST_PATHS)
    assert select(["pytorch+compile", "all", "fast-paths"]).count("pytorch+compile") == 1
    with pytest.raises(ValueError, match="fast-paths"):
        select(["pytorch+jit"])


def test_an_unknown_fast_path_is_one_line_exit_2(tmp_path):
    proc = run_cli("cli.train", "pytorch+jit", "--out", tmp_path)
    assert_one_line_error(proc, "pytorch+jit", "pytorch+compile")
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    bases = sorted({fast.base for fast in FAST_PATHS.values()})
    return run_training(tmp_path_factory.mktemp("fast"), *bases, "fast-paths", "--epochs", "1", "--max-batches", "3",
                        "--no-dropout")


def test_every_fast_path_is_verified_and_runs_what_it_says(fast_run):
    proc, folder, run = fast_run
    assert proc.returncode == 0, proc.stderr
    verified = json.loads((folder / "verification.json").read_text())["libraries"]
    for name in FAST_PATHS:
        assert verified[name]["status"] == "pass", (name, verified[name])
        assert run["libraries"][name]["status"] == "ok", (name, run["libraries"][name]["reason"])
    for name, backend, package in (("keras-jax", "jax", "jaxlib"), ("keras-torch", "torch", "torch")):
        for versions in (verified[name]["versions"], run["libraries"][name]["record"]["versions"]):
            assert versions["keras backend"] == backend and package in versions, versions
    table = (folder / "results.md").read_text()
    assert all(f"| {name} | ok |" in table for name in FAST_PATHS)


def test_each_fast_path_trains_the_same_arithmetic_as_its_library(fast_run):
    _, _, run = fast_run
    rtol = load_tolerances()["step_loss_rtol"]
    for name, fast in FAST_PATHS.items():
        ours = [s["loss"] for s in run["libraries"][name]["record"]["steps"]]
        base = [s["loss"] for s in run["libraries"][fast.base]["record"]["steps"]]
        assert len(ours) == len(base) == 3
        assert ours == pytest.approx(base, rel=rtol), name
    assert run["step_agreement"]["agree"], run["step_agreement"]
