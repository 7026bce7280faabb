import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED_MODEL = ROOT / "spec" / "seed_cnn.onnx"


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the longest-first order below, not its own
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    from tests import durations

    items[:] = durations.longest_first(items, durations.load())


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """The test CNNs of tests/model_zoo.py, written once per session: name -> path."""
    from tests import model_zoo

    return model_zoo.write_all(tmp_path_factory.mktemp("zoo"))


def run_cli(*args, env=None, cwd=ROOT, timeout=1800):
    """Run `python -m <args>` as a user would; returns the CompletedProcess (text)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    """A user error: exit 2, a single 'error:' line naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def run_training(tmp_path, *args, env=None):
    """`python -m cli.train ARGS --out tmp_path/results`: (process, its results folder, results.json)."""
    out = tmp_path / "results"
    proc = run_cli("cli.train", *args, "--out", out, env=env)
    folders = list(out.iterdir()) if out.exists() else []
    assert len(folders) == 1, proc.stdout + proc.stderr
    return proc, folders[0], json.loads((folders[0] / "results.json").read_text())


@pytest.fixture(scope="session")
def canonical_run(tmp_path_factory):
    """All six libraries, canonical RMSprop, dropout off, one epoch of 3 batches."""
    return run_training(tmp_path_factory.mktemp("canonical"), "all", "--epochs", "1", "--max-batches", "3",
                        "--no-dropout")
