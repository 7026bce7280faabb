"""The importer fuzz (tests/fuzz_onnx.py), bounded for CI, and mutated models through the real CLI.
A longer run on demand: `python -m tests.fuzz_onnx --examples 20000 --seed 7`, or XV_FUZZ_EXAMPLES here."""
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzz_onnx
from tests.conftest import run_cli

EXAMPLES = int(os.environ.get("XV_FUZZ_EXAMPLES", "1500"))


def test_mutated_models_are_imported_and_run_or_refused_with_one_line():
    counts = fuzz_onnx.fuzz(EXAMPLES)  # raises, with the smallest failing mutation, on any other outcome
    cases = counts["imported and ran"] + counts["refused"]
    assert cases >= EXAMPLES and counts["imported and ran"] > 0 and counts["refused"] > 0, counts
    applied = {key[len("mutation "):] for key in counts if key.startswith("mutation ")}
    assert applied == {m.__name__[2:] for m in fuzz_onnx.STRUCTURAL} | {"bytes"}, applied


@pytest.mark.slow
def test_the_cli_ends_mutated_models_with_exit_0_1_or_2_and_a_clear_line(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-fuzz")
    seeds = fuzz_onnx.seed_models(folder / "seeds")
    (folder / "data.bin").write_bytes(fuzz_onnx.DATA_BIN)
    seen = set()

    @settings(max_examples=6, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def cli_property(data):
        raw, _ = fuzz_onnx.mutated_model(data, seeds)
        path = Path(folder) / "model.onnx"
        path.write_bytes(raw)
        proc = run_cli("verify", "equivalence", "--model", path, "--libraries", "pytorch", timeout=600)
        assert proc.returncode in (0, 1, 2), proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
        if proc.returncode == 2:
            assert last.startswith("error: ") and str(path) in last, last
        seen.add(proc.returncode)

    cli_property()
    assert 2 in seen
