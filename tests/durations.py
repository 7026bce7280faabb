"""Test files ordered longest first, so that `pytest -n 2 --dist loadfile` does not start a long file last while
the other worker idles (xdist's own order is by number of tests, not by time).

tests/durations.json holds each file's seconds (setup + call + teardown of its tests) from a full run; files it
does not list run after the listed ones, in collection order. Refresh it after a full run:

    .envs/main/bin/python -m pytest -n 2 --dist loadfile --junitxml=run.xml
    .envs/main/bin/python -m tests.durations run.xml
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

DURATIONS = Path(__file__).with_name("durations.json")


def load() -> dict:
    return json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}


def longest_first(items: list, seconds: dict) -> list:
    """The items with their files in descending measured seconds; each file's items stay together and in order."""
    return sorted(items, key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0.0))


def from_junit(path: Path) -> dict:
    """{test file: its testcases' seconds summed} from pytest's JUnit XML."""
    seconds: dict = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("classname", "").split(".")
        module = next((i for i, part in enumerate(name) if part.startswith("test_")), None)
        if module is not None:
            file = "/".join(name[:module + 1]) + ".py"
            seconds[file] = seconds.get(file, 0.0) + float(case.get("time", 0))
    return dict(sorted(((f, round(s, 1)) for f, s in seconds.items()), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        sys.exit("usage: python -m tests.durations RUN.xml (pytest's --junitxml of a full run)")
    DURATIONS.write_text(json.dumps(from_junit(Path(sys.argv[1])), indent=1) + "\n")
    print(f"wrote {DURATIONS}")
