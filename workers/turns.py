"""Epoch-by-epoch turns: a benchmark runs a library's harness and its plain loop side by side, each in its own
process as before, and lets only one of them train at a time: harness epoch 1, plain epoch 1, harness epoch 2,
... Adjacent epochs share the machine's moment, so their ratio cancels the drift that makes whole runs minutes
apart differ by ±10 % on a shared VM.

The orchestrator holds a Referee (a Unix socket and a thread per process); a worker whose environment names the
socket (ENV, "<path>#<role>") takes its turn in workers.clock.mark() and passes it on in workers.clock.span(),
which then waits for the turn to come back, so that whatever the process does between epochs (evaluation, events)
also happens while the other one waits. A role whose process has ended, or never connected, is skipped; a lost
referee lets the workers run freely. Standard library only on the worker side: it runs in every environment.

Both processes also get the same fixed malloc settings (ALLOCATOR), so that each one's speed does not hang on its own
allocation history; see allocator().
"""
from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path

ENV = "BENCH_TURNS"
TAKE, PASS, GO = b"T", b"P", b"G"
# Idle: under 10 % of a core over 20 ms. A numeric library's worker threads spin for a while after their last task
# (OpenMP's block time: 200 ms with Intel's runtime); passing the turn earlier would hand the other process a machine
# whose cores are still busy, and make whoever runs second look slower.
IDLE_WINDOW_S, IDLE_CPU_S, SETTLE_LIMIT_S = 0.02, 0.002, 2.0
# glibc serves a large block with mmap until a block that size is freed, then raises its threshold (its dynamic
# mmap threshold), so how often a process page-faults per step depends on what it allocated before. Measured on the
# seed CNN's PyTorch harness/plain ratio, 12 runs each, interleaved (docs/results/2026-12-03-allocator.md): run-to-run
# spread (sd of log ratio) 0.087 with glibc's defaults, 0.034 with these; every step ~13 % faster on both sides.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "-1"}


def allocator() -> dict:
    """The malloc settings both sides run with: ALLOCATOR, except where the user's environment sets its own."""
    return {key: os.environ.get(key, value) for key, value in ALLOCATOR.items()}


class Referee:
    """Grants turns to `roles` in cyclic order, the first role first; `env(role)` is what that role's worker needs
    in its environment; `gone(role)` when its process has ended (also noticed when its connection closes)."""

    def __init__(self, roles: list):
        self.roles, self.live, self.turn = list(roles), set(roles), 0
        self.cond = threading.Condition()
        self.folder = tempfile.TemporaryDirectory(prefix="turns-")
        self.path = str(Path(self.folder.name) / "referee.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(len(roles))
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def env(self, role: str) -> dict:
        return {ENV: f"{self.path}#{role}", **allocator()}

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        role = None
        with conn:
            reader = conn.makefile("rb")
            role = reader.readline().decode().strip()
            if role not in self.roles:
                return
            while message := reader.read(1):
                if message == TAKE:
                    with self.cond:
                        self.cond.wait_for(lambda: self.closed or self.roles[self.turn] == role)
                    conn.sendall(GO)
                elif message == PASS:
                    with self.cond:
                        self._advance(role)
        self.gone(role)

    def _advance(self, role: str) -> None:
        """The turn to the next live role after `role` (back to `role` when it is the only one left)."""
        if self.roles[self.turn] != role:
            return
        for step in range(1, len(self.roles) + 1):
            candidate = (self.turn + step) % len(self.roles)
            if self.roles[candidate] in self.live or step == len(self.roles):
                self.turn = candidate
                break
        self.cond.notify_all()

    def gone(self, role: str) -> None:
        with self.cond:
            self.live.discard(role)
            self._advance(role)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.close()
        self.folder.cleanup()

    def __enter__(self) -> Referee:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def settle() -> float:
    """Wait until this process's threads use less than IDLE_CPU_S per IDLE_WINDOW_S (at most SETTLE_LIMIT_S);
    the seconds waited."""
    started = time.perf_counter()
    before = _cpu_s()
    while time.perf_counter() - started < SETTLE_LIMIT_S:
        time.sleep(IDLE_WINDOW_S)
        now = _cpu_s()
        if now - before < IDLE_CPU_S:
            break
        before = now
    return time.perf_counter() - started


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class _Turn:
    """The worker's side: connected on first use when ENV is set; every call is a no-op without a referee."""

    def __init__(self):
        self.conn, self.held, self.tried, self.lost = None, False, False, False

    @property
    def kept(self) -> bool:
        """Whether every turn so far was taken with the referee (none lost, at least one taken)."""
        return self.conn is not None and not self.lost

    def _connect(self) -> None:
        self.tried = True
        where = os.environ.get(ENV)
        if not where:
            return
        path, _, role = where.rpartition("#")
        try:
            self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.conn.connect(path)
            self.conn.sendall(role.encode() + b"\n")
        except OSError:
            self.conn = None

    def _send(self, message: bytes, answer: bool) -> None:
        try:
            self.conn.sendall(message)
            if answer and self.conn.recv(1) != GO:
                raise OSError("referee gone")
        except OSError:  # the referee is gone: run freely from now on
            self.conn, self.lost = None, True

    def take(self) -> None:
        """Wait for this process's turn (at once when it holds it)."""
        if not self.tried:
            self._connect()
        if self.conn is not None and not self.held:
            self._send(TAKE, answer=True)
        self.held = True

    def pass_on(self) -> None:
        """Give the turn to the other process, once this one's threads have gone idle, and wait until it comes
        back."""
        if self.conn is not None:
            settle()
            self._send(PASS, answer=False)
            self.held = False
            self.take()


TURN = _Turn()
