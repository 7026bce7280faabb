"""Seed sweeps: statistics of our own making checked against known answers, the sweep CLI, the Dask executor."""
import math

import numpy as np
import pytest

from analysis import sweep
from analysis.report import load_tolerances
from spec import training
from tests.conftest import run_cli, run_training


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


def _exact(n: int, mean: float, sd: float, seed: int) -> list:
    """n values whose sample mean and sd are exactly `mean` and `sd`."""
    z = np.random.default_rng(seed).standard_normal(n)
    return list(mean + sd * (z - z.mean()) / z.std(ddof=1))


def _pair(finals: dict, pair_by_seed: bool = False) -> dict:
    rules = load_tolerances()["significance"]
    (pair,) = sweep.significance(_runs(finals), list(finals), 1, rules, pair_by_seed=pair_by_seed)["metrics"]["val_acc"]
    return pair


def _simulated_power(test, sds: tuple, shift: float, n: int) -> float:
    """Share of `test`'s rejections at alpha over 20,000 simulated sweeps whose true difference is `shift`
    (scipy.stats.power: scipy's own simulation, independent of the noncentral-t algebra)."""
    from scipy import stats

    rng = np.random.default_rng(11)
    alpha = load_tolerances()["significance"]["alpha"]
    samplers = (lambda size: rng.normal(shift, sds[0], size), lambda size: rng.normal(0.0, sds[1], size))
    return float(stats.power(lambda x, y, axis=-1: test(x, y, axis=axis).pvalue, samplers, (n, n),
                             significance=alpha, n_resamples=20_000, vectorized=True).power)


def test_detectable_difference_matches_cohens_table():
    # Cohen (1988), table 2.4.1: 64 per group detect d = 0.5 with 80% power at alpha 0.05, two-sided
    pair = _pair({"a": _exact(64, 0.5, 1.0, 1), "b": _exact(64, 0.0, 1.0, 2)})
    assert pair["test"] == "welch" and pair["mdd"] == pytest.approx(0.5, abs=0.005)
    assert pair["mdd_strict"] == pair["mdd"]  # one pair: alpha/m is alpha


def test_the_stated_detectable_difference_is_rejected_80_percent_of_the_time():
    from scipy import stats

    # the case: 5 seeds, sds 0.02 and 0.04, a difference of 0.01 that is not significant
    welch = _pair({"a": _exact(5, 0.42, 0.02, 3), "b": _exact(5, 0.41, 0.04, 4)})
    assert not welch["significant"] and 0.06 < welch["mdd"] < 0.075
    power = _simulated_power(lambda x, y, axis: stats.ttest_ind(x, y, equal_var=False, axis=axis),
                             (0.02, 0.04), welch["mdd"], 5)
    assert power == pytest.approx(0.8, abs=0.025), power  # the approximation's known small optimism
    assert _simulated_power(lambda x, y, axis: stats.ttest_ind(x, y, equal_var=False, axis=axis),
                            (0.02, 0.04), 0.5 * welch["mdd"], 5) < 0.4  # and it is not a loose bound
    # paired: the test is on per-seed differences; independent libraries make their sd sqrt(0.02² + 0.03²)
    a = _exact(5, 0.42, 0.02, 5)
    b = [x - d for x, d in zip(a, _exact(5, 0.01, float(np.hypot(0.02, 0.03)), 6))]
    paired = _pair({"a": a, "b": b}, pair_by_seed=True)
    assert paired["test"] == "paired" and paired["n"] == 5 and not paired["significant"]
    power = _simulated_power(lambda x, y, axis: stats.ttest_rel(x, y, axis=axis), (0.02, 0.03), paired["mdd"], 5)
    assert power == pytest.approx(0.8, abs=0.015), power  # exact for the paired test


def test_two_seeds_give_a_finite_detectable_difference():
    from scipy import stats

    # two seeds each: Welch's df is near 1, where the noncentral t's lower tail came out NaN and stopped the run
    two, five = (_pair({"a": _exact(n, 0.42, 0.02, 15), "b": _exact(n, 0.41, 0.04, 16)}) for n in (2, 5))
    assert two["df"] < 2 and math.isfinite(two["mdd"]) and math.isfinite(two["mdd_strict"])
    assert two["mdd"] > 2 * five["mdd"]
    paired = _pair({"a": [0.40, 0.44], "b": [0.41, 0.42]}, pair_by_seed=True)  # df 1
    power = _simulated_power(lambda x, y, axis: stats.ttest_rel(x, y, axis=axis),
                             (0.0, float(np.std([-0.01, 0.02], ddof=1))), paired["mdd"], 2)
    assert power == pytest.approx(0.8, abs=0.015), power


def test_detectable_difference_stands_beside_every_not_significant_verdict():
    rules = load_tolerances()["significance"]
    finals = {"a": _exact(5, 0.42, 0.02, 7), "b": _exact(5, 0.41, 0.03, 8), "c": _exact(5, 0.30, 0.02, 9)}
    sig = sweep.significance(_runs(finals), ["a", "b", "c"], 1, rules)
    pairs = {(p["a"], p["b"]): p for p in sig["metrics"]["val_acc"]}
    assert not pairs[("a", "b")]["significant"] and pairs[("a", "c")]["significant"]
    # Holm's strictest threshold is alpha/3: it needs a larger difference
    assert pairs[("a", "b")]["mdd_strict"] > pairs[("a", "b")]["mdd"] > 0
    rows = {line.split(" | ")[0]: line for line in sweep._significance_lines("val_acc", sig["metrics"]["val_acc"], sig)
            if line.startswith(("| a − ", "| b − "))}
    mdd = pairs[("a", "b")]
    assert f"| no | ≥ {mdd['mdd']:.4f} ({mdd['mdd_strict']:.4f}) |" in rows["| a − b"]
    assert rows["| a − c"].endswith("| yes | - |")


def test_paired_runs_get_the_paired_test():
    from scipy import stats

    # a seed's own effect (sd 0.03) shared by both libraries, and a steady 0.01 between them
    shared = _exact(5, 0.42, 0.03, 10)
    a, b = shared, [x - 0.01 + e for x, e in zip(shared, _exact(5, 0.0, 0.002, 11))]
    paired, welch = _pair({"a": a, "b": b}, pair_by_seed=True), _pair({"a": a, "b": b})
    assert paired["test"] == "paired" and paired["significant"]
    assert paired["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert welch["test"] == "welch" and not welch["significant"]  # the shared seed effect swamps it
    # which sweeps pair: the same masks at a seed (harness-drawn, or none), not each library's own
    assert sweep.paired({"dropout": True, "dropout_masks": "harness"})
    assert sweep.paired({"dropout": False, "dropout_masks": "library"})
    assert not sweep.paired({"dropout": True, "dropout_masks": "library"})


def test_paired_test_uses_only_the_seeds_both_libraries_finished():
    from scipy import stats

    a, b = _exact(5, 0.42, 0.03, 12), _exact(5, 0.40, 0.03, 13)
    runs = _runs({"a": a, "b": b})
    runs["4"]["b"]["status"] = "failed"
    (pair,) = sweep.significance(runs, ["a", "b"], 1, load_tolerances()["significance"],
                                 pair_by_seed=True)["metrics"]["val_acc"]
    assert (pair["n_a"], pair["n_b"], pair["n"]) == (5, 4, 4)
    assert pair["p"] == pytest.approx(stats.ttest_rel(a[:4], b[:4]).pvalue, rel=1e-12)


def test_deterministic_libraries_that_differ_are_different():
    welch = _pair({"a": [0.3, 0.3, 0.3], "b": [0.31, 0.31, 0.31]})
    assert welch["significant"] and welch["p"] == 0.0 and "deterministic: differ by -0.01" in welch["note"]
    assert welch["ci95"] == pytest.approx([-0.01, -0.01])
    shared = _exact(4, 0.42, 0.03, 14)  # paired: the same difference at every seed
    paired = _pair({"a": shared, "b": [x + 0.02 for x in shared]}, pair_by_seed=True)
    assert paired["significant"] and "deterministic: differ by -0.02" in paired["note"]
    same = _pair({"a": shared, "b": list(shared)}, pair_by_seed=True)
    assert not same["significant"] and same["mdd"] == 0.0 and "equal at every seed" in same["note"]


def test_seeded_initial_weights_reproduce_the_seed_model_at_its_own_seed():
    from spec.onnx_import import import_model
    from spec.seed_model import DEFAULT_PATH, SEED

    spec = import_model(DEFAULT_PATH)
    same, other = training.reinitialised(spec, SEED), training.reinitialised(spec, SEED + 1)
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


@pytest.mark.slow
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
    assert pair["test"] == "welch" and pair["mdd"] is not None  # own dropout: seeds do not pair
    table = (folder / "results.md").read_text()
    assert "Welch" in table and "Holm" in table and "| pytorch | 2/2 |" in table and "| detectable |" in table


@pytest.mark.slow
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
