"""workers.run, the one function that starts a worker: each way a worker can end becomes its Status and reason,
with real processes (tests/worker_probe.py) in the main environment."""
import json
import os
import signal
import time

import pytest

import envs
import workers
from workers import ExitCode, Status, lifeline, results

PROBE = "tests.worker_probe"


def _run(tmp_path, *args, timeout=60, on_line=None):
    return workers.run(PROBE, list(args), "main", timeout, tmp_path / "probe.log", on_line)


@pytest.mark.parametrize("args,status,reason", [
    (["ok"], Status.OK, ""),
    (["exit", ExitCode.UNSUPPORTED], Status.UNSUPPORTED, "reason 3"),
    (["exit", ExitCode.NON_FINITE], Status.NAN, "reason 4"),
    (["exit", ExitCode.FAILED], Status.CRASHED, "worker exit 1: reason 1"),
    (["exit", 7], Status.CRASHED, "worker exit 7: reason 7"),
    (["kill"], Status.CRASHED, "worker killed by SIGKILL")])
def test_each_exit_becomes_its_status_and_reason(tmp_path, args, status, reason):
    outcome = _run(tmp_path, *args)
    assert (outcome.status, outcome.reason) == (status, reason)
    assert outcome.wall_s > 0


def test_a_worker_past_its_time_limit_is_killed(tmp_path):
    lines = []
    started = time.perf_counter()
    outcome = _run(tmp_path, "sleep", timeout=2, on_line=lines.append)
    assert outcome.status == Status.TIMEOUT and "no result within 2 s; worker killed" == outcome.reason
    assert time.perf_counter() - started < 30
    with pytest.raises(ProcessLookupError):
        os.kill(int(lines[0]), 0)


def test_stdout_lines_reach_the_callback_and_stderr_the_log(tmp_path):
    lines = []
    outcome = _run(tmp_path, "ok", on_line=lines.append)
    assert outcome.status == Status.OK and lines[1:] == ["first", "second"]
    assert (tmp_path / "probe.log").read_text() == "a line on stderr\n"


def test_without_a_callback_stdout_goes_to_the_log_too(tmp_path):
    assert _run(tmp_path, "ok").status == Status.OK
    assert {"first", "second", "a line on stderr"} <= set((tmp_path / "probe.log").read_text().splitlines())


def test_a_failing_callback_costs_the_row_but_the_pipe_is_still_drained(tmp_path):
    # 100,000 lines are far more than a pipe holds: a reader that stopped would leave the worker blocked
    def on_line(line):
        raise ValueError(f"cannot read {line[:5]!r}")
    outcome = _run(tmp_path, "flood", 100_000, timeout=60, on_line=on_line)
    assert outcome.status == Status.CRASHED
    assert outcome.reason == "worker wrote a malformed result (cannot read 'xxxxx')"


def test_an_interrupted_wait_kills_the_worker_and_passes_the_interruption_on(tmp_path):
    lines = []

    def interrupt(signum, frame):
        raise lifeline.Interrupted(signum)
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 3)
    try:
        with pytest.raises(lifeline.Interrupted):
            _run(tmp_path, "sleep", timeout=60, on_line=lines.append)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with pytest.raises(ProcessLookupError):
        os.kill(int(lines[0]), 0)
    assert lifeline.stop_all() == 0  # released: nothing left to stop


def test_a_worker_that_cannot_start_fails_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(envs, "ensure", lambda name: tmp_path / "vanished" / "bin" / "python")
    outcome = _run(tmp_path, "ok")
    assert outcome.status == Status.FAILED and outcome.reason.startswith("cannot start the worker: ")


def test_statuses_and_exit_codes_are_plain_json_and_exit_statuses():
    assert json.loads(json.dumps({"s": Status.NOT_VERIFIED})) == {"s": "not verified"}
    assert f"{Status.PASS}".upper() == "PASS"
    assert ExitCode.of_signal(signal.SIGINT) == ExitCode.INTERRUPTED == 130
    assert ExitCode.of_signal(signal.SIGTERM) == ExitCode.TERMINATED == 143


def test_text_helpers():
    assert workers.last_line("a\n  b  \n\n") == "b" and workers.last_line("") == "no message"
    assert workers.first_line(ValueError("x\ny")) == "x" and workers.first_line(KeyError()) == "KeyError"
    assert [workers.number(v, ".2f") for v in (None, float("nan"), 1.234)] == ["-", "-", "1.23"]


def test_result_files_are_complete_or_absent(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    results.write_json(target, {"a": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        results.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}  # the old complete file, not a half-new one
    with pytest.raises(OSError):
        with results.atomic_file(tmp_path / "new.npz") as handle:
            handle.write(b"half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
