"""The commands: `python -m cli.train` (train and report) and `python -m cli.explain` (the 2017 explanation).

They sit on top of everything else (spec → builders → verify / trainers → analysis / benchmarks → cli), so
they alone may use both verify and the trainers.
"""
from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one `error:` line and exit 2, like every other user error."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def description(doc: str) -> str:
    """A command's --help description: its docstring after the first colon, first letter capitalised."""
    text = doc.split(":", 1)[1].strip()
    return text[:1].upper() + text[1:]


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
