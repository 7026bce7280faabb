"""Result files are complete or absent: written beside their target, then renamed over it."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path):
    """An open binary file that becomes `path` when the block ends; a reader never sees a partial file, a
    failure leaves none (and leaves an older `path` as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path, data) -> Path:
    """Write bytes or str to path through atomic_file."""
    with atomic_file(path) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def read_json(path):
    return json.loads(Path(path).read_text())


def write_json(path, obj) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, default=float) + "\n")


def write_figure(fig, path) -> Path:
    """A matplotlib figure as a PNG, written like every other result file."""
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    return Path(path)
