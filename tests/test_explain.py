"""`python -m cli.explain` on a tiny setting (2 seeds, 1 epoch of 2 batches), its sweeps on a local Dask cluster."""
import json
import statistics

import pytest

from analysis import sweep
from builders import LIBRARIES
from tests.conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.slow  # starts library workers


@pytest.fixture(scope="session")
def explained(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain")
    proc = run_cli("cli.explain", "--seeds", "2", "--epochs", "1", "--max-batches", "2", "--executor", "dask",
                   "--out", out)
    (folder,) = [p for p in out.iterdir() if p.name.endswith("-explain-2017")]
    return proc, folder, json.loads((folder / "explain.json").read_text())


def test_explain_runs_three_sweeps_and_writes_its_report(explained):
    proc, folder, result = explained
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in folder.iterdir()} == {"explain.json", "explain.md", "explain.png"}
    text = (folder / "explain.md").read_text()
    assert text in proc.stdout
    for name in LIBRARIES:
        assert f"**{name}**: 2017 published" in text
    assert set(result["libraries"]) == set(LIBRARIES)
    assert "softmax applied twice" in text and "dropout never enabled" in text  # the 2017 scripts' own faults


def test_explain_figures_are_the_sweeps_figures(explained):
    proc, folder, result = explained
    for key, path in result["sweeps"].items():
        doc = json.loads((folder.parent / path.split("/")[-1] / "results.json").read_text())
        assert len(doc["seeds"]) == 2
        for name, row in result["libraries"].items():
            finals = sweep.finals(doc["runs"], name, "val_acc", 1)
            assert len(finals) == 2 and row["mean"][key] == pytest.approx(statistics.fmean(finals))
    pytorch = result["libraries"]["pytorch"]
    assert pytorch["defaults"] == pytest.approx(pytorch["mean"]["native"] - pytorch["mean"]["canonical"])
    assert pytorch["script"] == pytest.approx(0.35 - pytorch["mean"]["native"])


def test_identical_masks_leave_only_numerics(explained):
    proc, folder, result = explained
    identical, own = result["drift"]["identical"], result["drift"]["canonical"]
    assert identical["seeds"] == own["seeds"] == 2
    assert max(identical["per_epoch_worst"]) < 1e-4  # numerics: float32 noise
    assert min(own["per_epoch_median"]) > 1e-3  # own masks: randomness on top
    sweep_doc = json.loads((folder.parent / result["sweeps"]["identical"].split("/")[-1] / "results.json").read_text())
    for seed, rows in sweep_doc["runs"].items():  # dropout on, identical masks: all six agree step by step
        losses = [[s["loss"] for s in rows[name]["record"]["steps"]] for name in LIBRARIES]
        assert all(len(row) == 2 for row in losses), seed
        for step in zip(*losses):
            assert (max(step) - min(step)) / statistics.median(step) < 1e-4, (seed, step)


def test_explain_refuses_folders_that_are_not_its_sweeps(tmp_path, explained):
    proc, folder, result = explained
    proc = run_cli("cli.explain", "--reuse", folder, folder, folder, "--out", tmp_path)
    assert_one_line_error(proc, "not a readable results file")
    proc = run_cli("cli.explain", "--seeds", "1", "--out", tmp_path)
    assert proc.returncode == 2 and "--seeds must be at least 2" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
