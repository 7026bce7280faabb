"""--progress: bars on a terminal, lines fit for a log file elsewhere (workers/progress.py), and what cli.train
writes to a captured stderr."""
import io
import json

import pytest

from tests.conftest import assert_one_line_error, run_cli, run_training
from trainers.plan import BadInput, TrainOptions
from workers import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_auto_is_a_bar_on_a_terminal_and_lines_elsewhere():
    assert progress.resolve("auto", Terminal()) == "bar"
    assert progress.resolve("auto", io.StringIO()) == "lines"
    assert progress.resolve("off", Terminal()) == "off"
    stream = Terminal()
    with progress.training("auto", "pytorch", progress.Work(3), stream) as shown:
        for step in range(3):
            shown.step({"epoch": 0, "step": step, "loss": 2.3})
    assert "\r" in stream.getvalue() and "3/3" in stream.getvalue()


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _steps(shown, clock, epoch, steps, seconds_each):
    for step in range(steps):
        clock.now += seconds_each
        shown.step({"epoch": epoch, "step": step, "loss": 2.0 - step / 100})


def test_lines_say_start_each_epoch_a_long_epoch_every_30_s_and_end():
    stream, clock = io.StringIO(), Clock()
    shown = progress.Lines("tflearn", progress.Work(400, 2, 6400), stream, clock=clock)
    _steps(shown, clock, 0, 200, 1.0)  # 200 s: a line at 30, 60, ... 180 s
    shown.epoch({"epoch": 0, "train_s": 200.0, "val_acc": 0.25})
    _steps(shown, clock, 1, 200, 0.1)  # 20 s: none within it
    shown.epoch({"epoch": 1, "train_s": 20.0, "val_acc": 0.3})
    shown.end("ok", 221.5)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "tflearn: started: 400 steps in 2 epoch(s)"
    assert len([line for line in lines if " step " in line]) == 6
    assert lines[-3] == "tflearn: epoch 1/2: 200 steps, loss 0.0100, val acc 0.250, 200.0 s, 32 images/s"
    assert lines[-2] == "tflearn: epoch 2/2: 200 steps, loss 0.0100, val acc 0.300, 220.0 s, 320 images/s"
    assert lines[-1] == "tflearn: ok after 221.5 s" and len(lines) == 10


def test_off_says_only_start_and_end_and_silent_nothing():
    stream, clock = io.StringIO(), Clock()
    shown = progress.training("off", "pytorch", progress.Work(400, 2), stream)
    shown.clock = clock
    _steps(shown, clock, 0, 200, 1.0)
    shown.epoch({"epoch": 0, "train_s": 200.0, "val_acc": 0.25})
    shown.end("crashed", 3.0)
    assert stream.getvalue().splitlines() == ["pytorch: started: 400 steps in 2 epoch(s)", "pytorch: crashed after 3.0 s"]
    quiet = io.StringIO()
    with progress.training(progress.SILENT, "pytorch", progress.Work(1), quiet) as shown:
        shown.step({"epoch": 0, "step": 0, "loss": 1.0})
        shown.end("ok", 1.0)
    assert quiet.getvalue() == ""


def test_a_cluster_s_jobs_are_a_line_each_off_a_terminal():
    stream = io.StringIO()
    with progress.Jobs("lines", 2, stream) as jobs:
        jobs.finished("pytorch seed 1", "ok")
        jobs.finished("tflearn seed 1", "timeout")
    assert stream.getvalue().splitlines() == ["jobs 1/2: pytorch seed 1 ok", "jobs 2/2: tflearn seed 1 timeout"]


def test_the_option_is_checked(tmp_path):
    with pytest.raises(BadInput, match="--progress must be one of auto, bar, lines, off"):
        TrainOptions(["pytorch"], progress="sometimes").check()
    assert_one_line_error(run_cli("cli.train", "pytorch", "--progress", "sometimes", "--out", tmp_path), "--progress")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_a_run_whose_stderr_is_no_terminal_writes_lines_not_frames(tmp_path, mode):
    """Not a terminal: auto is lines; off keeps only each library's start and end lines."""
    proc, folder, _ = run_training(tmp_path, "pytorch", "--epochs", "2", "--max-batches", "3", "--no-dropout",
                                "--progress", mode)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and len(proc.stderr.splitlines()) < 30, proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("pytorch: ")]
    epochs = [line for line in ours if line.startswith("pytorch: epoch ")]
    assert ours[0] == "pytorch: started: 6 steps in 2 epoch(s)" and ours[-1].startswith("pytorch: ok after ")
    if mode == "off":
        assert epochs == []
    else:
        assert [line.split(":")[1] for line in epochs] == [" epoch 1/2", " epoch 2/2"]
        assert all("3 steps, loss " in line and " images/s" in line for line in epochs), epochs
    assert json.loads((folder / "invocation.json").read_text())["options"]["progress"] == mode
