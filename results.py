"""Result files are complete or absent: written beside their target, then renamed over it."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path, data) -> Path:
    """Write bytes or str to path; a reader never sees a partial file, a failure leaves none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_json(path):
    return json.loads(Path(path).read_text())


def write_json(path, obj) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, default=float) + "\n")
