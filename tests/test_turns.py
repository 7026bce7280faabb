"""workers.turns with real processes: two workers timed by workers.clock train one epoch at a time, alternating,
the first role first; without the referee they overlap (the control); a worker that dies or never comes does not
block the other; the turn passes only once the passing process's threads are idle."""
import json
import subprocess
import sys
import threading
import time

import pytest

from workers import spawn, turns

# a "worker": `epochs` epochs of `busy` seconds of CPU between clock.mark() and clock.span(), each epoch's start and
# end on the machine's clock; exits after `die_after` epochs when given
CHILD = """
import json, sys, time
from workers import clock
epochs, busy, die_after = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
spans = []
for epoch in range(epochs):
    if epoch == die_after:
        sys.exit(3)
    started = clock.mark()
    begin = time.time()
    while time.time() - begin < busy:
        pass
    spans.append((begin, time.time()))
    clock.span(started)
print(json.dumps(spans))
"""


def _start(extra: dict, epochs: int = 4, busy: float = 0.15, die_after: int = -1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(epochs), str(busy), str(die_after)],
                            env=spawn.worker_env(extra=extra), stdout=subprocess.PIPE, text=True)


def _side_by_side(referee, roles=("harness", "plain"), **kwargs) -> dict:
    """{role: [(start, end) of each epoch]} of one worker per role, run at once under `referee` (None: none)."""
    procs = {role: _start(referee.env(role) if referee else {}, **kwargs.get(role, {})) for role in roles}
    spans = {}

    def wait(role):
        out, _ = procs[role].communicate(timeout=60)
        spans[role] = json.loads(out) if procs[role].returncode == 0 else procs[role].returncode
        if referee:
            referee.gone(role)

    waiting = [threading.Thread(target=wait, args=(role,)) for role in roles]
    for thread in waiting:
        thread.start()
    for thread in waiting:
        thread.join()
    return spans


def _overlaps(spans: dict) -> int:
    a, b = spans.values()
    return sum(1 for s in a for t in b if s[0] < t[1] and t[0] < s[1])


def test_two_workers_take_turns_epoch_by_epoch_the_first_role_first():
    with turns.Referee(["harness", "plain"]) as referee:
        spans = _side_by_side(referee)
    assert _overlaps(spans) == 0
    order = sorted((start, role) for role, epochs in spans.items() for start, _ in epochs)
    assert [role for _, role in order] == ["harness", "plain"] * 4


def test_without_a_referee_the_same_workers_overlap():  # the control: the test above can fail
    spans = _side_by_side(None)
    assert _overlaps(spans) > 0


def test_a_worker_that_dies_or_never_comes_does_not_block_the_other():
    with turns.Referee(["harness", "plain"]) as referee:
        started = time.perf_counter()
        spans = _side_by_side(referee, plain={"die_after": 1})
        assert spans["plain"] == 3 and len(spans["harness"]) == 4
        assert time.perf_counter() - started < 30
    with turns.Referee(["harness", "plain"]) as referee:
        referee.gone("plain")  # its process ended before it connected
        spans = _side_by_side(referee, roles=("harness",))
        assert len(spans["harness"]) == 4


@pytest.mark.parametrize("spinning", [0.4, 0.0])
def test_the_turn_passes_once_the_process_threads_are_idle(spinning):
    def spin():
        end = time.perf_counter() + spinning
        while time.perf_counter() < end:
            pass

    helper = threading.Thread(target=spin)
    helper.start()
    waited = turns.settle()
    spun_on = helper.is_alive()
    helper.join()
    if spinning:
        assert waited >= 0.3 and not spun_on
    else:
        assert waited < 0.2


# where glibc put a 64 MiB block: "heap" (the brk heap) or "mmap" (a mapping of its own, glibc's default for blocks
# over its mmap threshold)
PROBE = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
address = libc.malloc(64 << 20)
heaps = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
print("heap" if any(int(lo, 16) <= address < int(hi, 16) for lo, hi in heaps) else "mmap")
"""


def _where_malloc_puts_a_large_block(extra: dict) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env=spawn.worker_env(extra=extra), capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def test_both_sides_run_with_the_same_fixed_malloc_threshold(monkeypatch):
    for key in turns.ALLOCATOR:
        monkeypatch.delenv(key, raising=False)
    with turns.Referee(["harness", "plain"]) as referee:
        where = {role: _where_malloc_puts_a_large_block(referee.env(role)) for role in ("harness", "plain")}
    assert where == {"harness": "heap", "plain": "heap"}
    assert _where_malloc_puts_a_large_block({}) == "mmap"  # the control: glibc's default maps a block that large


def test_a_users_own_malloc_setting_is_kept_for_both_sides(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert turns.allocator() == {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "-1"}
    with turns.Referee(["harness", "plain"]) as referee:
        assert {_where_malloc_puts_a_large_block(referee.env(role)) for role in ("harness", "plain")} == {"mmap"}
