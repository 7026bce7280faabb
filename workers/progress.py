"""How training shows its progress on stderr, decided here for every place that trains (cli.train's executors,
verify steps): `--progress auto|bar|lines|off`.

    bar    a tqdm bar per library (and one for a Dask cluster's jobs): for a terminal
    lines  a line when a library starts, one per finished epoch, at most one every LINE_EVERY_S seconds within a
           long epoch, and one when it ends: for log files, where every refresh of a bar is one more frame
    off    the start and end lines only
    auto   bar when stderr is a terminal, else lines

The reporters are fed the training worker's events (workers.training); tqdm is imported only for a bar (it is
in the orchestrator's environment, not in every library's).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

MODES = ("auto", "bar", "lines", "off")
SILENT = "silent"  # not a user's choice: a job on a Dask worker, whose progress the orchestrator shows
LINE_EVERY_S = 30.0


def resolve(mode: str, stream=None) -> str:
    """bar, lines, off or silent: `auto` decided by whether `stream` (default stderr) is a terminal."""
    if mode != "auto":
        return mode
    isatty = getattr(stream or sys.stderr, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


@dataclass(frozen=True)
class Work:
    """What one library's training will be, for its progress: steps in all, epochs and images per epoch
    (0: not known; the lines then leave out the total epochs or the images/s)."""
    steps: int
    epochs: int = 0
    images: int = 0


class Silent:
    """Shows nothing; the other reporters' interface. Use as a context manager: leaving it releases a bar."""

    def step(self, event: dict) -> None:
        """A step event: {"epoch", "step", "loss"}."""

    def epoch(self, event: dict) -> None:
        """An epoch event: {"epoch", "train_s", "train_loss", "train_acc", "eval_s", "val_loss", "val_acc"}."""

    def end(self, status: str, wall_s: float) -> None:
        """The library finished (or failed) after wall_s seconds."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class Lines(Silent):
    """Plain lines; `detail` False leaves only the start and end lines (off)."""

    def __init__(self, label: str, work: Work, stream=None, detail: bool = True, every_s: float = LINE_EVERY_S,
                 clock=time.monotonic):
        self.label, self.work, self.stream, self.detail = label, work, stream or sys.stderr, detail
        self.every_s, self.clock = every_s, clock
        self.started = self.said = clock()
        self.steps, self.loss = 0, None  # steps of the current epoch, the last step's loss
        epochs = f" in {work.epochs} epoch(s)" if work.epochs else ""
        self._say(f"started: {work.steps} steps{epochs}")

    def _say(self, text: str) -> None:
        print(f"{self.label}: {text}", file=self.stream, flush=True)
        self.said = self.clock()

    def _of(self, epoch: int) -> str:
        return f"epoch {epoch + 1}/{self.work.epochs}" if self.work.epochs else f"epoch {epoch + 1}"

    def step(self, event: dict) -> None:
        self.steps, self.loss = self.steps + 1, event["loss"]
        if self.detail and self.clock() - self.said >= self.every_s:
            self._say(f"{self._of(event['epoch'])} step {event['step'] + 1}, loss {self.loss:.4f}, "
                      f"{self.clock() - self.started:.0f} s")

    def epoch(self, event: dict) -> None:
        if self.detail:
            loss = "" if self.loss is None else f", loss {self.loss:.4f}"
            speed = f", {self.work.images / event['train_s']:.0f} images/s" if self.work.images and event["train_s"] > 0 else ""
            self._say(f"{self._of(event['epoch'])}: {self.steps} steps{loss}, val acc {event['val_acc']:.3f}, "
                      f"{self.clock() - self.started:.1f} s{speed}")
        self.steps = 0

    def end(self, status: str, wall_s: float) -> None:
        self._say(f"{status} after {wall_s:.1f} s")


class Bar(Silent):
    """A tqdm bar of the steps, the last loss beside it."""

    def __init__(self, label: str, work: Work, stream=None):
        from tqdm import tqdm

        self.bar = tqdm(total=work.steps, desc=f"{label:<21}", unit="step", leave=True, dynamic_ncols=True,
                        file=stream or sys.stderr)

    def step(self, event: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{event['loss']:.4f}", refresh=False)

    def __exit__(self, *exc) -> None:
        self.bar.close()


def training(mode: str, label: str, work: Work, stream=None) -> Silent:
    """The reporter of one library's training under progress `mode` (MODES, or SILENT)."""
    shown = resolve(mode, stream)
    if shown == "bar":
        return Bar(label, work, stream)
    if shown in ("lines", "off"):
        return Lines(label, work, stream, detail=shown == "lines")
    return Silent()


class Jobs:
    """A run's jobs as a cluster finishes them: a bar, or a line per job (lines and off alike: the line is the
    job's end line)."""

    def __init__(self, mode: str, total: int, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.bar = None
        if resolve(mode, stream) == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="jobs", unit="job", dynamic_ncols=True, file=self.stream)

    def finished(self, label: str, status: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{label}: {status}", refresh=True)
        else:
            print(f"jobs {self.done}/{self.total}: {label} {status}", file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
