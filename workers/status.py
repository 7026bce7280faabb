"""The words a row's status may take and the codes a process may exit with, shared by verify, trainers and
benchmarks (and written into their JSON as plain strings and integers)."""
from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """What became of one library's job; a row in every table and JSON report carries one of these."""

    OK = "ok"                       # the worker finished and its result was read
    PASS = "pass"                   # verified: equal to the reference within the tolerance
    MISMATCH = "mismatch"           # verified: not equal to the reference
    DEPARTS = "departs"             # verify steps --optimizer native: the update departs, gradients match
    NOT_VERIFIED = "not verified"   # cli.train: failed verification, so not trained
    UNSUPPORTED = "unsupported"     # the library cannot express the model (worker exit 3)
    NAN = "nan"                     # the loss became non-finite (worker exit 4)
    TIMEOUT = "timeout"             # ran past its time limit and was killed
    CRASHED = "crashed"             # a failing exit, a signal, or a missing or malformed result
    FAILED = "failed"               # the worker could not start (its environment is missing or broken)
    INTERRUPTED = "interrupted"     # the run was stopped (SIGINT/SIGTERM) before this job finished


class ExitCode(enum.IntEnum):
    """Exit codes of every entry point (0-2) and worker (0-4); 128 + the signal's number when interrupted."""

    OK = 0
    FAILED = 1          # a library failed, mismatched or regressed (a worker: anything not below)
    BAD_INPUT = 2       # a user error: one `error:` line, nothing written
    UNSUPPORTED = 3     # worker: the library cannot express the model
    NON_FINITE = 4      # worker: the loss became non-finite
    INTERRUPTED = 130   # SIGINT
    TERMINATED = 143    # SIGTERM

    @classmethod
    def of_signal(cls, signum: int) -> int:
        """The exit code of a run stopped by `signum`: a member for SIGINT/SIGTERM, 128 + signum otherwise."""
        code = 128 + int(signum)
        return cls(code) if code in cls._value2member_map_ else code
