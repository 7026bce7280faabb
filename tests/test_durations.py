"""The longest-first order of test files (tests/durations.py) and its refresh from pytest's JUnit XML."""
from types import SimpleNamespace

from tests import durations


def test_files_run_longest_first_each_file_kept_together_and_in_order():
    ids = ["tests/a.py::x", "tests/a.py::y", "tests/b.py::x", "tests/c.py::x", "tests/c.py::y", "tests/d.py::x"]
    items = [SimpleNamespace(nodeid=i) for i in ids]
    ordered = [i.nodeid for i in durations.longest_first(items, {"tests/c.py": 90.0, "tests/b.py": 10.0})]
    assert ordered == ["tests/c.py::x", "tests/c.py::y", "tests/b.py::x", "tests/a.py::x", "tests/a.py::y",
                       "tests/d.py::x"]


def test_a_junit_report_gives_each_file_its_summed_seconds(tmp_path):
    xml = tmp_path / "run.xml"
    xml.write_text('<testsuites><testsuite name="pytest">'
                   '<testcase classname="tests.test_a" name="t1" time="1.25"/>'
                   '<testcase classname="tests.test_a" name="t2[x]" time="2.5"/>'
                   '<testcase classname="tests.test_b" name="t" time="9.0"/>'
                   '</testsuite></testsuites>')
    assert list(durations.from_junit(xml).items()) == [("tests/test_b.py", 9.0), ("tests/test_a.py", 3.8)]


def test_the_recorded_durations_name_files_that_exist():
    from tests.conftest import ROOT

    assert all((ROOT / file).is_file() for file in durations.load())
