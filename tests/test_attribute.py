"""`python -m cli.attribute`: seed sweeps in canonical, native and single-departure BatchNorm modes, paired by seed,
and the attribution of each native gap to the departures that caused it."""
import json

import pytest

from tests.conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.slow  # starts library workers


@pytest.fixture(scope="module")
def attributed(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("attribute") / "results"
    proc = run_cli("cli.attribute", "pytorch", "tensorflow", "--model", zoo["batchnorm"], "--experiment",
                   "seed-2017", "--seeds", "2", "--epochs", "1", "--max-batches", "2", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (folder,) = [f for f in out.iterdir() if f.name.endswith("-attribute-batchnorm")]
    return proc, folder, json.loads((folder / "attribution.json").read_text())


def test_each_library_gets_a_sweep_of_every_departure_it_has(attributed):
    _, _, result = attributed
    # the zoo net: epsilon 1e-3, momentum 0.9 and 0.8. PyTorch's native layer departs in all three (momentum 0.9 on
    # the 0.8 node, epsilon 1e-5, unbiased running variance), tf.keras's only in momentum (0.99; its epsilon is 1e-3)
    assert set(result["sweeps"]) == {"canonical", "native", "momentum", "epsilon", "running-variance"}
    rows = result["metrics"]["val_loss"]
    assert set(rows["pytorch"]["alone"]) == {"momentum", "epsilon", "running-variance"}
    assert set(rows["tensorflow"]["alone"]) == {"momentum"}


def test_a_single_departure_explains_all_of_a_gap_made_of_it_alone(attributed):
    """tf.keras's native layer differs from canonical only in momentum: its momentum-alone sweep is its native
    sweep, so that departure explains the whole gap (remainder 0 to float noise), and the gap is not nothing."""
    _, _, result = attributed
    row = result["metrics"]["val_loss"]["tensorflow"]
    assert row["alone"]["momentum"]["mean_diff"] == pytest.approx(row["gap"]["mean_diff"], rel=1e-4, abs=1e-6)
    assert abs(row["remainder"]) <= 1e-4 * abs(row["gap"]["mean_diff"]) + 1e-6
    assert abs(row["gap"]["mean_diff"]) > 1e-3  # momentum 0.99 leaves the running statistics near their start


def test_the_report_is_printed_and_written(attributed):
    proc, folder, _ = attributed
    text = (folder / "attribution.md").read_text()
    assert text in proc.stdout
    assert "| tensorflow | momentum 0.99 (canonical 0.9) |" in text


def test_a_sweep_of_another_mode_is_refused_in_one_line(attributed, tmp_path):
    _, _, result = attributed
    canonical = result["sweeps"]["canonical"]
    proc = run_cli("cli.attribute", "pytorch", "--reuse", f"canonical={canonical}", f"native={canonical}",
                   "--out", tmp_path)
    assert_one_line_error(proc, "not a seed sweep with --batchnorm native")
