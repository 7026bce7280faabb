"""Seed sweeps: statistics of our own making checked against known answers, the sweep CLI, the Dask executor."""
import math

import numpy as np
import pytest

from analysis import sweep
from analysis.report import load_tolerances
from tests.conftest import run_cli, run_training
from trainers import harness


def _runs(finals: dict) -> dict:
    """A sweep's runs holding only what the statistics read: per seed, per library, one finished epoch."""
    seeds = len(next(iter(finals.values())))
    return {str(s): {name: {"status": "ok", "record": {"epochs": [{"val_acc": v[s], "val_loss": 1 - v[s]}],
                                                         "steps": []}}
                     for name, v in finals.items()} for s in range(seeds)}


def test_holm_adjustment_matches_its_definition():
    # sorted p 0.01, 0.02, 0.04 with m = 3: 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04
    assert np.allclose(sweep.holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])
    assert sweep.holm([0.5, 0.9]) == [1.0, 1.0]
    adjusted = sweep.holm([float("nan"), 0.01])
    assert math.isnan(adjusted[0]) and adjusted[1] == 0.01  # NaN neither counted nor adjusted


def test_a_real_difference_is_significant_and_noise_is_not():
    rng = np.random.default_rng(0)
    base = list(0.40 + 0.01 * rng.standard_normal(6))
    runs = _runs({"a": base, "b": [v + 0.001 * s for s, v in enumerate(base)], "c": [v - 0.05 for v in base]})
    rules = load_tolerances()["significance"]
    pairs = {(p["a"], p["b"]): p for p in sweep.significance(runs, ["a", "b", "c"], 1, rules)["metrics"]["val_acc"]}
    assert pairs[("a", "c")]["significant"] and pairs[("b", "c")]["significant"]
    assert not pairs[("a", "b")]["significant"]
    assert pairs[("a", "c")]["ci95"][0] < 0.05 < pairs[("a", "c")]["ci95"][1]
    from scipy import stats  # the p-value is Welch's, before correction
    assert math.isclose(pairs[("a", "c")]["p"], stats.ttest_ind(base, [v - 0.05 for v in base], equal_var=False).pvalue)


def test_identical_libraries_are_reported_untestable_not_different():
    runs = _runs({"a": [0.3, 0.3], "b": [0.3, 0.3]})
    (pair,) = sweep.significance(runs, ["a", "b"], 1, load_tolerances()["significance"])["metrics"]["val_acc"]
    assert pair["significant"] is False and "no variance" in pair["note"]


def test_seeded_initial_weights_reproduce_the_seed_model_at_its_own_seed():
    from spec.onnx_import import import_model
    from spec.seed_model import DEFAULT_PATH, SEED

    spec = import_model(DEFAULT_PATH)
    same, other = harness.reinitialised(spec, SEED), harness.reinitialised(spec, SEED + 1)
    for key, value in spec.weights.items():
        assert np.array_equal(same.weights[key], value)
        if key.endswith(".weight"):
            assert not np.array_equal(other.weights[key], value)
            assert other.weights[key].std() == pytest.approx(value.std(), rel=0.05)  # same distribution


@pytest.fixture(scope="session")
def local_and_dask(tmp_path_factory):
    """The same small sweep (2 seeds, 1 epoch of 2 batches, one thread per job) run here and on a local Dask
    cluster; two libraries from the two environments."""
    args = ["pytorch", "keras-theano", "--seeds", "2", "--epochs", "1", "--max-batches", "2", "--threads", "1",
            "--init", "seeded"]
    local = run_training(tmp_path_factory.mktemp("local"), *args)
    dask = run_training(tmp_path_factory.mktemp("dask"), *args, "--executor", "dask", "--workers", "2")
    return local, dask


def test_a_sweep_reports_spread_and_significance(local_and_dask):
    (proc, folder, run), _ = local_and_dask
    assert proc.returncode == 0, proc.stderr
    assert run["seeds"] == [2017, 2018] and set(run["runs"]) == {"2017", "2018"}
    for name in ("pytorch", "keras-theano"):
        assert run["sweep"][name]["seeds_ok"] == 2 and run["sweep"][name]["val_acc"]["sd"] is not None
    assert "initial weights (redrawn from each seed)" in run["varies"]
    (pair,) = run["significance"]["metrics"]["val_acc"]
    assert {pair["a"], pair["b"]} == {"pytorch", "keras-theano"} and "p_adjusted" in pair
    assert {p.name for p in folder.iterdir()} >= {"results.json", "results.md", "curves.png", "verification.json",
                                                  "pytorch.seed2017.stderr.log", "keras-theano.seed2018.stderr.log"}
    table = (folder / "results.md").read_text()
    assert "Welch" in table and "Holm" in table and "| pytorch | 2/2 |" in table


def test_dask_executor_gives_the_local_results(local_and_dask):
    (_, _, local), (proc, folder, dask) = local_and_dask
    assert proc.returncode == 0, proc.stderr
    assert "dask: 4 jobs" in proc.stderr
    for seed, rows in local["runs"].items():
        for name, row in rows.items():
            remote = dask["runs"][seed][name]
            assert remote["executor"]["kind"] == "dask" and row["executor"]["kind"] == "local"
            assert [s["loss"] for s in remote["record"]["steps"]] == pytest.approx(
                [s["loss"] for s in row["record"]["steps"]], rel=1e-6), (seed, name)
            assert remote["record"]["epochs"][0]["val_loss"] == pytest.approx(row["record"]["epochs"][0]["val_loss"],
                                                                              rel=1e-6)
    assert "shared cluster" in (folder / "results.md").read_text()
    # the seeds differ in their initial weights, so their first losses differ
    assert local["runs"]["2017"]["pytorch"]["record"]["steps"][0]["loss"] != \
        local["runs"]["2018"]["pytorch"]["record"]["steps"][0]["loss"]


def test_sweep_options_are_checked():
    proc = run_cli("cli.train", "pytorch", "--seeds", "0")
    assert proc.returncode == 2 and "--seeds must be at least 1" in proc.stderr
    proc = run_cli("cli.train", "pytorch", "--scheduler", "tcp://127.0.0.1:1")
    assert proc.returncode == 2 and "--scheduler needs --executor dask" in proc.stderr
