"""What an epoch cost and how disturbed the machine was meanwhile: one clock for the harness trainers and the plain
loops, read at the same boundaries (one epoch's training steps).

A span holds the wall time, this process's CPU time (user + system, all its threads: what noise from other
processes disturbs least), the machine's steal time (what the hypervisor gave other guests; /proc/stat) and the
CPU pressure stall time (how long some runnable task waited for a CPU; /proc/pressure/cpu "some"), all in
seconds. Steal and pressure are None where the kernel does not report them. Standard library only: the clock runs
in every worker environment.

In a benchmark whose harness and plain loop take turns (workers.turns), mark() waits for this process's turn and
span() passes it on once the time is read: the clock's boundaries are the turns' boundaries.
"""
from __future__ import annotations

import os
import time
from typing import NamedTuple

from workers.turns import TURN

STAT, PRESSURE = "/proc/stat", "/proc/pressure/cpu"


class Mark(NamedTuple):
    wall: float
    cpu: float
    steal: float | None
    pressure: float | None


def _steal_s() -> float | None:
    """Seconds of steal summed over the machine's CPUs since boot (the aggregate `cpu` line's 8th field)."""
    try:
        with open(STAT) as handle:
            fields = handle.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _pressure_s() -> float | None:
    """Seconds in which at least one runnable task waited for a CPU, since boot (PSI, microseconds there)."""
    try:
        with open(PRESSURE) as handle:
            some = handle.readline().split()
        return int(dict(f.split("=") for f in some[1:])["total"]) / 1e6
    except (OSError, KeyError, ValueError):
        return None


def _now() -> Mark:
    times = os.times()
    return Mark(time.perf_counter(), times.user + times.system, _steal_s(), _pressure_s())


def mark() -> Mark:
    TURN.take()
    return _now()


def span(start: Mark) -> dict:
    """{wall_s, cpu_s, steal_s, pressure_s} from `start` to now."""
    now = _now()
    TURN.pass_on()

    def delta(a, b):
        return None if a is None or b is None else b - a

    return {"wall_s": now.wall - start.wall, "cpu_s": now.cpu - start.cpu, "steal_s": delta(start.steal, now.steal),
            "pressure_s": delta(start.pressure, now.pressure)}
